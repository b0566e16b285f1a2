"""A source whose frames are handed in by another process: a browser's webcam received by a Ray gateway
and relayed to the worker that ingests it (`streamer.cluster`).

`put` gives it the newest frame (an older one not yet taken is dropped, as with a camera); `end` says
the sender has stopped. Stream time counts from the first frame this source was given, so a stream that
moves to another worker goes on from its restored memory.
"""

from __future__ import annotations

import asyncio
import time

from sources.base import SourceState
from sources.capture import Captured, CaptureSource
from sources.frame import Frame


class RelayedSource(CaptureSource):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._ended = asyncio.Event()
        self._reason = "the sender stopped"

    def put(self, frame: Frame) -> None:
        """The newest frame from the sender."""
        pixels = frame.pixels
        self.frames_decoded += 1
        self.slot.put(Captured(lambda: pixels, frame.capture_time, time.monotonic()))

    def end(self, reason: str = "the sender stopped") -> None:
        self._reason = reason
        self._ended.set()

    async def _supervise(self) -> None:
        await self._ended.wait()
        self.set_state(SourceState.ENDED, self._reason)
