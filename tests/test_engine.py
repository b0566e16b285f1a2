"""The engine core on the embedded default with real weights: exactness, budget, snapshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from engine_probes import choose_blocks, first_token_logits

from sources.file import FileSource
from sources.frame import Frame
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig, RetrievalConfig
from streamer.query import reread_context

QUESTION = "What is on screen?"


def real_frames(clip: Path, count: int, fps: float = 2.0) -> list[Frame]:
    async def read() -> list[Frame]:
        source = FileSource(clip, fps=fps)
        try:
            return [await source.recv() for _ in range(count)]
        finally:
            source.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def frames(bikes_clip: Path) -> list[Frame]:
    return real_frames(bikes_clip, 12)


def full_forward_logits(adapter: EmbeddedAdapter, lines: list[str], question: str) -> torch.Tensor:
    """A plain forward pass over `[system | frame lines | question]`, no cache involved."""
    pieces = [adapter.system_text, *(line + "\n" for line in lines), adapter.question_text(question)]
    ids = torch.cat([adapter.ids(piece) for piece in pieces], dim=1)
    with torch.inference_mode():
        return adapter.model(input_ids=ids).logits[0, -1].float()


def test_streaming_cache_equals_full_forward(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    engine = Engine(
        embedded_adapter, EngineConfig(memory=MemoryConfig(budget_tokens=8192), retrieval=RetrievalConfig(top_k=0))
    )
    engine.add_stream("cam")
    for frame in frames:
        engine.push_frame("cam", frame)
    memory = engine.memory("cam")
    records = memory.records
    assert all(r.resident for r in records) and memory.evicted_tokens == 0
    streamed = first_token_logits(engine, "cam", QUESTION)
    plain = full_forward_logits(embedded_adapter, [r.text for r in records], QUESTION)
    torch.testing.assert_close(streamed, plain, atol=2e-4, rtol=1e-4)
    assert int(streamed.argmax()) == int(plain.argmax())


def test_answer_streams_text_and_reports_timing(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    engine = Engine(embedded_adapter, EngineConfig(answer=AnswerConfig(max_new_tokens=12)))
    engine.add_stream("cam")
    for frame in frames[:6]:
        engine.push_frame("cam", frame)
    deltas: list[str] = []
    answer = engine.ask("cam", QUESTION).result(deltas.append)
    assert len(deltas) > 1, "the answer arrives in pieces"
    assert "".join(deltas).strip() == answer.text
    assert 0 < answer.ttft_ms <= answer.latency_ms
    assert answer.as_of == frames[5].stream_time
    assert 0 < answer.tokens <= 12


def test_budget_is_never_exceeded_and_records_survive_eviction(
    embedded_adapter: EmbeddedAdapter, frames: list[Frame]
) -> None:
    config = EngineConfig(memory=MemoryConfig(budget_tokens=400, evict_chunk=40), retrieval=RetrievalConfig(top_k=0))
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    memory = engine.memory("cam")
    for frame in frames * 2:
        engine.push_frame("cam", frame)
        assert memory.resident_tokens <= config.memory.budget_tokens - config.answer_reserve
    assert memory.evicted_tokens > 0
    assert len(memory.records) == 2 * len(frames)
    assert not memory.records[0].resident and memory.records[-1].resident
    # After eviction the context is re-positioned to be contiguous; it must equal a plain forward
    # over the same lines only at layer 0 (deeper layers saw older context), so check the answer runs.
    answer_text = "".join(engine.ask("cam", QUESTION))
    assert answer_text.strip()


def test_snapshot_is_unchanged_by_ingest_during_the_answer(
    embedded_adapter: EmbeddedAdapter, frames: list[Frame]
) -> None:
    engine = Engine(
        embedded_adapter, EngineConfig(memory=MemoryConfig(budget_tokens=8192), retrieval=RetrievalConfig(top_k=0))
    )
    engine.add_stream("cam")
    for frame in frames[:5]:
        engine.push_frame("cam", frame)
    before = first_token_logits(engine, "cam", QUESTION)
    memory = engine.memory("cam")
    snapshot = memory.view()
    cache = snapshot.context(snapshot.blocks, embedded_adapter.rotate_keys)
    embedded_adapter.prefill(embedded_adapter.question_embeds(QUESTION)[:, :-1], cache)
    for frame in frames[5:9]:  # frames arrive while the question is being read
        engine.push_frame("cam", frame)
    last = embedded_adapter.question_embeds(QUESTION)[:, -1:]
    during = embedded_adapter.next_token_logits(last, cache)
    snapshot.close()
    torch.testing.assert_close(during, before, atol=2e-4, rtol=1e-4)
    assert memory.blocks[-1].record.sequence == frames[8].sequence


def test_question_reads_recent_relevant_and_named_frames(
    embedded_adapter: EmbeddedAdapter, frames: list[Frame]
) -> None:
    config = EngineConfig(
        retrieval=RetrievalConfig(top_k=2, anchor_seconds=0.5), memory=MemoryConfig(window_seconds=1.0)
    )
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    for frame in frames:
        engine.push_frame("cam", frame)
    memory = engine.memory("cam")
    newest = frames[-1].stream_time
    recent = {b.record.frame_id for b in memory.blocks if newest - b.record.stream_time <= 1.0}

    def chosen_for(question: str) -> list[float]:
        snapshot = memory.view()
        chosen = choose_blocks(engine, snapshot, question)
        snapshot.close()
        return [b.record.stream_time for b in chosen]

    named = chosen_for("What happened at 00:02?")
    assert named == sorted(named)
    assert 2.0 in named, "a time named in the question is read"
    assert newest in named, "the newest frames are always read"
    around = {b.record.frame_id for b in memory.blocks if abs(b.record.stream_time - 2.0) <= 0.5}
    assert len(named) == len(recent | around), "the window and the named time, nothing that merely resembles it"
    unnamed = chosen_for(QUESTION)
    assert newest in unnamed and len(unnamed) == len(recent) + 2, "the window and the top 2 others"
    elsewhere = chosen_for("What happened at 09:00?")  # no frame near that time: the best others instead
    assert len(elsewhere) == len(recent) + 2
    assert "".join(engine.ask("cam", "What happened at 00:02?")).strip()


def test_offloaded_block_comes_back_for_a_question(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=400, evict_chunk=40, host_budget_tokens=10_000),
        retrieval=RetrievalConfig(top_k=3),
    )
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    for frame in frames * 2:
        engine.push_frame("cam", frame)
    memory = engine.memory("cam")
    first = memory.records[0]
    assert first.location == "host" and memory.host_tokens > 0
    question = "What was seen at 00:00?"
    snapshot = memory.view()
    chosen = choose_blocks(engine, snapshot, question)
    context = snapshot.context(chosen, embedded_adapter.rotate_keys)
    assert any(b.record is first for b in chosen)
    assert context.length == snapshot.sink_tokens + sum(b.record.tokens for b in chosen)
    context.close()
    snapshot.close()
    assert "".join(engine.ask("cam", question)).strip()


def test_host_tier_has_its_own_cap(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    config = EngineConfig(memory=MemoryConfig(budget_tokens=400, evict_chunk=40, host_budget_tokens=100, policy="fifo"))
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    memory = engine.memory("cam")
    for frame in frames * 2:
        engine.push_frame("cam", frame)
        assert memory.host_tokens <= config.memory.host_budget_tokens
    assert memory.dropped_tokens > 0
    locations = [r.location for r in memory.records]
    assert locations[0] == "gone" and "host" in locations and locations[-1] == "device"
    assert locations == sorted(locations, key=["gone", "host", "device"].index), "oldest leave first"


def test_curvature_tiers_route_cost_and_hold_the_budget(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=420, evict_chunk=20, host_budget_tokens=0, window_seconds=2.0)
    )
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    memory = engine.memory("cam")
    span = frames[-1].stream_time + 0.5
    for lap in range(3):
        for frame in frames:
            later = Frame(frame.pixels, frame.stream_time + lap * span, frame.capture_time, len(memory.records))
            engine.push_frame("cam", later)
            assert memory.resident_tokens <= config.memory.budget_tokens - config.answer_reserve
    records = memory.records
    assert all(r.detail == "full" for r in records[: config.memory.curvature.warmup]), "warm-up frames are clear"
    fuzzy = [r for r in records if r.detail == "terse"]
    assert fuzzy and all(r.score <= r.threshold for r in fuzzy), "a terse frame is one scored below its threshold"
    assert all("objects:" not in r.text and "text:" not in r.text for r in fuzzy)
    assert any(r.compressed for r in records), "clear frames were demoted by compression before being dropped"
    gone = [r for r in records if r.location == "gone"]
    kept = [r for r in records if r.location == "device" and r.stream_time < records[-1].stream_time - 2.0]
    assert gone and kept
    mean_margin = lambda chosen: sum(r.margin for r in chosen) / len(chosen)  # noqa: E731
    assert mean_margin(kept) > mean_margin(gone), "the least informative frames are the ones dropped"
    assert "".join(engine.ask("cam", QUESTION)).strip()


def test_reread_answer_equals_a_fresh_pass_over_the_chosen_frames(
    embedded_adapter: EmbeddedAdapter, frames: list[Frame]
) -> None:
    # After evictions the cached blocks were computed beside frames that are gone; re-reading the chosen
    # frames gives exactly the context a plain forward pass over their lines would.
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=400, evict_chunk=40, window_seconds=1.0),
        retrieval=RetrievalConfig(top_k=2),
        answer=AnswerConfig(source="text"),
    )
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    for frame in frames * 2:
        engine.push_frame("cam", frame)
    memory = engine.memory("cam")
    assert memory.evicted_tokens > 0
    snapshot = memory.view()
    chosen = choose_blocks(engine, snapshot, QUESTION)
    assert 1 < len(chosen) < len(snapshot.blocks)
    reread = reread_context(embedded_adapter, snapshot, chosen)
    logits = embedded_adapter.next_token_logits(embedded_adapter.question_embeds(QUESTION), reread)
    cached = snapshot.context(chosen, embedded_adapter.rotate_keys)
    cached_logits = embedded_adapter.next_token_logits(embedded_adapter.question_embeds(QUESTION), cached)
    snapshot.close()
    plain = full_forward_logits(embedded_adapter, [b.record.text for b in chosen], QUESTION)
    torch.testing.assert_close(logits, plain, atol=2e-4, rtol=1e-4)
    assert (cached_logits - plain).abs().max() > 1e-2, "the cached blocks' deeper layers saw other frames"
    answer = engine.ask("cam", QUESTION).result()
    engine.config.answer.source = "cache"
    assert answer.text and engine.ask("cam", QUESTION).result().text


@pytest.mark.parametrize("method", ["value_norm", "pool"])
def test_reread_reads_what_a_compressed_block_still_holds(
    embedded_adapter: EmbeddedAdapter, frames: list[Frame], method: str
) -> None:
    config = EngineConfig(
        memory=MemoryConfig(
            budget_tokens=420, evict_chunk=20, host_budget_tokens=0, window_seconds=2.0, compression=method
        )
    )
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    span = frames[-1].stream_time + 0.5
    for lap in range(3):
        for frame in frames:
            sequence = lap * len(frames) + frame.sequence
            engine.push_frame("cam", Frame(frame.pixels, frame.stream_time + lap * span, frame.capture_time, sequence))
    memory = engine.memory("cam")
    compressed = [b for b in memory.blocks if b.record.compressed]
    whole = [b for b in memory.blocks if not b.record.compressed]
    assert compressed and whole
    for block in whole:
        assert block.record.token_ids == embedded_adapter.ids(block.record.text + "\n")[0].tolist()
    for block in compressed:
        ids = block.record.token_ids
        if method == "pool":
            assert ids is None, "pooled tokens cannot be read again: their KV is used"
        else:
            original = embedded_adapter.ids(block.record.text + "\n")[0].tolist()
            assert ids is not None and len(ids) == block.length < len(original)
            remaining = iter(original)
            assert all(token in remaining for token in ids), "the kept tokens, in their order"
    snapshot = memory.view()
    reread = reread_context(embedded_adapter, snapshot, list(snapshot.blocks))
    assert reread.length == snapshot.cache.length, "every block reads as many tokens as it holds"
    snapshot.close()
