"""The host tier of the streaming KV memory over a long accelerated replay.

Blocks that leave the device budget move to host memory, which has its own token cap. At that cap the
host tier drops the policy's least valuable blocks (for the curvature policy: the lowest curvature margin,
the oldest first among equals); their records and retrieval vectors stay, so a question can still be
routed to their time. Once both tiers are full the KV the memory holds stops growing, and so must the
process: what still grows is the small record every frame keeps (its key summary, in the index).
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama
from engine_probes import choose_blocks
from tiny_adapter import HEAD_DIM, KV_HEADS, LAYERS, SyntheticFrames, synthetic_frame, tiny_model
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from memory.stream_memory import StreamMemory
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig, RetrievalConfig

BUDGET = 512
HOST_CAP = 1536
FRAMES_TO_SETTLE = 100  # frames after the host tier first drops a block, before measuring
FRAMES_MEASURED = 2000
MEASURE_EVERY = 100
ASK_EVERY = 250
QUESTION = "What was the ball doing?"
MIB = 2**20
# Growth allowed over the measured frames beyond the per-frame key summaries: the records' Python
# objects (about 1 KiB a frame) and allocator noise (single readings lie up to 4 MiB off their trend,
# the trend over 2000 frames moves far less). The KV dropped over the same frames is about 100 MiB.
RSS_TOLERANCE = 8 * MIB


STATUS = Path("/proc/self/status")
pytestmark = pytest.mark.skipif(not STATUS.exists(), reason="reads the resident set size from /proc")
_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def resident_set_bytes() -> int:
    """The process's resident memory (VmRSS), after giving freed memory back to the system."""
    gc.collect()
    if _TRIM is not None:  # glibc keeps freed heap pages unless asked to return them
        _TRIM(0)
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`: a view keeps all of its storage alive."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def kv_bytes(memory: StreamMemory) -> tuple[int, int]:
    """Bytes held for KV by the resident cache and by the host blocks."""
    store = memory.cache.store
    assert store is not None
    host = [t for block in memory.offloaded.values() for t in (*block.keys, *block.values)]
    return storage_bytes([*store.keys, *store.values]), storage_bytes(host)


def record_bytes(memory: StreamMemory) -> int:
    """Bytes of what the memory keeps for every frame forever: its key summary, in the index only."""
    assert all(r.key_summary is None for r in memory.records), "records let go of their key summaries"
    summaries = memory.index.summaries
    return summaries.nbytes if summaries is not None else 0


def informativeness(memory: StreamMemory, frame_id: int) -> tuple[float, int]:
    """The order the host tier drops blocks in at its cap: least informative (curvature margin) first,
    then oldest."""
    record = memory.records[frame_id]
    return record.margin, record.frame_id


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    model = tiny_model()
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=BUDGET, host_budget_tokens=HOST_CAP, evict_chunk=256, window_seconds=8.0),
        answer=AnswerConfig(max_question_tokens=16, max_new_tokens=2),
        retrieval=RetrievalConfig(top_k=4, internal_weight=1.0),
    )
    threads = torch.get_num_threads()
    # These tensors are too small to split between threads, and on a busy machine idle workers spin.
    torch.set_num_threads(1)
    try:
        yield Engine(SyntheticFrames(model), config)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_host_tier_is_capped_and_process_memory_stays_flat(engine: Engine) -> None:
    config = engine.config
    engine.add_stream("cam")
    memory = engine.memory("cam")
    bytes_per_token = LAYERS * 2 * KV_HEADS * HEAD_DIM * 4
    expected_host: dict[int, int] = {}  # frame id -> tokens: what the host tier must hold
    first_drop: int | None = None
    samples: list[tuple[int, int, int, int]] = []  # frame, RSS, record bytes, tokens dropped so far
    questions_reading_host = 0
    started = time.perf_counter()
    index = 0
    while first_drop is None or index <= first_drop + FRAMES_TO_SETTLE + FRAMES_MEASURED:
        on_device = [b.record.frame_id for b in memory.blocks]
        engine.push_frame("cam", synthetic_frame(index))
        assert memory.resident_tokens <= config.memory.budget_tokens - config.answer_reserve

        # The host tier against its definition: blocks arrive oldest first as they leave the device;
        # past the cap the least informative go, whenever they arrived.
        still = {b.record.frame_id for b in memory.blocks}
        for frame_id in (i for i in on_device if i not in still):
            expected_host[frame_id] = memory.records[frame_id].tokens
            while sum(expected_host.values()) > HOST_CAP:
                del expected_host[min(expected_host, key=lambda i: informativeness(memory, i))]
        assert set(memory.offloaded) == set(expected_host)
        assert memory.host_tokens == sum(expected_host.values()) <= HOST_CAP
        if first_drop is None and memory.dropped_tokens:
            first_drop = index

        step = -1 if first_drop is None else index - first_drop - FRAMES_TO_SETTLE  # measured frames so far
        if step >= 0 and step % ASK_EVERY == 0:
            snapshot = memory.view()
            chosen = choose_blocks(engine, snapshot, QUESTION)
            snapshot.close()
            questions_reading_host += any(b.record.frame_id in memory.offloaded for b in chosen)
            assert engine.ask("cam", QUESTION).result().tokens == config.answer.max_new_tokens
        if step >= 0 and step % MEASURE_EVERY == 0:
            device_bytes, host_bytes = kv_bytes(memory)
            assert host_bytes == memory.host_tokens * bytes_per_token, "a host block holds its own tokens only"
            assert device_bytes <= 2 * BUDGET * bytes_per_token
            assert memory.places == Counter((r.tier, r.location) for r in memory.records), "counted as they moved"
            samples.append((index, resident_set_bytes(), record_bytes(memory), memory.dropped_tokens))
        index += 1
    elapsed = time.perf_counter() - started

    # At the cap: what was dropped keeps its record, key summary and index entry; the least
    # informative went, not merely the oldest.
    gone = [r for r in memory.records if r.location == "gone"]
    on_host = [memory.records[i] for i in memory.offloaded]
    assert len(memory.records) == memory.index.count == index
    assert gone and any(r.frame_id > min(h.frame_id for h in on_host) for r in gone)
    for record in gone[:: max(1, len(gone) // 50)]:
        summary = memory.index.key_summary(record.frame_id)
        assert summary is not None and summary.shape == (LAYERS, KV_HEADS * HEAD_DIM)
        assert np.isfinite(summary).all() and np.abs(summary).sum() > 0
    assert questions_reading_host > 0, "questions read host blocks while memory was measured"

    frames = np.array([s[0] for s in samples], dtype=np.float64)
    rss = np.array([s[1] for s in samples], dtype=np.float64)
    records = np.array([s[2] for s in samples], dtype=np.float64)
    span = frames[-1] - frames[0]
    trend = np.polyfit(frames, rss, 1)
    rss_growth = trend[0] * span
    scatter = np.abs(rss - np.polyval(trend, frames)).max()
    record_growth = np.polyfit(frames, records, 1)[0] * span
    # What the process would have gained had the dropped blocks stayed referenced.
    dropped_kv = (samples[-1][3] - samples[0][3]) * bytes_per_token
    print(
        f"\n{index} frames in {elapsed:.1f} s; host tier full from frame {first_drop}; "
        f"over the last {span:.0f} frames: RSS {rss[0] / MIB:.1f} -> {rss[-1] / MIB:.1f} MiB, "
        f"fitted growth {rss_growth / MIB:.2f} MiB (readings within {scatter / MIB:.1f} MiB of the fit), "
        f"records {record_growth / MIB:.2f} MiB, "
        f"KV dropped {dropped_kv / MIB:.1f} MiB; KV held {kv_bytes(memory)[0] / MIB:.2f} MiB on the device, "
        f"{kv_bytes(memory)[1] / MIB:.2f} MiB on the host"
    )
    assert dropped_kv >= 8 * RSS_TOLERANCE, "the tolerance must be small enough to catch a leak of 1/8 of the drops"
    assert rss_growth <= record_growth + RSS_TOLERANCE


def layer0_keys(model: LlamaForCausalLM, embeds: torch.Tensor, start: int) -> torch.Tensor:
    """First-layer keys of `embeds` placed from position `start`: they depend on nothing else."""
    layer = model.model.layers[0]
    with torch.no_grad():
        hidden = layer.input_layernorm(embeds)
        keys = layer.self_attn.k_proj(hidden).view(1, embeds.shape[1], -1, HEAD_DIM).transpose(1, 2)
        positions = torch.arange(start, start + embeds.shape[1])[None]
        cos, sin = model.model.rotary_emb(hidden, positions)
        return apply_rotary_pos_emb(keys, keys, cos, sin)[1]


def test_positions_stay_exact_through_many_evictions_and_compressions() -> None:
    # No host tier: blocks are demoted (compressed), dropped and the rest re-positioned hundreds of times.
    model = make_tiny_llama(
        num_hidden_layers=2, hidden_size=KV_HEADS * HEAD_DIM, num_attention_heads=KV_HEADS,
        num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, intermediate_size=64,
    )  # fmt: skip
    adapter = SyntheticFrames(model)
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=512, host_budget_tokens=0, evict_chunk=16, window_seconds=2.0),
        retrieval=RetrievalConfig(top_k=3),
    )
    engine = Engine(adapter, config)
    engine.add_stream("cam")
    memory = engine.memory("cam")
    sink = adapter.system_embeds()
    checked = 0
    held = memory.view()  # a question in flight: every frame appended copies the resident store
    room = 0
    for index in range(400):
        engine.push_frame("cam", synthetic_frame(index))
        assert memory.cache.store is not None
        room = max(room, memory.cache.store.capacity)
        held.close()
        held = memory.view()
        if index % 50 != 49:
            continue
        # Every whole block on the device holds the keys its tokens would have at its position now.
        for block in memory.blocks:
            if not block.record.compressed:
                fresh = adapter.frame_tokens(synthetic_frame(block.record.sequence), block.record.detail).embeds
                got = memory.cache.keys(0)[..., block.start : block.end, :]
                torch.testing.assert_close(got, layer0_keys(model, fresh, block.start), atol=1e-4, rtol=1e-4)
                checked += 1
        # So does a question's context: the sink, then the chosen blocks moved to be contiguous.
        snapshot = memory.view()
        chosen = choose_blocks(engine, snapshot, QUESTION)
        context = snapshot.context(chosen, memory.rotate)
        at = snapshot.sink_tokens
        torch.testing.assert_close(context.keys(0)[..., :at, :], layer0_keys(model, sink, 0), atol=1e-4, rtol=1e-4)
        for block in sorted(chosen, key=lambda b: b.record.frame_id):
            if not block.record.compressed:
                fresh = adapter.frame_tokens(synthetic_frame(block.record.sequence), block.record.detail).embeds
                got = context.keys(0)[..., at : at + block.length, :]
                torch.testing.assert_close(got, layer0_keys(model, fresh, at), atol=1e-4, rtol=1e-4)
            at += block.length
        assert context.length == at
        snapshot.close()
    assert memory.dropped_tokens > 4 * config.memory.budget_tokens and memory.compressed_tokens > 0
    assert checked > 50
    # The copies have room for what the budget lets the store hold and 256 tokens more, not for twice
    # what they held (782 here).
    assert room <= config.memory.budget_tokens + 256, room
