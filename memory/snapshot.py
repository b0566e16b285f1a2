"""Crash-safe, incremental snapshots of a stream's memory: a head file and immutable part files.

A frame's record, key summary and host-tier KV block stop changing once the frame leaves the device
(a host block can only be dropped later), so each is written once, into a part file (`<head>.parts/`).
The head holds the rest, which does change: the resident cache, the records of resident frames, which
frames are on the host, counters and the policy's state, and the list of parts. A snapshot therefore
writes the resident cache and what left the device since the last one, not the whole host tier.

Every file is written to a temporary file beside its target, flushed to disk, then renamed over the
target, and parts are written before the head that lists them: a reader finds either the previous
snapshot or the new one, never half of one, even if the process is killed mid-write. Parts that no head
lists (a writer stopped between the two) are removed at the next save or load. Once the host blocks
that parts hold but the host tier has since dropped outweigh the live ones, the next save writes one
new part with everything and removes the old parts; a part whose frames have all been compacted away
(`StreamMemory.compact_after_s`) is removed at the next save. Only plain tensors, numbers and strings are
stored, and loading uses `torch.load(weights_only=True)`, which runs no code. A single-file snapshot
of an earlier version (a full `state_dict()`) is still read.

What a snapshot holds is the memory's own `state_dict()`; this module only writes and reads files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from memory.errors import SnapshotError
from memory.stream_memory import StreamMemory


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> int:
    """Have `write` fill a staging file beside `path`, sync it, rename it over `path`; returns its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
        _sync_directory(path.parent)  # the rename itself survives a power cut only once its directory is synced
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return path.stat().st_size


def _sync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete the staging files a killed writer left beside the snapshot `path` and among its parts;
    returns them."""
    stale = sorted(path.parent.glob(path.name + ".*.partial")) if path.parent.is_dir() else []
    parts = _parts_dir(path)
    stale += sorted(parts.glob("*.partial")) if parts.is_dir() else []
    for partial in stale:
        partial.unlink(missing_ok=True)
    return stale


def set_aside(path: Path) -> Path:
    """Rename an unreadable snapshot (its head and parts) out of the way, kept for inspection; returns the
    head's new path."""
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    parts = _parts_dir(path)
    if parts.exists():
        parts.replace(_parts_dir(aside))
    return aside


# Compact the parts once the dropped host blocks they hold outweigh the live ones and this many bytes.
COMPACT_BYTES = 64 << 20


@dataclass
class _Part:
    """What one part file holds: frames and, of those, host blocks with their sizes in bytes."""

    frames: set[int] = field(default_factory=set)
    host_bytes: dict[int, int] = field(default_factory=dict)


class SnapshotStore:
    """One stream's snapshot: the head file at `path`, its parts in `<path>.parts/`.

    save() and load() take the memory's lock while they read or replace its state (ingest waits that
    long, not for the writing); the caller keeps one store per stream, as the store remembers what its
    parts already hold.
    """

    def __init__(self, path: Path, compact_bytes: int = COMPACT_BYTES) -> None:
        self.path = path
        self.compact_bytes = compact_bytes
        self.parts: dict[str, _Part] = {}
        self.saved: set[int] = set()  # frames whose record (and host block) a part holds
        self.next_part = 0
        self.lock = threading.Lock()  # one save at a time: each builds on what the last one wrote

    @property
    def parts_dir(self) -> Path:
        return _parts_dir(self.path)

    def save(self, memory: StreamMemory) -> int:
        """Write what changed since the last save, then the head; returns the bytes written."""
        with self.lock:
            return self._save(memory)

    def _save(self, memory: StreamMemory) -> int:
        state = memory.state_dict(exclude=self.saved)
        self._forget_before(int(state["first"]))
        on_host = set(state["host"])
        held = [
            (frame_id in on_host, size) for part in self.parts.values() for frame_id, size in part.host_bytes.items()
        ]
        dropped = sum(size for live, size in held if not live)
        if dropped > max(self.compact_bytes, sum(size for live, size in held if live)):
            state = memory.state_dict()
            self.parts, self.saved = {}, set()
        resident = {frame_id for frame_id, _, _ in state["blocks"]}
        records, summaries = state["records"], state["key_summaries"]
        leaving = [i for i, record in enumerate(records) if record["frame_id"] not in resident]
        written = 0
        if leaving:
            frames = {records[i]["frame_id"] for i in leaving}
            host = [block for block in state["offloaded"] if block["frame_id"] in frames]
            part = {
                "version": PART_VERSION,
                "records": [records[i] for i in leaving],
                "key_summaries": None if summaries is None else summaries[leaving],
                "host": host,
            }
            name = f"{self.next_part:06d}.pt"
            written += write_atomically(self.parts_dir / name, lambda out: torch.save(part, out))
            self.next_part += 1
            self.parts[name] = _Part(frames, {block["frame_id"]: _block_bytes(block) for block in host})
            self.saved |= frames
        staying = [i for i, record in enumerate(records) if record["frame_id"] in resident]
        head_state = dict(
            state,
            records=[records[i] for i in staying],
            key_summaries=None if summaries is None else summaries[staying],
            offloaded=[],
        )
        head = {"version": HEAD_VERSION, "parts": sorted(self.parts), "state": head_state}
        written += write_atomically(self.path, lambda out: torch.save(head, out))
        self._remove_unlisted()
        return written

    def load(self, memory: StreamMemory) -> None:
        """Replace the contents of `memory` (a fresh one, sink sealed) with the snapshot."""
        head = _read(self.path, self.path)
        if not isinstance(head, dict) or "parts" not in head:
            _load_state(memory, head, self.path)  # a single-file snapshot of an earlier version
            self.parts, self.saved = {}, set()
            return
        state = head.get("state")
        if head.get("version") != HEAD_VERSION or not isinstance(state, dict) or "host" not in state:
            raise SnapshotError(f"Snapshot '{self.path}' has an unknown format; delete it to start the stream empty.")
        on_host = set(state["host"])
        first = int(state.get("first", 0))
        records = list(state["records"])
        summaries = [state["key_summaries"]]
        offloaded: list[dict[str, Any]] = []
        parts: dict[str, _Part] = {}
        for name in head["parts"]:
            part = _read(self.parts_dir / name, self.path)
            held = [i for i, record in enumerate(part["records"]) if record["frame_id"] >= first]
            records += [part["records"][i] for i in held]
            summaries.append(None if part["key_summaries"] is None else part["key_summaries"][held])
            parts[name] = _Part({r["frame_id"] for r in part["records"]})
            for block in part["host"]:
                parts[name].host_bytes[block["frame_id"]] = _block_bytes(block)
                if block["frame_id"] in on_host:
                    offloaded.append(block)
        order = sorted(range(len(records)), key=lambda i: records[i]["frame_id"])
        resident = {frame_id for frame_id, _, _ in state["blocks"]}
        full = dict(state, records=[_placed(records[i], resident, on_host) for i in order], offloaded=offloaded)
        known = [s for s in summaries if s is not None]
        full["key_summaries"] = torch.cat(known)[order] if len(known) == len(summaries) else None
        _load_state(memory, full, self.path)
        self.parts = parts
        self.saved = set().union(*(part.frames for part in parts.values()))
        self.next_part = 1 + max((int(name.split(".")[0]) for name in parts), default=-1)
        self._remove_unlisted()

    def _forget_before(self, first: int) -> None:
        """Stop listing the parts that hold only frames before `first` (compacted away by the memory)."""
        for name, part in list(self.parts.items()):
            if part.frames and max(part.frames) < first:
                del self.parts[name]
        self.saved = {frame_id for frame_id in self.saved if frame_id >= first}

    def remove(self) -> None:
        """Delete the snapshot: the head and every part."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self.parts, self.saved = {}, set()

    def _remove_unlisted(self) -> None:
        """Delete part files no head lists (left by a writer stopped before its head)."""
        if self.parts_dir.is_dir():
            for path in self.parts_dir.iterdir():
                if path.name not in self.parts:
                    path.unlink(missing_ok=True)


HEAD_VERSION = 3
PART_VERSION = 3


def _parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _block_bytes(block: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in (*block["keys"], *block["values"]))


def _placed(record: dict[str, Any], resident: set[int], on_host: set[int]) -> dict[str, Any]:
    """A record's state with its location as of the head (a part holds it as it was when it left the device)."""
    frame_id = record["frame_id"]
    location = "device" if frame_id in resident else "host" if frame_id in on_host else "gone"
    return dict(record, location=location)


def _read(path: Path, snapshot: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        cause = type(error).__name__ if path == snapshot else f"{path.name}: {type(error).__name__}"
        raise SnapshotError(
            f"Snapshot '{snapshot}' cannot be read ({cause}); delete it to start the stream empty."
        ) from None


def _load_state(memory: StreamMemory, state: Any, path: Path) -> None:
    try:
        memory.load_state_dict(state)
    except ValueError as error:
        advice = (
            "delete it or use the model that made it"
            if "model" in str(error)
            else "delete it to start the stream empty"
        )
        raise SnapshotError(f"Snapshot '{path}' {error}; {advice}.") from None
