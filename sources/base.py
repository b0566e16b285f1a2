"""What every source shares: its state machine, its counters and the `Source` interface.

A source is one `async recv() -> Frame`. Around it, operators need to see what the source is doing
(connecting, live, reconnecting, ended, failed and why) and how healthy it is (frames decoded,
frames dropped as stale, reconnects, lag). `SourceBase` keeps both and tells listeners about every
state change, so the server and the logs report the same thing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from sources.frame import Frame

log = logging.getLogger(__name__)


class SourceState(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"


@dataclass(frozen=True)
class SourceStatus:
    """A source's state and counters at one instant.

    lag_s: age of the newest delivered frame when it was handed to the consumer (delivery wall
    time minus capture wall time); 0 before the first frame.
    """

    state: SourceState
    reason: str | None
    frames_decoded: int
    frames_delivered: int
    frames_dropped: int
    reconnects: int
    lag_s: float


StateListener = Callable[[SourceState, str | None], None]


@runtime_checkable
class Source(Protocol):
    """The interface the ingest loop drives."""

    name: str

    async def recv(self) -> Frame:
        """The next frame; raises SourceEnded when there are no more, SourceError when it cannot go on."""
        ...

    def status(self) -> SourceStatus: ...

    def close(self) -> None: ...


class SourceBase:
    """State and counters for a source; subclasses call `set_state` and bump the counters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = SourceState.CONNECTING
        self.reason: str | None = None
        self.frames_decoded = 0
        self.frames_delivered = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.lag_s = 0.0
        self._listeners: list[StateListener] = []

    def on_state(self, listener: StateListener) -> None:
        """Call `listener(state, reason)` on every later state change."""
        self._listeners.append(listener)

    def set_state(self, state: SourceState, reason: str | None = None) -> None:
        if state == self.state and reason == self.reason:
            return
        self.state, self.reason = state, reason
        if state in (SourceState.FAILED, SourceState.RECONNECTING):
            log.warning("%s: %s%s", self.name, state.value, f" ({reason})" if reason else "")
        else:
            log.info("%s: %s%s", self.name, state.value, f" ({reason})" if reason else "")
        for listener in list(self._listeners):
            listener(state, reason)

    def delivered(self, frame: Frame) -> Frame:
        """Count `frame` as handed to the consumer now, and record its age."""
        self.frames_delivered += 1
        self.lag_s = max(0.0, time.time() - frame.capture_time)
        return frame

    def status(self) -> SourceStatus:
        return SourceStatus(
            state=self.state,
            reason=self.reason,
            frames_decoded=self.frames_decoded,
            frames_delivered=self.frames_delivered,
            frames_dropped=self.frames_dropped,
            reconnects=self.reconnects,
            lag_s=self.lag_s,
        )
