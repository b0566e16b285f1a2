"""`EngineWorker`: the Ray actor that holds a model, one engine and the streams placed on it.

Each stream's source is opened in the worker and ingested there (a `LocalHub`, as in one process), so
frames never cross a process boundary; the gateway and the directory reach the streams through the
methods below, which take and return plain data. The worker's `incarnation` changes when Ray restarts
it (after a crash), which is how the directory knows to give it its streams back from their snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from sources.frame import Frame
from sources.relayed import RelayedSource
from streamer.cluster import RELAYED
from streamer.decoding import SchedulerStats
from streamer.server.hub import AnswerItem, StreamReport
from streamer.server.streams import LocalHub
from streamer.watches import WatchEvent, WatchInfo, WatchSpec

if TYPE_CHECKING:
    from streamer.engine import Engine
    from streamer.server.config import StreamerConfig

log = logging.getLogger(__name__)

EngineLoader = Callable[[], "Engine"]


def build_engine(config: StreamerConfig) -> Engine:
    """The engine a server's config describes (model and engine sections), loaded and warmed up."""
    from streamer.engine import Engine
    from streamer.models import load_adapter
    from streamer.server.app import warm_up

    engine = Engine(load_adapter(config.model.choice()), config.engine_config())
    warm_up(engine)
    return engine


def engine_loader(config: StreamerConfig) -> EngineLoader:
    """What a worker calls to load its engine: picklable, so Ray can ship it to the worker's process."""
    return partial(build_engine, config)


class EngineWorker:
    """One worker process. Use through `ray.remote` (see `streamer.cluster.gateway.start_workers`).

    name: the worker's actor name (reported with each of its streams). load_engine: builds the engine
    in this process. threads: torch threads for this worker (the machine's cores shared among the workers
    on it). open_timeout_s: how long a source may take to open.
    """

    def __init__(
        self,
        name: str,
        load_engine: EngineLoader,
        threads: int = 0,
        open_timeout_s: float = 10.0,
        answer_threads: int = 16,
    ) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.name = name
        self.incarnation = uuid.uuid4().hex[:12]
        engine = load_engine()
        self.hub = LocalHub(
            engine,
            answer_executor=ThreadPoolExecutor(answer_threads, thread_name_prefix="answer"),
            open_executor=ThreadPoolExecutor(2, thread_name_prefix="open"),
            open_timeout_s=open_timeout_s,
        )
        self.model_name = engine.adapter.name
        self._answers: dict[str, threading.Event] = {}
        self._relayed: dict[str, RelayedSource] = {}
        self._new_event: asyncio.Event | None = None

    def _events_signal(self) -> asyncio.Event:
        """Set whenever the engine records a watch event (created on the actor's event loop, once)."""
        if self._new_event is None:
            signal = self._new_event = asyncio.Event()

            def heard(_: WatchEvent) -> None:
                signal.set()

            self.hub.on_watch_event(heard)
        return self._new_event

    async def ping(self) -> dict[str, Any]:
        """Who this is: name, incarnation, process id, Ray node id, model, and the streams it ingests."""
        import ray

        self._events_signal()
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "model": self.model_name,
            "streams": self.hub.stream_ids(),
        }

    async def add_stream(
        self, stream_id: str, url: str, fps: float, loop: bool, watches: Sequence[tuple[str, WatchSpec]] = ()
    ) -> StreamReport:
        """Open `url` here and ingest it, from its snapshot when there is one. A `RELAYED` url takes frames
        from `relay` calls instead."""
        self._events_signal()
        source = None
        if url.startswith(RELAYED):
            source = self._relayed[stream_id] = RelayedSource(url.removeprefix(RELAYED))
        report = await self.hub.add_stream(stream_id, url, fps, loop, source, watches)
        return dataclasses.replace(report, worker=self.name)

    async def relay(self, stream_id: str, frame: Frame) -> bool:
        """The newest frame of a relayed stream; False when this worker does not hold it."""
        source = self._relayed.get(stream_id)
        if source is None or not self.hub.has(stream_id):
            return False
        source.put(frame)
        return True

    async def end_relay(self, stream_id: str, reason: str) -> None:
        source = self._relayed.pop(stream_id, None)
        if source is not None:
            source.end(reason)

    async def remove(self, stream_id: str, keep_snapshot: bool = False, leave_snapshot: bool = False) -> bool:
        self._relayed.pop(stream_id, None)
        return await self.hub.remove(stream_id, keep_snapshot, leave_snapshot)

    async def close(self) -> None:
        """Stop every stream, saving its memory when snapshots are on."""
        await self.hub.close()

    async def reports(self, stream_ids: Sequence[str] | None = None) -> dict[str, StreamReport]:
        found = await self.hub.reports(stream_ids)
        return {stream_id: dataclasses.replace(report, worker=self.name) for stream_id, report in found.items()}

    async def timeline(self, stream_id: str, limit: int) -> dict[str, Any]:
        return await self.hub.timeline(stream_id, limit)

    async def model_stats(self) -> dict[str, SchedulerStats]:
        found = list((await self.hub.model_stats()).values())
        return {self.name: found[0]} if found else {}

    async def preview_jpeg(self, stream_id: str) -> bytes | None:
        return await self.hub.preview_jpeg(stream_id)

    async def ask(
        self, key: str, stream_id: str, text: str, options: Sequence[str] | None
    ) -> AsyncIterator[AnswerItem]:
        """Answer a question (see `Hub.ask`); `cancel(key)` stops it. Call with num_returns="streaming"."""
        cancel = self._answers.setdefault(key, threading.Event())
        try:
            async for item in self.hub.ask(stream_id, text, options, cancel):
                yield item
        finally:
            self._answers.pop(key, None)

    async def cancel(self, key: str) -> bool:
        event = self._answers.get(key)
        if event is None:
            return False
        event.set()
        return True

    async def add_watch(self, stream_id: str, spec: WatchSpec, watch_id: str) -> WatchInfo:
        return await self.hub.add_watch(stream_id, spec, watch_id)

    async def remove_watch(self, watch_id: str) -> bool:
        return await self.hub.remove_watch(watch_id)

    async def watches(self, stream_id: str | None = None) -> list[WatchInfo]:
        return await self.hub.watches(stream_id)

    async def next_events(self, since: int, wait_s: float) -> tuple[str, list[tuple[int, WatchEvent]]]:
        """(incarnation, watch events numbered after `since`), waiting up to `wait_s` for one to happen.

        Numbers start again from 1 in a new incarnation: a caller that sees it change starts from 0.
        """
        signal = self._events_signal()
        signal.clear()  # before reading: an event recorded after the read sets it again
        found = await self.hub.watch_events(since)
        if not found:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), wait_s)
            found = await self.hub.watch_events(since)
        return self.incarnation, found
