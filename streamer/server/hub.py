"""What the server asks of the streams it serves, wherever they run.

The websocket, the HTTP API and the metrics talk to a `Hub`: in one process `LocalHub`
(`streamer.server.streams`: an engine, its sources and ingest runners), past one machine `RayHub`
(`streamer.cluster.gateway`: the same verbs forwarded to the worker process that holds each
stream). Everything a hub returns is plain data, so the two answer alike.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sources.base import Source
from streamer.decoding import SchedulerStats
from streamer.engine import UnknownStream
from streamer.engine_data import StreamStatus
from streamer.query import Answer
from streamer.watches import WatchEvent, WatchInfo, WatchSpec

# What `Hub.ask` yields: first the stream time the answer reads up to, then text deltas, then the Answer
# (no Answer when the question was cancelled before it started).
AnswerItem = float | str | Answer
EventCallback = Callable[[WatchEvent], None]


class StreamExists(ValueError):
    pass


class StreamRestarting(RuntimeError):
    """The process holding the stream stopped; the stream comes back from its snapshot shortly."""


@dataclass(frozen=True)
class StreamReport:
    """One served stream at one moment: its source, its ingest and its memory.

    worker: which worker process holds it (None in one process).
    """

    stream_id: str
    source: str
    state: str
    reason: str | None
    ingest_fps: float
    lag_s: float
    frames_ingested: int
    frames_decoded: int
    frames_dropped: int
    reconnects: int
    memory: StreamStatus
    worker: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The stream as `GET /streams` shows it."""
        described: dict[str, Any] = {
            "stream_id": self.stream_id,
            "source": self.source,
            "state": self.state,
            "reason": self.reason,
            "ingest_fps": round(self.ingest_fps, 3),
            "lag_ms": round(self.lag_s * 1000, 1),
            "frames_ingested": self.frames_ingested,
            "frames_decoded": self.frames_decoded,
            "frames_dropped": self.frames_dropped,
            "reconnects": self.reconnects,
            "resident_tokens": self.memory.resident_tokens,
            "budget_tokens": self.memory.budget_tokens,
            "host_tokens": self.memory.host_tokens,
            "frames_in_memory": sum(self.memory.frames_by_place.values()),  # older ones were compacted away
        }
        if self.worker is not None:
            described["worker"] = self.worker
        return described


class Hub(ABC):
    """The streams a server serves and the verbs it needs on them.

    Stream ids are known at once (`stream_ids`, `has`); everything that reaches a stream's memory,
    source or model is a coroutine. Missing streams raise `streamer.engine.UnknownStream` (a KeyError).
    """

    model_name: str

    @abstractmethod
    def stream_ids(self) -> list[str]: ...

    def has(self, stream_id: str) -> bool:
        return stream_id in self.stream_ids()

    @abstractmethod
    async def add_stream(
        self,
        stream_id: str,
        url: str,
        fps: float,
        loop: bool = False,
        source: Source | None = None,
        watches: Sequence[tuple[str, WatchSpec]] = (),
    ) -> StreamReport:
        """Open `url` (or take the already opened `source`) and ingest it as `stream_id`, with its watches.

        Raises StreamExists, SourceError (cannot be opened), TimeoutError (did not open in time), or a
        user error from the engine (e.g. the budget cannot hold a frame).
        """

    @abstractmethod
    async def remove(self, stream_id: str, keep_snapshot: bool = False) -> bool:
        """Stop the stream (False when there is none); its snapshot is kept only with `keep_snapshot`."""

    @abstractmethod
    async def close(self) -> None:
        """Stop serving: every stream's memory is saved when snapshots are on."""

    @abstractmethod
    async def reports(self, stream_ids: Sequence[str] | None = None) -> dict[str, StreamReport]:
        """The named streams' reports (all when None); streams gone meanwhile are left out."""

    async def report(self, stream_id: str) -> StreamReport:
        found = await self.reports([stream_id])
        if stream_id not in found:
            raise UnknownStream(stream_id)
        return found[stream_id]

    @abstractmethod
    async def timeline(self, stream_id: str, limit: int) -> dict[str, Any]:
        """The newest `limit` frame records, as `GET /streams/{id}/timeline` shows them."""

    @abstractmethod
    async def preview_jpeg(self, stream_id: str) -> bytes | None:
        """The newest frame as a JPEG; None before the first frame."""

    @abstractmethod
    def ask(
        self, stream_id: str, text: str, options: Sequence[str] | None, cancel: threading.Event
    ) -> AsyncIterator[AnswerItem]:
        """Answer a question: yields the `as_of` stream time, the text deltas, then the `Answer`.

        Setting `cancel` stops it at the next token. Raises StreamRestarting when the stream's process
        stopped mid-answer.
        """

    @abstractmethod
    async def add_watch(self, stream_id: str, spec: WatchSpec, watch_id: str) -> WatchInfo: ...

    @abstractmethod
    async def remove_watch(self, watch_id: str) -> bool: ...

    @abstractmethod
    async def watches(self, stream_id: str | None = None) -> list[WatchInfo]: ...

    async def model_stats(self) -> dict[str, SchedulerStats]:
        """Each model's answer scheduler counters, by worker ("local" in one process); empty without one."""
        return {}

    @abstractmethod
    async def watch_events(self, since: int = 0) -> list[tuple[int, WatchEvent]]:
        """Recent watch events numbered after `since` (numbers only grow)."""

    @abstractmethod
    def on_watch_event(self, callback: EventCallback) -> None:
        """Call `callback` on the event loop with each new watch event."""
