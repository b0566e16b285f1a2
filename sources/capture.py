"""A decoder drained in its own thread into a one-frame slot, so a slow consumer never reads a backlog.

Camera-like sources (RTSP, webcams) push frames whether or not anyone reads them, and the decoder
libraries buffer what is not read: after a 3 s consumer stall at 15 fps, OpenCV hands back 68 stale
frames in a row. `CaptureThread` reads the decoder continuously and keeps only the newest frame in a
`LatestFrameSlot`; a frame overwritten before anyone took it is counted as dropped. Converting a
picture to pixels is deferred to the frame actually delivered, so dropped frames cost only decoding.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sources.base import SourceBase, SourceState
from sources.frame import Frame, SourceEnded, SourceError

log = logging.getLogger(__name__)

Picture = Callable[[], np.ndarray]
"""A decoded picture; calling it returns its H x W x 3 uint8 BGR pixels."""


class FrameCounters(Protocol):
    """Where capture counts its frames; `SourceBase` is one."""

    frames_decoded: int
    frames_dropped: int


class FrameReader(Protocol):
    """A blocking decoder opened on one device or connection."""

    def read(self) -> Picture | None:
        """Block until the next picture; None at the end of the stream; raise when it cannot go on."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Captured:
    """A picture as it left the decoder.

    capture_time: wall-clock time (time.time()) it was decoded.
    captured_at: time.monotonic() at the same instant, for ages and stream times.
    """

    picture: Picture
    capture_time: float
    captured_at: float


class LatestFrameSlot:
    """Holds the newest captured frame; producers overwrite it, one asyncio consumer takes it.

    `put` may be called from any thread; `take` is awaited on the consumer's event loop. A frame
    overwritten or cleared before it was taken counts in `counters.frames_dropped`.
    """

    def __init__(self, counters: FrameCounters) -> None:
        self.counters = counters
        self._lock = threading.Lock()
        self._item: Captured | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._filled: asyncio.Event | None = None

    def put(self, item: Captured) -> None:
        with self._lock:
            if self._item is not None:
                self.counters.frames_dropped += 1
            self._item = item
            loop, filled = self._loop, self._filled
        if loop is not None and filled is not None:
            # The loop may have closed under a producer thread that outlived it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(filled.set)

    def clear(self) -> None:
        """Discard the frame in the slot (it is counted as dropped): it is too old to deliver."""
        with self._lock:
            if self._item is not None:
                self.counters.frames_dropped += 1
            self._item = None

    async def take(self) -> Captured:
        """The newest frame, waiting for one if the slot is empty."""
        filled = self._bind(asyncio.get_running_loop())
        while True:
            # Cleared before looking, so a put that lands after the look still wakes the wait.
            filled.clear()
            with self._lock:
                item, self._item = self._item, None
            if item is not None:
                return item
            await filled.wait()

    def _bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        with self._lock:
            if self._loop is not loop or self._filled is None:
                self._loop, self._filled = loop, asyncio.Event()
            return self._filled


class CaptureThread:
    """Reads `reader` in a daemon thread into `slot` until the stream ends, fails or `stop()`.

    Every decoded picture counts in `slot.counters.frames_decoded`.

    The thread closes the reader when it leaves. `stop()` does not wait: a library read can hang
    far longer than its timeout says, so a hung reader is abandoned and exits when the read returns.
    """

    def __init__(self, reader: FrameReader, slot: LatestFrameSlot, name: str) -> None:
        self.reader = reader
        self.slot = slot
        self.last_frame_at: float | None = None
        self.error: Exception | None = None
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture {name}", daemon=True)

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    @property
    def finished(self) -> bool:
        """True once the stream ended or failed (see `error`), or the thread stopped."""
        return self._finished.is_set()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                picture = self.reader.read()
                if picture is None or self._stopping.is_set():
                    break
                now = time.monotonic()
                self.slot.counters.frames_decoded += 1
                self.last_frame_at = now
                self.slot.put(Captured(picture, time.time(), now))
        except Exception as error:  # any decoder failure ends this capture; the owner decides what next
            self.error = error
        finally:
            self._finished.set()
            try:
                self.reader.close()
            except Exception as error:
                log.debug("closing %s: %s", self._thread.name, error)


class CaptureSource(SourceBase, abc.ABC):
    """A source whose frames come from `CaptureThread`s run by a supervising task.

    Subclasses implement `_supervise`: open a reader, run a capture into `self.slot`, watch it, and
    decide what to do when it stops (reconnect, fail, end). The task starts with the first `recv`
    on the consumer's event loop, so state changes are reported on that loop. `recv` returns the
    newest frame, waiting while the supervisor reconnects, and raises once the supervisor is done.
    stream_time counts wall seconds from the source's first frame, so outages show as gaps.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.slot = LatestFrameSlot(self)
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._first_frame_at: float | None = None

    @abc.abstractmethod
    async def _supervise(self) -> None:
        """Run captures into `self.slot` until the source fails or ends; set the state on the way."""

    def failure(self) -> SourceError:
        """The error `recv` raises once the source has failed."""
        return SourceError(f"{self.name} failed: {self.reason}.")

    def start(self) -> None:
        """Start the supervisor on the running event loop; `recv` does this itself."""
        if self._supervisor is None and not self._closed:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"supervise {self.name}")

    async def recv(self) -> Frame:
        """The newest frame; raises SourceError when the source failed, SourceEnded once closed."""
        self.start()
        supervisor = self._supervisor
        if supervisor is None:
            raise SourceEnded(f"{self.name} is closed.")
        take = asyncio.ensure_future(self.slot.take())
        try:
            await asyncio.wait({take, supervisor}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            take.cancel()
        if take.done() and not take.cancelled():
            return self._frame(take.result())
        if not supervisor.cancelled() and (bug := supervisor.exception()) is not None:
            raise bug
        if self.state == SourceState.FAILED:
            raise self.failure()
        raise SourceEnded(f"{self.name} ended.")

    def close(self) -> None:
        """Stop capturing; later `recv` calls raise SourceEnded."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        self.slot.clear()
        if self.state not in (SourceState.FAILED, SourceState.ENDED):
            self.set_state(SourceState.ENDED)

    def _frame(self, captured: Captured) -> Frame:
        if self._first_frame_at is None:
            self._first_frame_at = captured.captured_at
        # The supervisor notices flowing frames on its next poll; a delivered frame proves it now.
        if self.state in (SourceState.CONNECTING, SourceState.RECONNECTING):
            self.set_state(SourceState.LIVE)
        frame = Frame(
            # Converted here, on the consumer's side, so only delivered frames pay for it (0.2 ms
            # at 640x480, 1 ms at 1080p); frames replaced in the slot never are.
            pixels=captured.picture(),
            stream_time=captured.captured_at - self._first_frame_at,
            capture_time=captured.capture_time,
            sequence=self.frames_delivered,
        )
        return self.delivered(frame)


async def run_in_own_thread(open_reader: Callable[[], FrameReader]) -> FrameReader:
    """Run a blocking `open_reader` in a thread of its own and await its reader.

    Not the loop's shared executor: opening a hung camera blocks for seconds, and a few of those
    must not starve the threads that encode frames. If the awaiting task is cancelled, the reader
    opened too late is closed.
    """
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[FrameReader] = loop.create_future()

    def settle(reader: FrameReader | None, error: Exception | None) -> None:
        if opened.cancelled():
            if reader is not None:
                reader.close()
        elif error is not None:
            opened.set_exception(error)
        elif reader is not None:
            opened.set_result(reader)

    def work() -> None:
        reader: FrameReader | None = None
        error: Exception | None = None
        try:
            reader = open_reader()
        except Exception as failure:  # reported to the awaiting task, which decides
            error = failure
        try:
            loop.call_soon_threadsafe(settle, reader, error)
        except RuntimeError:  # the loop is gone: nobody will use this reader
            if reader is not None:
                reader.close()

    threading.Thread(target=work, name="open capture", daemon=True).start()
    return await opened
