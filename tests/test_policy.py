"""Budget policies and KV-level compression: what gives way, and that compressed keys stay exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from memory.compression import compress, compress_block, compressed_length
from memory.kv_cache import KVSegment, StreamingCache
from memory.policy import FifoPolicy, TieredPolicy, UniformPolicy, make_policy
from memory.records import FrameRecord, ResidentBlock
from streamer.rope import RotaryShift


def blocks(count: int, tokens: int = 10, clear_every: int = 0) -> list[ResidentBlock]:
    """`count` frames at 1 fps, `tokens` each; every `clear_every`-th is clear with a high margin."""
    made = []
    for i in range(count):
        clear = clear_every > 0 and i % clear_every == 0
        record = FrameRecord(i, float(i), f"frame {i}", tokens, tier="clear" if clear else "fuzzy", frame_id=i)
        record.score, record.threshold = (2.0, 1.0) if clear else (0.5, 1.0)
        made.append(ResidentBlock(record, 100 + i * tokens, tokens))
    return made


def ids(selection: list[ResidentBlock]) -> list[int]:
    return [b.record.frame_id for b in selection]


def test_fifo_evicts_the_oldest() -> None:
    plan = FifoPolicy().plan(blocks(10), 25, window_start=8.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [0, 1, 2] and not plan.compress


def test_uniform_keeps_evenly_spaced_frames() -> None:
    policy = UniformPolicy()
    plan = policy.plan(blocks(16), 50, window_start=12.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [1, 3, 5, 7, 9] and policy.stride == 2
    kept = [b for b in blocks(16) if b.record.frame_id not in ids(plan.evict)]
    plan = policy.plan(kept, 30, window_start=12.0, compress_ratio=0.5, host=False)
    # Frame 11 was off the stride already; then the spacing doubles.
    assert policy.stride == 4 and ids(plan.evict) == [11, 2, 6]


def test_uniform_gives_way_when_only_frame_zero_is_left_to_thin() -> None:
    # Frame 0 is on every stride; with nothing else before the window the window itself gives way.
    frames = blocks(4)
    plan = UniformPolicy().plan(frames, 15, window_start=1.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [0, 1]


def test_curvature_drops_near_duplicates_before_unique_frames() -> None:
    # Clear frames 0-5 (all demoted already): 0, 2 and 4 describe the same scene, 1, 3 and 5 differ.
    frames = blocks(8, clear_every=1)
    same = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    for b in frames:
        b.record.compressed = True
        unique = np.zeros(4, np.float32)
        unique[b.record.frame_id % 4] = 1.0
        unique[(b.record.frame_id + 1) % 4] = 0.2 * b.record.frame_id
        b.record.text_vector = same if b.record.frame_id % 2 == 0 else unique / np.linalg.norm(unique)
    plan = TieredPolicy().plan(frames, 20, window_start=6.0, compress_ratio=0.5, host=False)
    # Two of the three copies go (oldest first among equals), the last copy then is unique and stays.
    assert ids(plan.evict) == [0, 2]


def test_a_word_no_other_frame_has_keeps_its_frame() -> None:
    # Six demoted clear frames of one street scene; frame 1 also read a sign. It has the lowest margin
    # and is among the oldest, yet it is the one frame whose loss would lose a word.
    frames = blocks(8, clear_every=1)
    for b in frames:
        b.record.compressed = True
        b.record.text = f"[00:0{b.record.frame_id}] scene: street; objects: car, person; colours: grey"
    frames[1].record.text = '[00:01] scene: street; text: "Kestrel"; colours: grey'
    frames[1].record.score = 1.01
    plan = TieredPolicy().plan(frames, 40, window_start=6.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [0, 2, 3, 4]


def test_without_a_host_a_frame_with_a_unique_word_stays_whole_longest() -> None:
    # Clear frames 0, 2, 4 (0 read a sign), fuzzy frames between; nothing demoted yet.
    frames = blocks(8, clear_every=2)
    for b in frames:
        b.record.text = f"[00:0{b.record.frame_id}] scene: street; colours: grey"
    frames[0].record.text = '[00:00] scene: street; text: "Kestrel"; colours: grey'
    policy = TieredPolicy()
    for b in frames:
        policy.observe(b.record)
    plan = policy.plan(frames, 35, window_start=6.0, compress_ratio=0.5, host=False)
    # Frames 2 and 4 are demoted (10 tokens), then fuzzy frames 1, 3, 5 leave (30): frame 0 is untouched.
    assert ids(plan.compress) == [2, 4] and ids(plan.evict) == [1, 3, 5]
    plan = policy.plan(frames, 50, window_start=6.0, compress_ratio=0.5, host=False)
    assert 0 not in ids(plan.evict) + ids(plan.compress) and ids(plan.evict) == [1, 3, 5, 2, 4]


def test_a_sign_read_in_several_frames_is_still_rare() -> None:
    # Every frame clear (policy "equal"); frames 20-23 read the same sign, which is 4 frames of 100,
    # while "street" and "grey" are in all of them.
    frames = blocks(100, clear_every=1)
    for b in frames:
        b.record.text = f"[{b.record.frame_id}] scene: street; colours: grey"
    for b in frames[20:24]:
        b.record.text = f'[{b.record.frame_id}] scene: street; text: "Kestrel"; colours: grey'
    policy = TieredPolicy("equal")
    for b in frames:
        policy.observe(b.record)
    plan = policy.plan(frames, 10 * 90, window_start=95.0, compress_ratio=0.5, host=False)
    kept = set(range(95)) - set(ids(plan.evict))
    assert kept & {20, 21, 22, 23}, "one frame that read the sign stays"
    # In a stream of 8 frames the same 4 would be half of it: not rare.
    short = TieredPolicy()
    for b in frames[16:24]:
        short.observe(b.record)
    assert short.rarity(frames[20].record) > short.rare_limit() and policy.rarity(frames[20].record) == 4


def test_word_counts_survive_a_snapshot() -> None:
    policy = TieredPolicy()
    for b in blocks(3):
        policy.observe(b.record)
    restored = TieredPolicy()
    restored.restore(policy.state())
    assert restored.word_frames == policy.word_frames and restored.word_frames["frame"] == 3
    assert restored.frames == policy.frames == 3


def test_curvature_demotes_oldest_clear_frames_first() -> None:
    plan = TieredPolicy().plan(blocks(20, clear_every=2), 10, window_start=15.0, compress_ratio=0.5, host=False)
    assert ids(plan.compress) == [0, 2] and not plan.evict


def test_curvature_drops_fuzzy_frames_before_clear_ones_and_spares_the_window() -> None:
    frames = blocks(20, clear_every=4)
    for b in frames:
        if b.record.tier == "clear":
            b.record.compressed = True  # already demoted: nothing left to compress
    plan = TieredPolicy().plan(frames, 60, window_start=15.0, compress_ratio=0.5, host=False)
    evicted = ids(plan.evict)
    assert len(evicted) == 6 and all(i % 4 for i in evicted) and all(i < 15 for i in evicted)


def test_with_a_host_tier_the_oldest_move_first() -> None:
    frames = blocks(20, clear_every=4)
    for b in frames:
        b.record.compressed = True
    plan = TieredPolicy().plan(frames, 30, window_start=15.0, compress_ratio=0.5, host=True)
    assert ids(plan.evict) == [0, 1, 2]


def test_equal_policy_is_fifo_after_demotion() -> None:
    frames = blocks(20)
    for b in frames:
        b.record.tier = "clear"
        b.record.score = b.record.threshold = 0.0
    plan = make_policy("equal").plan(frames, 10, window_start=15.0, compress_ratio=0.5, host=False)
    assert ids(plan.compress) == [0, 1]
    for b in frames:
        b.record.compressed = True
    plan = make_policy("equal").plan(frames, 20, window_start=15.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [0, 1]


def test_the_window_gives_way_only_when_nothing_else_is_left() -> None:
    frames = blocks(5)
    plan = TieredPolicy().plan(frames, 30, window_start=3.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [0, 1, 2]
    plan = TieredPolicy().plan(frames, 40, window_start=3.0, compress_ratio=0.5, host=False)
    assert ids(plan.evict) == [0, 1, 2, 3]


def test_unknown_policy_and_method_are_named() -> None:
    with pytest.raises(ValueError, match="Unknown memory policy 'lru'"):
        make_policy("lru")
    segment = KVSegment([torch.zeros(1, 1, 4, 8)], [torch.zeros(1, 1, 4, 8)], 0)
    with pytest.raises(ValueError, match="Unknown compression method 'zip'"):
        compress(segment, "zip", 0.5, lambda k, d: k)


def first_layer_keys(model: LlamaForCausalLM, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Layer 0's keys for `ids` placed at `positions`, computed from scratch: (1, kv_heads, n, head_dim)."""
    inner = model.model
    attention = inner.layers[0].self_attn
    with torch.inference_mode():
        hidden = inner.layers[0].input_layernorm(inner.embed_tokens(ids))
        keys = attention.k_proj(hidden).view(1, ids.shape[1], -1, attention.head_dim).transpose(1, 2)
        cos, sin = inner.rotary_emb(keys, positions[None])
        rotated: torch.Tensor = apply_rotary_pos_emb(keys, keys, cos, sin)[0]
    return rotated


@pytest.mark.parametrize("method", ["value_norm", "pool"])
def test_compressed_block_keeps_exact_positions(tiny_llama: LlamaForCausalLM, method: str) -> None:
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(3))
    cache = StreamingCache(tiny_llama.config.num_hidden_layers)
    cache.reserve(30)
    with torch.inference_mode():
        tiny_llama(input_ids=ids, past_key_values=cache, use_cache=True)
    start = 12  # a block of 18 tokens at positions 12..29
    block = cache.segment(start, 30)
    shift = RotaryShift(tiny_llama.model.rotary_emb)
    squeezed, survivors = compress_block(block, method, 0.5, shift)
    assert squeezed.length == compressed_length(18, 0.5) == 9 and squeezed.position == start
    if method == "value_norm":
        norms = sum(v.norm(dim=-1).sum(dim=(0, 1)) for v in block.values)
        kept = sorted(torch.topk(norms, 9).indices.tolist())
        assert survivors == kept, "the kept tokens are named, so they can be read again"
        expected = first_layer_keys(tiny_llama, ids[:, start:][:, kept], torch.arange(start, start + 9))
        torch.testing.assert_close(squeezed.keys[0], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(squeezed.values[1], block.values[1][..., kept, :])
    else:
        # Each pooled key is the mean of its pair's keys, both taken at the pooled token's new position.
        at_new = [
            first_layer_keys(tiny_llama, ids[:, start + 2 * j : start + 2 * j + 2], torch.tensor([start + j] * 2))
            for j in range(9)
        ]
        expected = torch.cat([k.mean(dim=-2, keepdim=True) for k in at_new], dim=-2)
        torch.testing.assert_close(squeezed.keys[0], expected, atol=1e-5, rtol=1e-5)
        assert survivors is None, "pooled tokens stand for no single original token"
