"""Records past `memory.compact_after_s` leave the frame level: what a stream's memory holds stops growing,
what stays is exactly what an uncompacted memory holds for those frames, questions in flight keep their
view, and snapshots carry the compacted memory across a restart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from engine_probes import choose_blocks
from tiny_adapter import SyntheticFrames, synthetic_frame
from transformers import LlamaForCausalLM

from memory.events import EventTimeline
from memory.snapshot import SnapshotStore
from memory.stream_memory import COMPACT_MIN_FRAMES, StreamMemory
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig, RetrievalConfig, SnapshotConfig

AGE = 120.0  # stream seconds a record is kept (the stream runs at 1 fps)
QUESTION = "What was the ball doing?"


@pytest.fixture(scope="module")
def model(tiny_model_one_thread: LlamaForCausalLM) -> LlamaForCausalLM:
    return tiny_model_one_thread


def make_engine(model: LlamaForCausalLM, age: float, folder: Path | None = None) -> Engine:
    config = EngineConfig(
        memory=MemoryConfig(
            budget_tokens=512, host_budget_tokens=2048, evict_chunk=128, window_seconds=8.0, compact_after_s=age
        ),
        answer=AnswerConfig(max_question_tokens=16, max_new_tokens=2),
        retrieval=RetrievalConfig(top_k=4, internal_weight=1.0),
        snapshot=SnapshotConfig(dir=folder, every_s=10**6),
    )
    engine = Engine(SyntheticFrames(model), config)
    engine.add_stream("cam")
    return engine


def held_bytes(memory: StreamMemory) -> int:
    """Bytes the index keeps for its frames (key summaries and text vectors)."""
    return memory.index.nbytes


def test_compaction_bounds_the_records_and_keeps_the_rest_exact(model: LlamaForCausalLM) -> None:
    compacting, keeping = make_engine(model, AGE), make_engine(model, 0.0)
    memory, whole = compacting.memory("cam"), keeping.memory("cam")
    held = []
    for index in range(900):
        for engine in (compacting, keeping):
            engine.push_frame("cam", synthetic_frame(index))
        if index >= 300 and index % 100 == 0:
            held.append((len(memory.records), held_bytes(memory)))

    # Bounded: never more than the age plus an eighth (or the smallest chunk) of frames, whatever the length.
    assert memory.first_id > 0 and memory.frame_count == whole.frame_count == 900
    assert len(memory.records) <= AGE + max(COMPACT_MIN_FRAMES, (AGE + COMPACT_MIN_FRAMES) // 8) + 1
    print(f"\nrecords and index bytes held every 100 frames from frame 300: {held}")
    assert max(b for _, b in held) <= 1.6 * min(b for _, b in held), held
    assert held_bytes(whole) > 4 * held_bytes(memory)
    newest = memory.records[-1].stream_time
    assert newest - memory.records[0].stream_time <= AGE + len(memory.records) // 8 + COMPACT_MIN_FRAMES

    # What is kept is what the uncompacted memory has for the same frames (where their KV is may differ: the
    # compacted host tier has room for more of them).
    first = memory.first_id
    assert [r.frame_id for r in memory.records] == list(range(first, 900))
    fields = ("stream_time", "text", "tokens", "tier", "token_ids")
    for record in memory.records:
        twin = whole.records[record.frame_id]
        assert [getattr(record, f) for f in fields] == [getattr(twin, f) for f in fields]
    ids = np.arange(first, 900)
    summaries, twin_summaries = memory.index.key_summaries(ids), whole.index.key_summaries(ids)
    assert summaries is not None and twin_summaries is not None and (summaries == twin_summaries).all()
    np.testing.assert_array_equal(memory.table.times(ids), whole.table.times(ids))
    words = ["frame", "812", "95"]
    np.testing.assert_array_equal(memory.table.bm25(ids, words), whole.table.bm25(ids, words))
    scores, twin_scores = memory.index.scores(None, None), whole.index.scores(None, None)
    assert scores is None and twin_scores is None  # the synthetic frames have no text vectors
    with pytest.raises(IndexError, match="compacted away"):
        memory.table.times(np.array([first - 1]))

    # The tiers hold only kept frames, and their counters agree with the frames.
    assert all(frame_id >= first for frame_id in memory.offloaded)
    assert memory.host_tokens == sum(block.length for block in memory.offloaded.values())
    assert all(frame_id >= first for _, frame_id in memory.drop_queue)
    assert memory.places == Counter((r.tier, r.location) for r in memory.records)
    assert compacting.status("cam").frames == 900
    assert compacting.ask("cam", QUESTION).result().tokens == 2


def test_a_view_taken_before_a_compaction_reads_the_same_after_it(model: LlamaForCausalLM) -> None:
    engine = make_engine(model, AGE)
    memory = engine.memory("cam")
    index = 0
    while memory.first_id == 0:
        engine.push_frame("cam", synthetic_frame(index))
        index += 1
    view = memory.view()
    before = [b.record.frame_id for b in choose_blocks(engine, view, QUESTION)]
    first = memory.first_id
    while memory.first_id == first:  # the next compaction takes frames the view still holds
        engine.push_frame("cam", synthetic_frame(index))
        index += 1
    assert any(frame_id < memory.first_id for frame_id in view.by_id)
    after = [b.record.frame_id for b in choose_blocks(engine, view, QUESTION)]
    view.close()
    assert after == before


def test_timeline_forgets_frame_ids_but_keeps_showings() -> None:
    timeline = EventTimeline(rejoin_s=2.0)
    for frame_id in range(40):
        shown = [("text", "OPEN")] if frame_id % 10 < 4 else []
        timeline.observe(frame_id, float(frame_id), shown, full=True)
    earlier = timeline.view(40.0)
    timeline.forget_frames(25)
    (item,) = timeline.view(40.0)
    assert [(s.first, s.last) for s in item.showings] == [(0, 3), (10, 13), (20, 23), (30, 33)]
    assert [s.frame_ids for s in item.showings] == [[], [], [], [30, 31, 32, 33]]
    assert earlier[0].showings[1].frame_ids == [10, 11, 12, 13], "a view taken earlier keeps its own"
    restored = EventTimeline.from_state(timeline.state())
    assert restored.view(40.0) == timeline.view(40.0) and restored.open == timeline.open == set()


def test_a_compacted_memory_survives_a_restart(model: LlamaForCausalLM, tmp_path: Path) -> None:
    engine = make_engine(model, AGE, tmp_path)
    memory = engine.memory("cam")
    store = SnapshotStore(tmp_path / "cam.memory.pt")
    sizes = []
    for index in range(900):
        engine.push_frame("cam", synthetic_frame(index))
        if (index + 1) % 40 == 0:
            store.save(memory)
            if index >= 300:
                sizes.append(sum(p.stat().st_size for p in store.parts_dir.iterdir()))
    assert memory.first_id > 0
    print(f"\nparts on disk after each save from frame 300: {sizes}")
    assert max(sizes) <= 2.5 * min(sizes), f"the parts stop growing: {sizes}"
    store.save(memory)
    assert all(max(part.frames) >= memory.first_id for part in store.parts.values())

    restarted = make_engine(model, AGE, tmp_path)
    after = restarted.memory("cam")
    assert (after.first_id, after.frame_count) == (memory.first_id, memory.frame_count)
    fields = ("frame_id", "stream_time", "text", "tokens", "tier", "location", "token_ids")
    assert [[getattr(r, f) for f in fields] for r in after.records] == [
        [getattr(r, f) for f in fields] for r in memory.records
    ]
    assert after.places == memory.places and list(after.offloaded) == list(memory.offloaded)
    ids = np.arange(memory.first_id, memory.frame_count)
    restored, saved = after.index.key_summaries(ids), memory.index.key_summaries(ids)
    assert restored is not None and saved is not None and (restored == saved).all()
    assert after.timeline.view(1e9) == memory.timeline.view(1e9)
    for index in range(900, 1000):  # and it goes on compacting
        restarted.push_frame("cam", synthetic_frame(index))
    assert after.first_id > memory.first_id
