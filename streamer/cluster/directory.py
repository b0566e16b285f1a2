"""`StreamDirectory`: which worker holds each stream, kept true while workers crash, restart or vanish.

One named, detached actor per cluster (restarted by Ray if it dies). It owns the map stream -> (source,
worker, watches) and writes it atomically to `directory.json` in the snapshot folder after every change,
so a restarted directory (or a restarted gateway asking it) finds every stream where it was. Streams are
added and removed only through it: a new stream goes to the worker with the fewest streams.

Every `check_every_s` it pings each worker:
- a worker that answers with a stream missing that it should hold (Ray restarted it after a crash: a new
  process with an empty engine) is given the stream again, which restores its snapshot;
- a worker that holds a stream it should not (its streams were moved while it was unreachable) drops it,
  leaving the snapshot file to the stream's new worker;
- a worker that has not answered for `failover_after_s` (its node is gone, or it cannot be restarted)
  has its streams re-added on the other workers, each from its snapshot.
What a stream ingested after its last snapshot is lost in a failover (`snapshot.every_s` bounds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.snapshot import write_atomically
from streamer.cluster import NAMESPACE, unwrap
from streamer.server.hub import StreamExists, StreamReport
from streamer.watches import WatchSpec

log = logging.getLogger(__name__)

STATE_FILE = "directory.json"


@dataclass
class Placement:
    """A stream as the directory keeps it: its source, its worker and its watches (id -> spec)."""

    url: str
    fps: float
    loop: bool
    worker: str
    watches: dict[str, WatchSpec] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["watches"] = {watch_id: dataclasses.asdict(spec) for watch_id, spec in self.watches.items()}
        return fields

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Placement:
        watches = {watch_id: WatchSpec(**spec) for watch_id, spec in fields.get("watches", {}).items()}
        return cls(fields["url"], float(fields["fps"]), bool(fields["loop"]), fields["worker"], watches)


class StreamDirectory:
    """Use through `ray.remote` (see `streamer.cluster.gateway.connect_directory`).

    state_dir: where directory.json is kept (the snapshot folder, which every node must read).
    """

    def __init__(
        self,
        state_dir: str,
        check_every_s: float = 0.5,
        ping_timeout_s: float = 3.0,
        failover_after_s: float = 10.0,
    ) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.check_every_s = check_every_s
        self.ping_timeout_s = ping_timeout_s
        self.failover_after_s = failover_after_s
        self.workers: list[str] = []
        self.streams: dict[str, Placement] = {}
        if self.path.exists():
            state = json.loads(self.path.read_text())
            self.workers = list(state.get("workers", []))
            self.streams = {stream_id: Placement.of(fields) for stream_id, fields in state["streams"].items()}
            log.info("directory: %d stream(s) on %d worker(s) from %s", len(self.streams), len(self.workers), self.path)
        self.busy: set[str] = set()  # streams being added, moved or removed: the checks leave them alone
        self.unreachable_since: dict[str, float] = {}
        self._handles: dict[str, Any] = {}
        self._monitor: asyncio.Task[None] | None = None

    # Asked by the gateway.

    async def set_workers(self, names: list[str]) -> None:
        """The workers streams may be placed on (a stream on a worker no longer listed moves at the next check)."""
        self.workers = list(names)
        self._save()
        self._ensure_monitor()

    async def placements(self) -> dict[str, str]:
        """stream id -> worker name."""
        self._ensure_monitor()
        return {stream_id: placement.worker for stream_id, placement in self.streams.items()}

    async def process_id(self) -> int:
        """This incarnation's process id (a restarted directory has a new one)."""
        return os.getpid()

    async def add_stream(
        self, stream_id: str, url: str, fps: float, loop: bool, watches: list[tuple[str, WatchSpec]]
    ) -> StreamReport:
        """Place a new stream on the least-loaded reachable worker and start it there."""
        self._ensure_monitor()
        if stream_id in self.streams or stream_id in self.busy:
            raise StreamExists(f"A stream named '{stream_id}' already exists; pick another stream_id.")
        worker = self._least_loaded(exclude=())
        if worker is None:
            raise RuntimeError("No worker is reachable to take the stream; check the cluster.")
        self.busy.add(stream_id)
        try:
            try:
                report: StreamReport = await self._handle(worker).add_stream.remote(stream_id, url, fps, loop, watches)
            except Exception as error:
                raise unwrap(error) from None
            self.streams[stream_id] = Placement(url, fps, loop, worker, dict(watches))
            self._save()
            return report
        finally:
            self.busy.discard(stream_id)

    async def remove_stream(self, stream_id: str, keep_snapshot: bool = False) -> bool:
        placement = self.streams.pop(stream_id, None)
        if placement is None:
            return False
        self._save()
        self.busy.add(stream_id)
        try:
            await self._handle(placement.worker).remove.remote(stream_id, keep_snapshot)
        except Exception as error:  # its worker is gone: nothing left to stop
            log.warning("directory: %s could not stop %s (%s)", placement.worker, stream_id, unwrap(error))
        finally:
            self.busy.discard(stream_id)
        return True

    async def forget_all(self) -> None:
        """Empty the map (a local cluster shutting down: its server re-adds its streams next time)."""
        self.streams.clear()
        self._save()

    async def set_watch(self, stream_id: str, watch_id: str, spec: WatchSpec | None) -> None:
        """Record (or with None, drop) a watch, so it comes back with its stream after a failover."""
        placement = self.streams.get(stream_id)
        if placement is None:
            return
        if spec is None:
            placement.watches.pop(watch_id, None)
        else:
            placement.watches[watch_id] = spec
        self._save()

    # Keeping the map true.

    def _ensure_monitor(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._watch_workers())

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.gather(*(self._check(name) for name in self.workers), return_exceptions=True)
            await asyncio.sleep(self.check_every_s)

    async def _check(self, name: str) -> None:
        try:
            info = await asyncio.wait_for(self._handle(name).ping.remote(), self.ping_timeout_s)
        except Exception:
            self._handles.pop(name, None)  # look it up again next time
            since = self.unreachable_since.setdefault(name, time.monotonic())
            if time.monotonic() - since >= self.failover_after_s:
                await self._move_away(name)
            return
        self.unreachable_since.pop(name, None)
        hosted = set(info["streams"])
        for stream_id, placement in list(self.streams.items()):
            if placement.worker == name and stream_id not in hosted and stream_id not in self.busy:
                await self._start(stream_id, name, "restarted")
        for stream_id in hosted:
            owner = self.streams.get(stream_id)
            if stream_id not in self.busy and (owner is None or owner.worker != name):
                log.info("directory: %s no longer holds %s; dropping its copy", name, stream_id)
                with contextlib.suppress(Exception):
                    await self._handle(name).remove.remote(stream_id, False, True)

    async def _move_away(self, name: str) -> None:
        """Re-add the streams of the unreachable worker `name` on the others."""
        for stream_id, placement in list(self.streams.items()):
            if placement.worker != name or stream_id in self.busy:
                continue
            target = self._least_loaded(exclude=(name,))
            if target is None:
                log.error("directory: %s is unreachable and no other worker is: %s waits", name, stream_id)
                return
            placement.worker = target
            self._save()
            await self._start(stream_id, target, "moved")

    async def _start(self, stream_id: str, worker: str, kind: str) -> None:
        """Start a placed stream on `worker` (its snapshot restores its memory)."""
        placement = self.streams[stream_id]
        self.busy.add(stream_id)
        try:
            watches = list(placement.watches.items())
            await self._handle(worker).add_stream.remote(
                stream_id, placement.url, placement.fps, placement.loop, watches
            )
            log.warning("directory: %s %s on %s from its snapshot", stream_id, kind, worker)
        except Exception as error:
            log.error("directory: %s could not start on %s: %s", stream_id, worker, unwrap(error))
        finally:
            self.busy.discard(stream_id)

    def _least_loaded(self, exclude: tuple[str, ...]) -> str | None:
        candidates = [w for w in self.workers if w not in exclude and w not in self.unreachable_since]
        if not candidates:
            return None
        load = {w: 0 for w in candidates}
        for placement in self.streams.values():
            if placement.worker in load:
                load[placement.worker] += 1
        return min(candidates, key=lambda w: (load[w], self.workers.index(w)))

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            import ray

            handle = self._handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        return handle

    def _save(self) -> None:
        state = {
            "workers": self.workers,
            "streams": {stream_id: placement.as_json() for stream_id, placement in self.streams.items()},
        }
        write_atomically(self.path, lambda out: out.write(json.dumps(state, indent=1).encode()))
