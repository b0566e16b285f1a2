"""One encoder shared by an engine's streams: each stream's newest frame in turn, or several as one batch.

The streams of an engine share its models. When each stream pushed its own frames, a frame taken
from its source waited behind the other streams' frames, so it reached memory about N encodings
old. Here a stream only leaves its newest frame in a slot (a newer frame replaces it, and the older
one is dropped as stale); whenever the encoder is free it takes the pending frames of up to
`max_batch` streams, those served longest ago first, encodes them as one batch
(`Engine.push_frames`: the models that gain from batching run once for all of them) and prefills
each into its own stream's memory. A frame's lag is then about one batch's time plus a frame
interval, however many streams there are; with more streams than `max_batch`, each stream is
served every few batches instead. The default batch is one frame (see DEFAULT_MAX_BATCH).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sources.frame import Frame
from streamer.engine_data import FrameInfo

if TYPE_CHECKING:
    from streamer.engine import Engine

log = logging.getLogger(__name__)

# Frames encoded together at most, by default. Every frame of a batch waits for the whole batch, so a
# batch must raise the ingest rate to be worth its lag. With the embedded CPU default it did not: the
# one stage that gains from batching (MiniLM) is a small share of a frame's cost, and live batches of
# 2-8 frames ingested at most 4% faster than one frame at a time, at two to seven times the lag
# (scripts/bench_sources.py). So frames go one at a time, the newest of the stream served longest
# ago, unless a caller asks for batches.
DEFAULT_MAX_BATCH = 1

IngestedCallback = Callable[[Frame, FrameInfo], None]
FailedCallback = Callable[[Exception], None]

_attach_order = itertools.count()


@dataclass
class _Slot:
    """A stream's place in the scheduler: its newest frame not yet taken, and when it was last served."""

    stream_id: str
    on_ingested: IngestedCallback
    on_failed: FailedCallback
    min_interval: float = 0.0
    pending: Frame | None = None
    in_flight: bool = False
    served_at: float = float("-inf")
    order: int = field(default_factory=lambda: next(_attach_order))

    def due_at(self) -> float:
        """When the pending frame may be taken (monotonic): at once, or min_interval after the last one."""
        return self.served_at + self.min_interval

    def take(self) -> Frame:
        """The pending frame, now in flight."""
        assert self.pending is not None
        frame, self.pending = self.pending, None
        self.in_flight, self.served_at = True, time.monotonic()
        return frame


class IngestScheduler:
    """Feeds the newest pending frame of each attached stream into `engine`, a batch at a time.

    Each engine owns one (`Engine.scheduler()`); runners attach their streams to it.
    Streams attach with two callbacks, run on the event loop: `on_ingested(frame, info)` after a
    frame is in memory, and `on_failed(error)` when encoding it raised (a bug, not a bad source:
    frames of other streams in the same batch are then pushed one by one, so only the stream whose
    frame fails gets the error). Encoding runs in `executor` (None: the event loop's default), one
    batch at a time. Counters: batches, frames_encoded, encode_seconds (in the engine, all batches)
    and last_batch_s (the latest batch, already set when its callbacks run).
    """

    def __init__(self, engine: Engine, executor: Executor | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.engine = engine
        self.executor = executor
        self.max_batch = max_batch
        self.batches = 0
        self.frames_encoded = 0
        self.encode_seconds = 0.0
        self.last_batch_s = 0.0
        self._slots: dict[str, _Slot] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._batch_ended = asyncio.Event()

    @property
    def streams(self) -> list[str]:
        return list(self._slots)

    def attach(
        self,
        stream_id: str,
        on_ingested: IngestedCallback,
        on_failed: FailedCallback,
        fps: float | None = None,
    ) -> None:
        """Start taking frames offered for `stream_id` (an engine stream that exists).

        fps: the most frames per second to take from it (None: whenever the encoder is free). The
        frame taken is still the newest offered, however long it had to wait for its turn.
        """
        if stream_id in self._slots:
            raise ValueError(f"stream '{stream_id}' is already attached")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        self._ensure_worker()
        self._slots[stream_id] = _Slot(stream_id, on_ingested, on_failed, 1.0 / fps if fps else 0.0)

    def offer(self, stream_id: str, frame: Frame) -> bool:
        """Leave `frame` as the stream's newest; True when it replaced a pending frame (dropped as stale)."""
        slot = self._slots[stream_id]
        replaced = slot.pending is not None
        slot.pending = frame
        self._wakeup.set()
        return replaced

    async def flush(self, stream_id: str) -> None:
        """Wait until the stream's pending frame, if any, is in memory (or failed)."""
        slot = self._slots.get(stream_id)
        while slot is not None and (slot.pending is not None or slot.in_flight) and self._serving():
            await self._batch_ended.wait()

    async def detach(self, stream_id: str) -> None:
        """Stop taking the stream's frames: its pending frame is dropped, one being encoded finishes first."""
        slot = self._slots.get(stream_id)
        if slot is None:
            return
        slot.pending = None
        while slot.in_flight and self._serving():
            await self._batch_ended.wait()
        self._slots.pop(stream_id, None)
        self._wakeup.set()

    def _serving(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._serving():
            return
        if self._loop is not loop:
            # Streams left attached by an event loop that has finished cannot be served any more.
            self._slots.clear()
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._batch_ended = asyncio.Event()
        self._worker = loop.create_task(self._serve(), name="ingest scheduler")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while self._slots:
            batch = self._take()
            if not batch:
                # Until a frame is offered, or a waiting stream's next frame falls due.
                self._wakeup.clear()
                due = [slot.due_at() for slot in self._slots.values() if slot.pending is not None]
                timeout = max(0.0, min(due) - time.monotonic()) if due else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                continue
            items = [(slot.stream_id, slot.take()) for slot in batch]
            try:
                results = await loop.run_in_executor(self.executor, self._push, items)
            finally:
                for slot in batch:
                    slot.in_flight = False
                self._end_batch()
            for slot, (_, frame), result in zip(batch, items, results, strict=True):
                if isinstance(result, Exception):
                    slot.on_failed(result)
                else:
                    slot.on_ingested(frame, result)
        self._end_batch()

    def _take(self) -> list[_Slot]:
        """Up to max_batch streams with a pending frame that is due, those served longest ago first."""
        now = time.monotonic()
        waiting = [slot for slot in self._slots.values() if slot.pending is not None and slot.due_at() <= now]
        waiting.sort(key=lambda slot: (slot.served_at, slot.order))
        return waiting[: self.max_batch]

    def _end_batch(self) -> None:
        ended, self._batch_ended = self._batch_ended, asyncio.Event()
        ended.set()

    def _push(self, items: Sequence[tuple[str, Frame]]) -> list[FrameInfo | Exception]:
        """Runs in the executor: the batch into the engine; on failure, each frame on its own."""
        started = time.perf_counter()
        results: list[FrameInfo | Exception]
        try:
            results = list(self.engine.push_frames(items))
        except Exception as error:
            if len(items) == 1:
                results = [error]
            else:
                log.warning("a batch of %d frames failed (%s); pushing them one by one", len(items), error)
                results = [self._push_alone(stream_id, frame) for stream_id, frame in items]
        self.last_batch_s = time.perf_counter() - started
        self.batches += 1
        self.frames_encoded += len(items)
        self.encode_seconds += self.last_batch_s
        return results

    def _push_alone(self, stream_id: str, frame: Frame) -> FrameInfo | Exception:
        try:
            newest = self.engine.frames(stream_id, last=1)
            # The failed batch may have stored this frame before another one failed.
            if newest and newest[0].sequence == frame.sequence:
                return newest[0]
            return self.engine.push_frame(stream_id, frame)
        except Exception as error:
            return error
