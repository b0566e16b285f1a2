"""The ingest loop: pulls frames from a live source into an engine stream, one at a time.

Sources keep only their newest frame, so a loop that is busy encoding never reads a backlog: it
takes whatever is newest when it is ready. Encoding runs in a worker thread, never on the event
loop, so websocket clients and other streams keep being served while a frame is prefilled. A
source that fails puts its stream in the failed state; the engine and the other streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from sources.base import Source, SourceState, SourceStatus
from sources.frame import SourceEnded, SourceError
from streamer.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestStatus:
    """A running stream as an operator sees it.

    ingest_fps: frames pushed into memory per second over the recent past.
    lag_s: wall time from the newest ingested frame's capture to the end of its prefill.
    """

    stream_id: str
    source: SourceStatus
    frames_ingested: int
    ingest_fps: float
    lag_s: float
    error: str | None


class StreamRunner:
    """Feeds `source` into `engine`'s stream `stream_id` until the source ends, fails or `stop()`.

    fps: the most frames per second to ingest (None: as many as the source and the encoder allow).
    """

    def __init__(
        self,
        engine: Engine,
        stream_id: str,
        source: Source,
        fps: float | None = None,
        executor: Executor | None = None,
    ) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        self.engine = engine
        self.stream_id = stream_id
        self.source = source
        self.fps = fps
        self.executor = executor
        self.frames_ingested = 0
        self.lag_s = 0.0
        self.error: str | None = None
        self._ingest_times: list[float] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Run in the background on the current event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"ingest {self.stream_id}")
        return self._task

    async def stop(self) -> None:
        """Stop pulling frames, close the source and wait for the frame being encoded, if any."""
        self._stopping.set()
        self.source.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.stream_id not in self.engine.streams:
            # Prefilling the system prompt takes the model's lock: never on the event loop.
            await loop.run_in_executor(self.executor, self.engine.add_stream, self.stream_id)
        interval = 1.0 / self.fps if self.fps else 0.0
        next_due = 0.0
        try:
            while not self._stopping.is_set():
                wait = next_due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                frame = await self.source.recv()
                next_due = time.monotonic() + interval
                await loop.run_in_executor(self.executor, self.engine.push_frame, self.stream_id, frame)
                self._count(frame.capture_time)
        except SourceEnded:
            log.info("%s: source ended after %d frames", self.stream_id, self.frames_ingested)
        except SourceError as error:
            self.error = str(error)
            log.warning("%s: %s", self.stream_id, error)
        except Exception as error:
            # A bug, not a bad source: this stream stops and says so; the engine and other streams go on.
            self.error = f"ingest stopped: {type(error).__name__}: {error}"
            log.exception("%s: ingest stopped", self.stream_id)
        finally:
            self.source.close()

    def _count(self, capture_time: float) -> None:
        now = time.monotonic()
        self.frames_ingested += 1
        self.lag_s = max(0.0, time.time() - capture_time)
        self._ingest_times.append(now)
        # Keep ten seconds of history for the rate.
        while self._ingest_times and self._ingest_times[0] < now - 10.0:
            self._ingest_times.pop(0)

    @property
    def ingest_fps(self) -> float:
        times = self._ingest_times
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(1e-9, times[-1] - times[0])

    def status(self) -> IngestStatus:
        source = self.source.status()
        if self.error and source.state != SourceState.FAILED:
            source = SourceStatus(
                SourceState.FAILED,
                self.error,
                source.frames_decoded,
                source.frames_delivered,
                source.frames_dropped,
                source.reconnects,
                source.lag_s,
            )
        return IngestStatus(self.stream_id, source, self.frames_ingested, self.ingest_fps, self.lag_s, self.error)
