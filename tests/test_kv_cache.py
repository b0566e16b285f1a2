"""The streaming KV cache: chunked prefill, forks, copy-on-write, exact removal and gathering."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memory.kv_cache import StreamingCache, assemble
from streamer.rope import RotaryShift


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config).eval()


def prefill(model: LlamaForCausalLM, cache: StreamingCache, ids: torch.Tensor) -> torch.Tensor:
    cache.reserve(ids.shape[1])
    with torch.inference_mode():
        return model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]


def full_logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1]


def tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def test_chunked_prefill_equals_one_forward(model: LlamaForCausalLM) -> None:
    ids = tokens(300)
    cache = StreamingCache(3)
    for start in range(0, 300, 37):
        logits = prefill(model, cache, ids[:, start : start + 37])
    assert cache.length == 300
    torch.testing.assert_close(logits, full_logits(model, ids), atol=1e-5, rtol=1e-5)


def test_fork_appends_in_place_and_leaves_parent_untouched(model: LlamaForCausalLM) -> None:
    ids = tokens(120)
    parent = StreamingCache(3)
    prefill(model, parent, ids[:, :100])
    store = parent.store
    fork = parent.fork()
    logits = prefill(model, fork, ids[:, 100:])
    assert fork.store is store, "a fork of an idle cache writes into the shared store without copying"
    assert parent.length == 100 and fork.length == 120
    torch.testing.assert_close(logits, full_logits(model, ids), atol=1e-5, rtol=1e-5)
    fork.close()
    prefill(model, parent, ids[:, 100:110])
    assert parent.store is store, "after the fork closes the parent appends in place again"


def test_parent_appending_while_fork_is_open_copies_first(model: LlamaForCausalLM) -> None:
    history, question, more = tokens(80, 2), tokens(10, 3), tokens(30, 4)
    parent = StreamingCache(3)
    prefill(model, parent, history)
    fork = parent.fork()
    prefill(model, fork, question)
    prefill(model, parent, more)  # ingest goes on while the question is being answered
    assert parent.store is not fork.store
    # The fork still sees history + question; the parent sees history + more.
    next_token = tokens(1, 5)
    torch.testing.assert_close(
        prefill(model, fork, next_token), full_logits(model, torch.cat([history, question, next_token], 1))
    )
    torch.testing.assert_close(
        prefill(model, parent, next_token), full_logits(model, torch.cat([history, more, next_token], 1))
    )


def test_two_open_forks_do_not_overwrite_each_other(model: LlamaForCausalLM) -> None:
    history, first, second = tokens(50, 6), tokens(8, 7), tokens(8, 8)
    parent = StreamingCache(3)
    prefill(model, parent, history)
    fork_a = parent.fork()
    prefill(model, fork_a, first)
    fork_b = parent.fork()
    prefill(model, fork_b, second)
    tail = tokens(1, 9)
    torch.testing.assert_close(prefill(model, fork_a, tail), full_logits(model, torch.cat([history, first, tail], 1)))
    torch.testing.assert_close(prefill(model, fork_b, tail), full_logits(model, torch.cat([history, second, tail], 1)))


def test_rotary_shift_equals_keys_computed_at_new_positions(model: LlamaForCausalLM) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rotary = model.model.rotary_emb
    shift = RotaryShift(rotary)
    raw_q = torch.randn(1, 4, 6, 16)
    raw_k = torch.randn(1, 2, 6, 16)
    old = torch.arange(500, 506)[None]
    new = torch.arange(40, 46)[None]

    def rotate(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rotary(q, position_ids=positions)
        return apply_rotary_pos_emb(q, k, cos, sin)

    _, keys_old = rotate(raw_q, raw_k, old)
    queries_new, keys_new = rotate(raw_q, raw_k, new)
    moved = shift(keys_old, 40 - 500)
    torch.testing.assert_close(moved, keys_new, atol=5e-5, rtol=1e-4)  # fp32 angles near 500 rad
    values = torch.randn(1, 2, 6, 16)
    expand = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731  (grouped-query heads)
    attention_moved = torch.nn.functional.scaled_dot_product_attention(queries_new, expand(moved), expand(values))
    attention_fresh = torch.nn.functional.scaled_dot_product_attention(queries_new, expand(keys_new), expand(values))
    torch.testing.assert_close(attention_moved, attention_fresh, atol=1e-5, rtol=1e-5)


def test_remove_keeps_positions_contiguous_and_exact(model: LlamaForCausalLM) -> None:
    ids = tokens(90, 10)
    cache = StreamingCache(3)
    prefill(model, cache, ids)
    cache.remove(10, 30, RotaryShift(model.model.rotary_emb))
    assert cache.length == 60
    kept = torch.cat([ids[:, :10], ids[:, 40:]], 1)
    fresh = StreamingCache(3)
    prefill(model, fresh, kept)
    # Layer 0 sees no context, so its keys depend only on token and position: they must match exactly.
    torch.testing.assert_close(cache.keys(0), fresh.keys(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.values(0), fresh.values(0))


def test_gather_builds_contiguous_context_without_touching_source(model: LlamaForCausalLM) -> None:
    ids = tokens(100, 11)
    cache = StreamingCache(3)
    prefill(model, cache, ids)
    before = cache.keys(2).clone()
    spans = [cache.segment(0, 10), cache.segment(50, 60), cache.segment(90, 100)]
    gathered = assemble(spans, RotaryShift(model.model.rotary_emb))
    assert gathered.length == 30
    fresh = StreamingCache(3)
    prefill(model, fresh, torch.cat([ids[:, :10], ids[:, 50:60], ids[:, 90:]], 1))
    torch.testing.assert_close(gathered.keys(0), fresh.keys(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.keys(2), before)
    logits = prefill(model, gathered, tokens(3, 12))  # a gathered context accepts new tokens
    assert torch.isfinite(logits).all()
