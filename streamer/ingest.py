"""The ingest loop: pulls frames from a live source into an engine stream.

A runner takes every frame its source gives and leaves it with the engine's ingest scheduler
(`streamer.batching`), which keeps only each stream's newest frame and, whenever the encoder is
free (and a stream's `fps` allows), encodes the newest frame of the stream served longest ago, or
of several streams as one batch. So a runner never holds a frame while other streams are encoded,
and a frame's lag stays about one encoding (one batch) however many streams share the engine.
Encoding runs in a worker thread, never on the event loop, so websocket clients and other streams
keep being served while frames are prefilled. A source that fails puts its stream in the failed
state; the engine and the other streams go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from sources.base import Source, SourceState, SourceStatus
from sources.frame import Frame, SourceEnded, SourceError
from streamer.batching import IngestScheduler
from streamer.engine import Engine
from streamer.engine_data import FrameInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestStatus:
    """A running stream as an operator sees it.

    source: the source's status, its frames_dropped also counting the frames ingest dropped as stale.
    ingest_fps: frames pushed into memory per second over the recent past.
    lag_s: wall time from the newest ingested frame's capture to the end of its prefill.
    frames_stale: frames the source delivered that a newer frame replaced before the encoder was free.
    """

    stream_id: str
    source: SourceStatus
    frames_ingested: int
    ingest_fps: float
    lag_s: float
    error: str | None
    frames_stale: int = 0


class StreamRunner:
    """Feeds `source` into `engine`'s stream `stream_id` until the source ends, fails or `stop()`.

    fps: the most frames per second to ingest (None: as many as the encoder allows). The runner
    takes every frame the source gives; when the stream's turn comes, the newest is ingested.
    executor: where the engine's work runs (None: the event loop's default executor).
    scheduler: the encoder this stream shares (None: the engine's own `IngestScheduler`, which
    takes `executor` if no stream is attached to it yet; set to it once the runner starts).

    Sources are expected to be live: one that gives frames as fast as asked (a file with a
    simulated clock) loses the frames the encoder cannot keep up with; replay pushes those itself.
    """

    def __init__(
        self,
        engine: Engine,
        stream_id: str,
        source: Source,
        fps: float | None = None,
        executor: Executor | None = None,
        scheduler: IngestScheduler | None = None,
    ) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        self.engine = engine
        self.stream_id = stream_id
        self.source = source
        self.fps = fps
        self.executor = executor
        self.scheduler = scheduler
        self.frames_ingested = 0
        self.frames_stale = 0
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
        """Stop pulling frames, close the source and wait for its frame being encoded, if any."""
        self._stopping.set()
        self.source.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.engine.has_stream(self.stream_id):
            # Prefilling the system prompt takes the model's lock: never on the event loop.
            await loop.run_in_executor(self.executor, self.engine.add_stream, self.stream_id)
        scheduler = self.scheduler = self.scheduler or self.engine.scheduler(self.executor)
        scheduler.attach(self.stream_id, self._ingested, self._failed, self.fps)
        try:
            while not self._stopping.is_set() and self.error is None:
                frame = await self.source.recv()
                if scheduler.offer(self.stream_id, frame):
                    self.frames_stale += 1
        except SourceEnded:
            if self.error is None and not self._stopping.is_set():
                # The last frame the source gave still goes into memory.
                await scheduler.flush(self.stream_id)
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
            await scheduler.detach(self.stream_id)

    def _ingested(self, frame: Frame, info: FrameInfo) -> None:
        self._count(frame.capture_time)

    def _failed(self, error: Exception) -> None:
        # A bug, not a bad source: this stream stops and says so; the engine and other streams go on.
        self.error = f"ingest stopped: {type(error).__name__}: {error}"
        log.error("%s: ingest stopped", self.stream_id, exc_info=error)
        # Ends a recv that is waiting for the next frame.
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
        failed = self.error is not None and source.state != SourceState.FAILED
        source = replace(
            source,
            state=SourceState.FAILED if failed else source.state,
            reason=self.error if failed else source.reason,
            frames_dropped=source.frames_dropped + self.frames_stale,
        )
        return IngestStatus(
            self.stream_id,
            source,
            self.frames_ingested,
            self.ingest_fps,
            self.lag_s,
            self.error,
            self.frames_stale,
        )
