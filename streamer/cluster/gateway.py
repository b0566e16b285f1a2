"""`RayHub`: the server's hub over Ray workers, so `streamer serve --ray` speaks the same protocol.

The gateway (the aiohttp server) holds no stream. It asks the directory to add and remove streams and
calls each stream's worker directly for everything else: questions (streamed back token by token),
reports, timelines, previews, watches. Watch events come from each worker by long poll and are numbered
again here, so `GET /events?since=` reads one sequence. A question whose worker stops mid-answer ends
with `StreamRestarting` (the client gets `stream_restarting` and may ask again once the directory has
brought the stream back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sources.base import Source
from sources.frame import SourceEnded, SourceError
from streamer.cluster import (
    DIRECTORY_NAME,
    NAMESPACE,
    RELAYED,
    WORKER_RESOURCE,
    require_ray,
    unwrap,
    worker_name,
)
from streamer.cluster.directory import StreamDirectory
from streamer.cluster.worker import EngineLoader, EngineWorker
from streamer.decoding import SchedulerStats
from streamer.engine import UnknownStream
from streamer.engine_data import StreamStatus
from streamer.errors import UserError
from streamer.server.hub import AnswerItem, EventCallback, Hub, StreamReport, StreamRestarting
from streamer.watches import EVENTS_KEPT, WatchEvent, WatchInfo, WatchSpec

log = logging.getLogger(__name__)

# How long a worker may take to answer a read (report, timeline, preview) before it counts as restarting.
READ_TIMEOUT_S = 5.0
# How often the gateway re-reads the directory's map (streams moved by a failover show up within this).
REFRESH_S = 1.0
# How long one long poll for watch events waits.
EVENT_POLL_S = 5.0


@dataclass(frozen=True)
class ClusterSettings:
    """Where the workers run and how many.

    address: an existing Ray cluster to join ("auto", "ray://..." or host:port); None starts a local one
    for this server (stopped with it). workers: worker actors (each needs one GPU, or on a machine
    without GPUs one `streamer_worker` resource slot). state_dir: the snapshot folder, which every node
    must read and write (the directory's map is kept there too). gpus_per_worker: None takes one GPU per
    worker when the cluster has GPUs, otherwise a `streamer_worker` slot.
    """

    address: str | None
    workers: int
    state_dir: Path
    gpus_per_worker: float | None = None
    failover_after_s: float = 10.0
    open_timeout_s: float = 10.0
    answer_threads: int = 16


def _cpu_share(workers: int) -> int:
    """torch threads per worker: this machine's cores shared among the workers of a local cluster."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def start_ray(settings: ClusterSettings) -> bool:
    """Connect to the cluster (starting a local one when no address is given); True when this process
    started it (and so stops it on close). Joining needs nodes that offer the workers' resource."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if settings.address is None:
        ray.init(
            namespace=NAMESPACE,
            resources={WORKER_RESOURCE: settings.workers},
            include_dashboard=False,
            log_to_driver=False,
        )
        return True
    try:
        ray.init(address=settings.address, namespace=NAMESPACE, log_to_driver=False)
    except ConnectionError as error:
        raise UserError(
            f"Cannot join the Ray cluster at {settings.address} ({error}); start it with `ray start --head` "
            "or leave the address out for a local one."
        ) from None
    return False


def connect_directory(settings: ClusterSettings) -> Any:
    """The cluster's directory actor, created on this node if it does not exist yet."""
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    directory = _detached(StreamDirectory, DIRECTORY_NAME, scheduling_strategy=here)
    return directory.remote(str(settings.state_dir), failover_after_s=settings.failover_after_s)


def start_workers(settings: ClusterSettings, load_engine: EngineLoader) -> list[str]:
    """Create the worker actors that do not exist yet (restarted by Ray when they crash); their names."""
    ray = require_ray()
    gpus = settings.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    resources = {} if gpus > 0 else {WORKER_RESOURCE: 1}
    names = [worker_name(index) for index in range(settings.workers)]
    threads = _cpu_share(settings.workers) if settings.address is None else 0
    for name in names:
        worker = _detached(EngineWorker, name, num_gpus=gpus, resources=resources)
        worker.remote(name, load_engine, threads, settings.open_timeout_s, settings.answer_threads)
    return names


def _detached(cls: type, name: str, **options: Any) -> Any:
    """`cls` as a named actor outliving its creator, restarted whenever it dies; an existing one is reused."""
    import ray

    return ray.remote(cls).options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        num_cpus=0,
        **options,
    )


class RayHub(Hub):
    """The streams of a Ray cluster as one server serves them. Build with `RayHub.start`."""

    def __init__(self, settings: ClusterSettings, directory: Any, names: list[str], owns_cluster: bool) -> None:
        self.settings = settings
        self.directory = directory
        self.worker_names = names
        self.owns_cluster = owns_cluster
        self.model_name = "?"
        self.placements: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self._events: deque[tuple[int, WatchEvent]] = deque(maxlen=EVENTS_KEPT)
        self._event_number = 0
        self._listeners: list[EventCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._relays: dict[str, asyncio.Task[None]] = {}

    @classmethod
    async def start(
        cls, settings: ClusterSettings, load_engine: EngineLoader, ready_timeout_s: float = 600.0
    ) -> RayHub:
        """Join or start the cluster, create the directory and the workers, wait until every worker has
        loaded its model, and follow the directory from then on."""
        loop = asyncio.get_running_loop()
        owns = await loop.run_in_executor(None, start_ray, settings)
        directory = await loop.run_in_executor(None, connect_directory, settings)
        names = await loop.run_in_executor(None, start_workers, settings, load_engine)
        hub = cls(settings, directory, names, owns)
        try:
            pings = asyncio.gather(*(_when_up(hub._worker(name).ping.remote) for name in names))
            infos = await asyncio.wait_for(pings, ready_timeout_s)
            await asyncio.wait_for(_when_up(directory.set_workers.remote, names), ready_timeout_s)
        except TimeoutError:
            raise UserError(
                f"The {len(names)} Ray worker(s) did not start within {ready_timeout_s:.0f} s; the cluster needs "
                f"{len(names)} free GPU(s) or '{WORKER_RESOURCE}' resource slot(s) (`ray status` shows them)."
            ) from None
        except Exception as error:
            raise unwrap(error) from None
        hub.model_name = infos[0]["model"]
        await hub.refresh()
        hub._tasks.append(asyncio.create_task(hub._follow_directory(), name="follow directory"))
        for name in names:
            hub._tasks.append(asyncio.create_task(hub._pump_events(name), name=f"events {name}"))
        log.info("serving on Ray with %d worker(s), model %s", len(names), hub.model_name)
        return hub

    def _worker(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            import ray

            handle = self._handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        return handle

    def _worker_of(self, stream_id: str) -> Any:
        name = self.placements.get(stream_id)
        if name is None:
            raise UnknownStream(stream_id)
        return self._worker(name)

    async def refresh(self) -> None:
        """Read the directory's map again."""
        self.placements = await self.directory.placements.remote()

    async def _follow_directory(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await asyncio.wait_for(self.refresh(), READ_TIMEOUT_S)
            except Exception as error:  # the directory is restarting: keep the last map
                log.warning("the stream directory did not answer (%s); trying again", unwrap(error))

    def stream_ids(self) -> list[str]:
        return sorted(self.placements)

    async def add_stream(
        self,
        stream_id: str,
        url: str,
        fps: float,
        loop: bool = False,
        source: Source | None = None,
        watches: Sequence[tuple[str, WatchSpec]] = (),
    ) -> StreamReport:
        if source is not None:  # opened here (a browser's webcam): its frames are relayed to the worker
            url = f"{RELAYED}{source.name}"
        try:
            report: StreamReport = await self.directory.add_stream.remote(stream_id, url, fps, loop, list(watches))
        except Exception as error:
            if source is not None:
                source.close()
            raise unwrap(error) from None
        self.placements[stream_id] = report.worker or ""
        if source is not None:
            self._relays[stream_id] = asyncio.create_task(
                self._relay(stream_id, source, fps), name=f"relay {stream_id}"
            )
        return report

    async def _relay(self, stream_id: str, source: Source, fps: float) -> None:
        """Send the newest frame of `source` to whichever worker holds the stream, `fps` times a second at most."""
        interval, sent_at = 1.0 / fps, float("-inf")
        reason = "the sender stopped"
        try:
            while stream_id in self.placements:
                try:
                    frame = await source.recv()
                except (SourceEnded, SourceError) as error:
                    reason = str(error)
                    break
                if time.monotonic() - sent_at < interval:
                    continue
                sent_at = time.monotonic()
                name = self.placements.get(stream_id)
                with contextlib.suppress(Exception):  # its worker is restarting: the next frame goes to it
                    await asyncio.wait_for(self._worker(name or "").relay.remote(stream_id, frame), READ_TIMEOUT_S)
            name = self.placements.get(stream_id)
            if name is not None:
                with contextlib.suppress(Exception):
                    await self._worker(name).end_relay.remote(stream_id, reason)
        finally:
            source.close()

    async def remove(self, stream_id: str, keep_snapshot: bool = False) -> bool:
        removed = bool(await self.directory.remove_stream.remote(stream_id, keep_snapshot))
        self.placements.pop(stream_id, None)
        relay = self._relays.pop(stream_id, None)
        if relay is not None:
            relay.cancel()
        return removed

    async def close(self) -> None:
        """Stop following the cluster. A local cluster this server started is stopped, every stream's
        memory saved; a joined cluster keeps ingesting (a gateway started again finds its streams)."""
        tasks = [*self._tasks, *self._relays.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not self.owns_cluster:
            return
        workers = [self._worker(name) for name in self.worker_names if name in self._handles]
        for worker in workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.close.remote(), 60)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.directory.forget_all.remote(), 10)
        stopping = asyncio.get_running_loop().run_in_executor(None, _stop_cluster, [*workers, self.directory])
        try:
            await asyncio.wait_for(stopping, 30)
        except TimeoutError:
            log.warning("the local Ray cluster did not stop within 30 s")

    async def reports(self, stream_ids: Sequence[str] | None = None) -> dict[str, StreamReport]:
        wanted = self.stream_ids() if stream_ids is None else [s for s in stream_ids if s in self.placements]
        by_worker: dict[str, list[str]] = {}
        for stream_id in wanted:
            by_worker.setdefault(self.placements[stream_id], []).append(stream_id)

        async def read(name: str, ids: list[str]) -> dict[str, StreamReport]:
            try:
                found: dict[str, StreamReport] = await asyncio.wait_for(
                    self._worker(name).reports.remote(ids), READ_TIMEOUT_S
                )
            except Exception:  # restarting: say so rather than hide the stream
                return {stream_id: _restarting(stream_id, name) for stream_id in ids}
            # Placed but not (yet) running there: being given back or moved.
            return {stream_id: found.get(stream_id) or _restarting(stream_id, name) for stream_id in ids}

        results = await asyncio.gather(*(read(name, ids) for name, ids in by_worker.items()))
        return {stream_id: report for found in results for stream_id, report in found.items()}

    async def model_stats(self) -> dict[str, SchedulerStats]:
        async def read(name: str) -> dict[str, SchedulerStats]:
            try:
                found: dict[str, SchedulerStats] = await asyncio.wait_for(
                    self._worker(name).model_stats.remote(), READ_TIMEOUT_S
                )
            except Exception:  # restarting: no figures from it this time
                return {}
            return found

        results = await asyncio.gather(*(read(name) for name in self.worker_names))
        return {name: stats for found in results for name, stats in found.items()}

    async def _read(self, stream_id: str, method: str, *args: Any) -> Any:
        """Call a worker's read `method` for a stream; StreamRestarting when the worker cannot answer now."""
        worker = self._worker_of(stream_id)
        try:
            return await asyncio.wait_for(getattr(worker, method).remote(stream_id, *args), READ_TIMEOUT_S)
        except Exception as error:
            cause = unwrap(error)
            # A KeyError: placed there but not running yet (being given back or moved).
            if isinstance(cause, TimeoutError | KeyError) or _is_ray_error(cause):
                raise StreamRestarting(stream_id) from None
            raise cause from None

    async def timeline(self, stream_id: str, limit: int) -> dict[str, Any]:
        found: dict[str, Any] = await self._read(stream_id, "timeline", limit)
        return found

    async def preview_jpeg(self, stream_id: str) -> bytes | None:
        found: bytes | None = await self._read(stream_id, "preview_jpeg")
        return found

    async def ask(
        self, stream_id: str, text: str, options: Sequence[str] | None, cancel: threading.Event
    ) -> AsyncIterator[AnswerItem]:
        if cancel.is_set():
            return
        worker = self._worker_of(stream_id)
        key = uuid.uuid4().hex
        answer = worker.ask.options(num_returns="streaming").remote(key, stream_id, text, list(options or ()))
        relay = asyncio.create_task(self._relay_cancel(worker, key, cancel))
        try:
            async for ref in answer:
                yield await ref
        except Exception as error:
            cause = unwrap(error)
            if _is_ray_error(cause):
                raise StreamRestarting(stream_id) from None
            raise cause from None
        finally:
            relay.cancel()

    @staticmethod
    async def _relay_cancel(worker: Any, key: str, cancel: threading.Event) -> None:
        """Pass the client's cancel on to the worker (the event is set on the loop or by a session closing)."""
        while not cancel.is_set():
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await worker.cancel.remote(key)

    async def add_watch(self, stream_id: str, spec: WatchSpec, watch_id: str) -> WatchInfo:
        try:
            info: WatchInfo = await self._worker_of(stream_id).add_watch.remote(stream_id, spec, watch_id)
        except UnknownStream:
            raise
        except Exception as error:
            raise unwrap(error) from None
        await self.directory.set_watch.remote(stream_id, watch_id, spec)
        return info

    async def remove_watch(self, watch_id: str) -> bool:
        for info in await self.watches():
            if info.watch_id == watch_id:
                removed = bool(await self._worker_of(info.stream_id).remove_watch.remote(watch_id))
                await self.directory.set_watch.remote(info.stream_id, watch_id, None)
                return removed
        return False

    async def watches(self, stream_id: str | None = None) -> list[WatchInfo]:
        names = sorted(set(self.placements.values())) if stream_id is None else [self.placements.get(stream_id, "")]

        async def read(name: str) -> list[WatchInfo]:
            if not name:
                return []
            try:
                found: list[WatchInfo] = await asyncio.wait_for(
                    self._worker(name).watches.remote(stream_id), READ_TIMEOUT_S
                )
            except Exception:
                return []
            return found

        return [info for found in await asyncio.gather(*(read(name) for name in names)) for info in found]

    async def watch_events(self, since: int = 0) -> list[tuple[int, WatchEvent]]:
        return [(number, event) for number, event in self._events if number > since]

    def on_watch_event(self, callback: EventCallback) -> None:
        self._listeners.append(callback)

    async def _pump_events(self, name: str) -> None:
        """Follow one worker's watch events by long poll, numbering them into this gateway's sequence."""
        since: int | None = None  # the worker's number of the last event taken
        incarnation: str | None = None
        while True:
            try:
                worker = self._worker(name)
                if since is None:  # start from now: earlier events happened before this gateway
                    incarnation, found = await worker.next_events.remote(0, 0.0)
                    since = max((number for number, _ in found), default=0)
                    continue
                seen, found = await worker.next_events.remote(since, EVENT_POLL_S)
                if seen != incarnation:  # restarted: its numbers start again, and all it has is new
                    incarnation, since = seen, 0
                    seen, found = await worker.next_events.remote(0, 0.0)
            except Exception:
                self._handles.pop(name, None)
                await asyncio.sleep(1.0)
                continue
            for number, event in found:
                since = max(since, number)
                self._event_number += 1
                self._events.append((self._event_number, event))
                for listener in self._listeners:
                    listener(event)


async def _when_up(method: Callable[..., Any], *args: Any) -> Any:
    """Call an actor's remote `method`, again while the actor is restarting (e.g. a worker reloading its model)."""
    import ray.exceptions

    while True:
        try:
            return await method(*args)
        except ray.exceptions.ActorUnavailableError:
            await asyncio.sleep(0.5)


def _stop_cluster(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    ray.shutdown()


def _is_ray_error(error: BaseException) -> bool:
    import ray.exceptions

    return isinstance(error, ray.exceptions.RayError)


def _restarting(stream_id: str, worker: str) -> StreamReport:
    return StreamReport(
        stream_id=stream_id,
        source="",
        state="restarting",
        reason=f"its worker {worker} is restarting; the stream comes back from its snapshot",
        ingest_fps=0.0,
        lag_s=0.0,
        frames_ingested=0,
        frames_decoded=0,
        frames_dropped=0,
        reconnects=0,
        memory=StreamStatus(stream_id, 0, 0.0, 0, 0, 0),
        worker=worker,
    )
