"""End to end on real footage: a sign shown once is still answerable a minute after it is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_probes import choose_blocks

from sources.file import FileSource
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import MemoryConfig
from streamer.evaluation.needles import Needle, Question, build_stream
from streamer.replay import Replay, load_questions

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("word", ["KESTREL", "LANTERN"])
def test_sign_word_is_recalled_a_minute_later(embedded_adapter: EmbeddedAdapter, tmp_path: Path, word: str) -> None:
    needle = Needle("sign", 20.0, 24.0, word)
    asked = Question("sign", 86.0, "What word was written on the sign?", word)
    stream = build_stream(tmp_path / "needle.mp4", [needle], [asked], duration=90.0, fps=5.0, seed=3)
    questions = load_questions(stream.questions_path)
    # Every frame described in full: this is the recall path (KV cache, retrieval), not the tier routing,
    # which can leave a sign's onset fuzzy (see the memory evaluation).
    replay = Replay(
        Engine(embedded_adapter, EngineConfig(memory=MemoryConfig(policy="equal"))),
        FileSource(stream.video, fps=1.0),
        questions,
    )
    [result] = asyncio.run(replay.run())
    assert word.lower() in result.answer.lower(), result.answer
    assert result.correct
    assert any(t0 <= needle.end and t1 >= needle.start for t0, t1 in result.evidence), result.evidence
    assert result.funnel == {"perceived": True, "kept": True, "chosen": True, "answered": True, "lost_at": None}
    summary = replay.summary([result])
    assert summary.funnel == {"perceived": 1.0, "kept": 1.0, "chosen": 1.0, "answered": 1.0, "traced": 1.0}
    assert summary.frames_ingested == 90
    assert summary.resident_tokens <= summary.budget_tokens


def test_needle_retrieved_from_host_after_leaving_the_device_budget(
    embedded_adapter: EmbeddedAdapter, tmp_path: Path
) -> None:
    needle = Needle("sign", 20.0, 24.0, "LANTERN")
    asked = Question("sign", 86.0, "What word was written on the sign?", "LANTERN")
    stream = build_stream(tmp_path / "needle.mp4", [needle], [asked], duration=90.0, fps=5.0, seed=5)
    engine = Engine(
        embedded_adapter, EngineConfig(memory=MemoryConfig(budget_tokens=700, evict_chunk=64, policy="fifo"))
    )
    replay = Replay(engine, FileSource(stream.video, fps=1.0), load_questions(stream.questions_path))
    asyncio.run(replay.run())
    memory = engine.memory(replay.stream_id)
    needle_records = [r for r in memory.records if needle.start <= r.stream_time < needle.end]
    assert needle_records and all(r.location == "host" for r in needle_records), "the needle left the device"
    assert memory.resident_tokens <= 700
    snapshot = memory.view()
    try:
        chosen = choose_blocks(engine, snapshot, asked.question)
        context = snapshot.context(chosen, embedded_adapter.rotate_keys)
    finally:
        snapshot.close()
    chosen_ids = {b.record.frame_id for b in chosen}
    assert {r.frame_id for r in needle_records} <= chosen_ids, "every needle frame comes back from the host"
    assert context.length == snapshot.sink_tokens + sum(b.record.tokens for b in chosen)
