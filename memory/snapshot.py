"""Crash-safe snapshots of a stream's memory: records, resident KV, host-tier KV, in one file.

A snapshot is written to a temporary file beside its target, flushed to disk, then renamed over
the target: a rename is atomic, so a reader finds either the previous snapshot or the new one,
never half of one, even if the process is killed mid-write. Only plain tensors, numbers and
strings are stored, and loading uses `torch.load(weights_only=True)`, which runs no code.

What is not stored: the curvature scorer's window (a restored stream warms up again), the event
timeline, which is rebuilt from the records' items, and the retrieval index itself, which is rebuilt
from the records' text vectors and the key summaries (saved as one float16 array).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memory.errors import SnapshotError
from memory.events import EventTimeline
from memory.kv_cache import KVStore, StreamingCache
from memory.records import FrameRecord, OffloadedBlock, ResidentBlock
from memory.stream_memory import StreamMemory

FORMAT_VERSION = 2  # 1: key summaries inside the records (still read)
# What every version holds besides its number (version 2 adds "key_summaries").
_FIELDS = ("sink_tokens", "keys", "values", "blocks", "offloaded", "records", "counters", "policy")


def save_snapshot(memory: StreamMemory, path: Path) -> int:
    """Write `memory` to `path` atomically; returns the bytes written. Hold `memory.lock` or pause ingest."""
    with memory.lock:
        length = memory.cache.length
        state = {
            "version": FORMAT_VERSION,
            "sink_tokens": memory.sink_tokens,
            "keys": [memory.cache.keys(layer)[..., :length, :].clone() for layer in range(memory.cache.num_layers)],
            "values": [memory.cache.values(layer)[..., :length, :].clone() for layer in range(memory.cache.num_layers)],
            "blocks": [[b.record.frame_id, b.start, b.length] for b in memory.blocks],
            "offloaded": [
                {"frame_id": b.record.frame_id, "keys": b.keys, "values": b.values, "position": b.position}
                for b in memory.offloaded.values()
            ],
            "records": [_record_state(r) for r in memory.records],
            "key_summaries": _tensor(memory.index.key_summaries()),
            "counters": [
                memory.host_tokens,
                memory.evicted_tokens,
                memory.dropped_tokens,
                memory.compressed_tokens,
            ],
            "policy": memory.policy.state(),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(state, out)
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
    if (
        not isinstance(state, dict)
        or state.get("version") not in (1, FORMAT_VERSION)
        or any(name not in state for name in _FIELDS)
    ):
        raise SnapshotError(f"Snapshot '{path}' has an unknown format; delete it to start the stream empty.")
    keys: list[torch.Tensor] = state["keys"]
    if len(keys) != memory.cache.num_layers or int(state["sink_tokens"]) != memory.sink_tokens:
        raise SnapshotError(
            f"Snapshot '{path}' was made with a different model or prompt; delete it or use the model that made it."
        )
    device = memory.cache.keys(0).device
    dtype = memory.cache.keys(0).dtype
    length = int(keys[0].shape[-2])
    store = KVStore.allocate([k.to(device, dtype) for k in keys], length + 256)
    for layer, (k, v) in enumerate(zip(keys, state["values"], strict=True)):
        store.keys[layer][..., :length, :] = k.to(device, dtype)
        store.values[layer][..., :length, :] = v.to(device, dtype)
    store.written = length
    with memory.lock:
        memory.cache = StreamingCache(len(keys), store, length)
        memory.records = []
        memory.timeline = EventTimeline(memory.timeline.rejoin_s)
        memory.index = type(memory.index)(memory.index.internal_weight, memory.index.text_weight)
        summaries = state.get("key_summaries")
        for frame_id, saved in enumerate(state["records"]):
            record = _record_from(saved)
            if summaries is not None:
                record.key_summary = summaries[frame_id].float().numpy()
            record.frame_id = memory.index.add(record.key_summary, record.text_vector)
            record.key_summary = None
            memory.records.append(record)
            memory.timeline.observe(record.frame_id, record.stream_time, record.items, record.detail == "full")
        memory.blocks.clear()
        for frame_id, start, block_length in state["blocks"]:
            memory.blocks.append(ResidentBlock(memory.records[frame_id], start, block_length))
        memory.offloaded = {
            item["frame_id"]: OffloadedBlock(
                memory.records[item["frame_id"]], item["keys"], item["values"], item["position"]
            )
            for item in state["offloaded"]
        }
        memory.host_tokens, memory.evicted_tokens, memory.dropped_tokens, memory.compressed_tokens = state["counters"]
        memory.policy.restore(state["policy"])


_VECTORS = ("text_vector", "key_summary")


def _record_state(record: FrameRecord) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for field in fields(record):
        value = getattr(record, field.name)
        state[field.name] = _tensor(value) if field.name in _VECTORS else value
    return state


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


def _record_from(state: dict[str, Any]) -> FrameRecord:
    values = dict(state)
    for name in _VECTORS:
        if values.get(name) is not None:
            values[name] = values[name].numpy()
    return FrameRecord(**values)
