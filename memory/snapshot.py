"""Crash-safe snapshots of a stream's memory: records, resident KV, host-tier KV, in one file.

A snapshot is written to a temporary file beside its target, flushed to disk, then renamed over
the target: a rename is atomic, so a reader finds either the previous snapshot or the new one,
never half of one, even if the process is killed mid-write. Only plain tensors, numbers and
strings are stored, and loading uses `torch.load(weights_only=True)`, which runs no code.

What a snapshot holds is the memory's own `state_dict()`; this module only writes and reads files.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

from memory.errors import SnapshotError
from memory.stream_memory import StreamMemory


def save_snapshot(memory: StreamMemory, path: Path) -> int:
    """Write `memory` to `path` atomically; returns the bytes written. Hold `memory.lock` or pause ingest."""
    state = memory.state_dict()
    return write_atomically(path, lambda out: torch.save(state, out))


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
    """Delete the staging files a killed writer left beside the snapshot `path`; returns them."""
    stale = sorted(path.parent.glob(path.name + ".*.partial")) if path.parent.is_dir() else []
    for partial in stale:
        partial.unlink(missing_ok=True)
    return stale


def set_aside(path: Path) -> Path:
    """Rename an unreadable snapshot out of the way (kept for inspection); returns its new path."""
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    return aside


def load_snapshot(memory: StreamMemory, path: Path) -> None:
    """Replace the contents of `memory` (a fresh one, sink sealed) with the snapshot at `path`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SnapshotError(
            f"Snapshot '{path}' cannot be read ({type(error).__name__}); delete it to start the stream empty."
        ) from None
    try:
        memory.load_state_dict(state)
    except ValueError as error:
        advice = (
            "delete it or use the model that made it"
            if "model" in str(error)
            else "delete it to start the stream empty"
        )
        raise SnapshotError(f"Snapshot '{path}' {error}; {advice}.") from None
