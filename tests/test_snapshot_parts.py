"""Incremental snapshots: each frame's host block and record are written once, the restore is exact, and
parts no head lists, dropped blocks and damaged parts are dealt with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_probes import first_token_logits
from tiny_adapter import SyntheticFrames, synthetic_frame
from transformers import LlamaForCausalLM

from memory.errors import SnapshotError
from memory.snapshot import SnapshotStore, write_atomically
from memory.stream_memory import StreamMemory
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig, RetrievalConfig, SnapshotConfig

QUESTION = "What was the ball doing?"
FRAMES = 400
SAVE_EVERY = 40


@pytest.fixture(scope="module")
def model(tiny_model_one_thread: LlamaForCausalLM) -> LlamaForCausalLM:
    return tiny_model_one_thread


def make_engine(model: LlamaForCausalLM, folder: Path, host_cap: int) -> Engine:
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=512, host_budget_tokens=host_cap, evict_chunk=128, window_seconds=8.0),
        answer=AnswerConfig(max_question_tokens=16, max_new_tokens=2),
        retrieval=RetrievalConfig(top_k=4, internal_weight=1.0),
        snapshot=SnapshotConfig(dir=folder, every_s=10**6),  # saved only when a test says so
    )
    return Engine(SyntheticFrames(model), config)


def fill(engine: Engine, store: SnapshotStore, frames: range) -> list[int]:
    """Push `frames` into stream "cam", saving every SAVE_EVERY frames; the bytes of each save."""
    written = []
    for index in frames:
        engine.push_frame("cam", synthetic_frame(index))
        if (index + 1) % SAVE_EVERY == 0:
            written.append(store.save(engine.memory("cam")))
    return written


def assert_same_memory(after: StreamMemory, before: StreamMemory) -> None:
    fields = ("frame_id", "stream_time", "text", "tokens", "tier", "location", "compressed", "token_ids", "items")
    assert [[getattr(r, f) for f in fields] for r in after.records] == [
        [getattr(r, f) for f in fields] for r in before.records
    ]
    assert after.places == before.places
    assert (after.host_tokens, after.dropped_tokens) == (before.host_tokens, before.dropped_tokens)
    assert list(after.offloaded) == list(before.offloaded)
    for frame_id, block in before.offloaded.items():
        restored = after.offloaded[frame_id]
        assert restored.position == block.position
        for a, b in zip((*restored.keys, *restored.values), (*block.keys, *block.values), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    summaries_after, summaries_before = after.index.key_summaries(), before.index.key_summaries()
    assert summaries_after is not None and summaries_before is not None
    assert (summaries_after == summaries_before).all()


def test_each_block_is_written_once_and_the_restore_is_exact(model: LlamaForCausalLM, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, host_cap=1 << 20)  # nothing dropped: the host tier only grows
    engine.add_stream("cam")
    memory = engine.memory("cam")
    store = SnapshotStore(tmp_path / "cam.memory.pt")
    written = fill(engine, store, range(FRAMES))
    assert len(memory.offloaded) > FRAMES // 2, "most frames are on the host"

    # A save writes the resident cache and what left the device since the last one: the same each time,
    # while the host tier it leaves alone keeps growing.
    full = write_atomically(tmp_path / "full.pt", lambda out: torch.save(memory.state_dict(), out))
    assert max(written[3:]) < 1.3 * min(written[3:]), written
    assert written[-1] < full / 3, (written[-1], full)
    on_disk = sum(path.stat().st_size for path in store.parts_dir.iterdir()) + store.path.stat().st_size
    assert on_disk < 1.2 * full, "each frame was written once"

    restarted = make_engine(model, tmp_path, host_cap=1 << 20)
    restarted.add_stream("cam")
    assert_same_memory(restarted.memory("cam"), memory)
    torch.testing.assert_close(
        first_token_logits(restarted, "cam", QUESTION), first_token_logits(engine, "cam", QUESTION), atol=0, rtol=0
    )


def test_dropped_blocks_are_compacted_away_and_a_stray_part_is_removed(model: LlamaForCausalLM, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, host_cap=1024)  # the host tier drops blocks all along
    engine.add_stream("cam")
    memory = engine.memory("cam")
    store = SnapshotStore(tmp_path / "cam.memory.pt", compact_bytes=0)
    fill(engine, store, range(FRAMES))
    assert memory.dropped_tokens > 0
    live = {frame_id for part in store.parts.values() for frame_id in part.host_bytes if frame_id in memory.offloaded}
    dropped = sum(size for part in store.parts.values() for f, size in part.host_bytes.items() if f not in live)
    assert dropped <= sum(size for part in store.parts.values() for f, size in part.host_bytes.items() if f in live)
    assert {path.name for path in store.parts_dir.iterdir()} == set(store.parts), "compacted parts are removed"

    # A writer stopped between a part and its head leaves a part no head lists.
    stray = store.parts_dir / "999999.pt"
    stray.write_bytes((store.parts_dir / sorted(store.parts)[0]).read_bytes())
    restarted = make_engine(model, tmp_path, host_cap=1024)
    restarted.add_stream("cam")
    assert_same_memory(restarted.memory("cam"), memory)
    assert not stray.exists()


def test_an_earlier_single_file_snapshot_is_still_read(model: LlamaForCausalLM, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, host_cap=1 << 20)
    engine.add_stream("cam")
    for index in range(120):
        engine.push_frame("cam", synthetic_frame(index))
    memory = engine.memory("cam")
    state = memory.state_dict()
    for name in ("host", "frames"):
        del state[name]
    torch.save(dict(state, version=2), tmp_path / "cam.memory.pt")

    restarted = make_engine(model, tmp_path, host_cap=1 << 20)
    restarted.add_stream("cam")
    assert_same_memory(restarted.memory("cam"), memory)
    restarted.save_snapshot("cam")  # from now on in parts
    assert restarted.memory("cam").records and list((tmp_path / "cam.memory.pt.parts").iterdir())


def test_a_missing_part_sets_the_snapshot_aside(model: LlamaForCausalLM, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, host_cap=1 << 20)
    engine.add_stream("cam")
    store = SnapshotStore(tmp_path / "cam.memory.pt")
    fill(engine, store, range(120))
    missing = sorted(store.parts)[0]
    (store.parts_dir / missing).unlink()
    with pytest.raises(SnapshotError, match=f"cannot be read \\({missing}: FileNotFoundError\\)"):
        SnapshotStore(store.path).load(StreamMemory(1, engine.adapter.rotate_keys, engine.memory_settings()))

    restarted = make_engine(model, tmp_path, host_cap=1 << 20)
    restarted.add_stream("cam")
    assert not restarted.memory("cam").records, "the stream starts empty"
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 2 and names[0].startswith("cam.memory.pt.unreadable-"), names
    assert names[1] == names[0] + ".parts", "the parts are kept beside the head for inspection"
