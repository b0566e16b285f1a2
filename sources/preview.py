"""A source wrapper that remembers the newest frame it passed on, for a live preview."""

from __future__ import annotations

from sources.base import Source, SourceStatus
from sources.frame import Frame


class PreviewTap:
    """Passes frames through from `source`, remembering the newest one for the live preview."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = source.name
        self.latest: Frame | None = None

    async def recv(self) -> Frame:
        frame = await self.source.recv()
        self.latest = frame
        return frame

    def status(self) -> SourceStatus:
        return self.source.status()

    def close(self) -> None:
        self.source.close()
