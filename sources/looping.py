"""A video file played as a live source that never ends: from the start again whenever it ends."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from sources.base import SourceState, SourceStatus
from sources.file import FileSource
from sources.frame import Frame, SourceEnded

log = logging.getLogger(__name__)


class LoopingFile:
    """A video file played in real time (or `speed` times faster), again from the start whenever it ends;
    stream time runs on."""

    def __init__(self, path: Path, fps: float, speed: float = 1.0) -> None:
        self.path = path
        self.fps = fps
        self.speed = speed
        self.current = FileSource(path, fps=fps, realtime=True, speed=speed)
        self.name = f"{self.current.name} (looping)"
        self._time_offset = 0.0
        self._sequence_offset = 0
        self._earlier_decoded = 0
        self._closed = False

    async def recv(self) -> Frame:
        while True:
            try:
                frame = await self.current.recv()
            except SourceEnded:
                if self._closed:
                    raise
                await self._restart()
                continue
            return dataclasses.replace(
                frame,
                stream_time=frame.stream_time + self._time_offset,
                sequence=frame.sequence + self._sequence_offset,
            )

    async def _restart(self) -> None:
        finished = self.current
        self._time_offset += finished.duration
        self._sequence_offset += finished.frames_delivered
        self._earlier_decoded += finished.frames_decoded
        self.current = await asyncio.to_thread(FileSource, self.path, self.fps, True, self.speed)
        log.info("%s: reached the end; playing it again from stream time %.1f s", self.name, self._time_offset)

    def status(self) -> SourceStatus:
        status = self.current.status()
        between_passes = status.state in (SourceState.ENDED, SourceState.CONNECTING)
        if between_passes and not self._closed and self._sequence_offset + status.frames_delivered > 0:
            # One pass ended and the next has not delivered yet: the stream itself goes on.
            status = dataclasses.replace(status, state=SourceState.LIVE, reason=None)
        return dataclasses.replace(
            status,
            frames_decoded=status.frames_decoded + self._earlier_decoded,
            frames_delivered=status.frames_delivered + self._sequence_offset,
        )

    def close(self) -> None:
        self._closed = True
        self.current.close()
