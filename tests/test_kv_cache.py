"""The streaming KV cache: chunked prefill, forks, copy-on-write, exact removal and gathering."""

from __future__ import annotations

import gc
import weakref

import torch
from transformers import LlamaForCausalLM

from memory.kv_cache import StreamingCache, assemble
from streamer.rope import RotaryShift


def prefill(model: LlamaForCausalLM, cache: StreamingCache, ids: torch.Tensor) -> torch.Tensor:
    cache.reserve(ids.shape[1])
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]
    return logits


def full_logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=ids).logits[0, -1]
    return logits


def tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def test_chunked_prefill_equals_one_forward(tiny_llama: LlamaForCausalLM) -> None:
    ids = tokens(300)
    cache = StreamingCache(tiny_llama.config.num_hidden_layers)
    for start in range(0, 300, 37):
        logits = prefill(tiny_llama, cache, ids[:, start : start + 37])
    assert cache.length == 300
    torch.testing.assert_close(logits, full_logits(tiny_llama, ids), atol=1e-5, rtol=1e-5)


def test_fork_appends_in_place_and_leaves_parent_untouched(tiny_llama: LlamaForCausalLM) -> None:
    ids = tokens(120)
    parent = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, parent, ids[:, :100])
    store = parent.store
    fork = parent.fork()
    logits = prefill(tiny_llama, fork, ids[:, 100:])
    assert fork.store is store, "a fork of an idle cache writes into the shared store without copying"
    assert parent.length == 100 and fork.length == 120
    torch.testing.assert_close(logits, full_logits(tiny_llama, ids), atol=1e-5, rtol=1e-5)
    fork.close()
    prefill(tiny_llama, parent, ids[:, 100:110])
    assert parent.store is store, "after the fork closes the parent appends in place again"


def test_parent_appending_while_fork_is_open_copies_first(tiny_llama: LlamaForCausalLM) -> None:
    history, question, more = tokens(80, 2), tokens(10, 3), tokens(30, 4)
    parent = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, parent, history)
    fork = parent.fork()
    prefill(tiny_llama, fork, question)
    prefill(tiny_llama, parent, more)  # ingest goes on while the question is being answered
    assert parent.store is not fork.store
    # The fork still sees history + question; the parent sees history + more.
    next_token = tokens(1, 5)
    torch.testing.assert_close(
        prefill(tiny_llama, fork, next_token), full_logits(tiny_llama, torch.cat([history, question, next_token], 1))
    )
    torch.testing.assert_close(
        prefill(tiny_llama, parent, next_token), full_logits(tiny_llama, torch.cat([history, more, next_token], 1))
    )


def test_a_copy_has_room_for_twice_the_tokens_unless_capped(tiny_llama: LlamaForCausalLM) -> None:
    rooms = []
    for most in (0, 150):
        parent = StreamingCache(tiny_llama.config.num_hidden_layers)
        parent.most_tokens = most
        prefill(tiny_llama, parent, tokens(300, 2))
        fork = parent.fork()  # a question holds the tail: the next append copies
        prefill(tiny_llama, parent, tokens(10, 3))
        assert parent.store is not fork.store and parent.length == 310
        assert parent.store is not None
        rooms.append(parent.store.capacity)
    assert rooms == [600, 310 + 256]  # twice the 300 held; capped: what the append needs and 256 more


def test_two_open_forks_do_not_overwrite_each_other(tiny_llama: LlamaForCausalLM) -> None:
    history, first, second = tokens(50, 6), tokens(8, 7), tokens(8, 8)
    parent = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, parent, history)
    fork_a = parent.fork()
    prefill(tiny_llama, fork_a, first)
    fork_b = parent.fork()
    prefill(tiny_llama, fork_b, second)
    tail = tokens(1, 9)
    torch.testing.assert_close(
        prefill(tiny_llama, fork_a, tail), full_logits(tiny_llama, torch.cat([history, first, tail], 1))
    )
    torch.testing.assert_close(
        prefill(tiny_llama, fork_b, tail), full_logits(tiny_llama, torch.cat([history, second, tail], 1))
    )


def test_rotary_shift_equals_keys_computed_at_new_positions(tiny_llama: LlamaForCausalLM) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rotary = tiny_llama.model.rotary_emb
    shift = RotaryShift(rotary)
    raw_q = torch.randn(1, 4, 6, 16)
    raw_k = torch.randn(1, 2, 6, 16)
    old = torch.arange(500, 506)[None]
    new = torch.arange(40, 46)[None]

    def rotate(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rotary(q, position_ids=positions)
        rotated: tuple[torch.Tensor, torch.Tensor] = apply_rotary_pos_emb(q, k, cos, sin)
        return rotated

    _, keys_old = rotate(raw_q, raw_k, old)
    queries_new, keys_new = rotate(raw_q, raw_k, new)
    moved = shift(keys_old, 40 - 500)
    torch.testing.assert_close(moved, keys_new, atol=5e-5, rtol=1e-4)  # fp32 angles near 500 rad
    values = torch.randn(1, 2, 6, 16)
    expand = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731  (grouped-query heads)
    attention_moved = torch.nn.functional.scaled_dot_product_attention(queries_new, expand(moved), expand(values))
    attention_fresh = torch.nn.functional.scaled_dot_product_attention(queries_new, expand(keys_new), expand(values))
    torch.testing.assert_close(attention_moved, attention_fresh, atol=1e-5, rtol=1e-5)


def test_remove_keeps_positions_contiguous_and_exact(tiny_llama: LlamaForCausalLM) -> None:
    ids = tokens(90, 10)
    cache = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, cache, ids)
    cache.remove(10, 30, RotaryShift(tiny_llama.model.rotary_emb))
    assert cache.length == 60
    kept = torch.cat([ids[:, :10], ids[:, 40:]], 1)
    fresh = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, fresh, kept)
    # Layer 0 sees no context, so its keys depend only on token and position: they must match exactly.
    torch.testing.assert_close(cache.keys(0), fresh.keys(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.values(0), fresh.values(0))


def test_gather_builds_contiguous_context_without_touching_source(tiny_llama: LlamaForCausalLM) -> None:
    ids = tokens(100, 11)
    cache = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, cache, ids)
    before = cache.keys(2).clone()
    spans = [cache.segment(0, 10), cache.segment(50, 60), cache.segment(90, 100)]
    gathered = assemble(spans, RotaryShift(tiny_llama.model.rotary_emb))
    assert gathered.length == 30
    fresh = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, fresh, torch.cat([ids[:, :10], ids[:, 50:60], ids[:, 90:]], 1))
    torch.testing.assert_close(gathered.keys(0), fresh.keys(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.keys(2), before)
    logits = prefill(tiny_llama, gathered, tokens(3, 12))  # a gathered context accepts new tokens
    assert torch.isfinite(logits).all()


def test_append_moves_a_segment_to_the_end_exactly(tiny_llama: LlamaForCausalLM) -> None:
    ids = tokens(40, 13)
    cache = StreamingCache(tiny_llama.config.num_hidden_layers)
    prefill(tiny_llama, cache, ids)
    shift = RotaryShift(tiny_llama.model.rotary_emb)
    head = assemble([cache.segment(0, 10)], shift)
    head.append(cache.segment(25, 40), shift)
    expected = assemble([cache.segment(0, 10), cache.segment(25, 40)], shift)
    assert head.length == expected.length == 25
    for layer in range(cache.num_layers):
        torch.testing.assert_close(head.keys(layer), expected.keys(layer), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(head.values(layer), expected.values(layer))
    empty = StreamingCache(tiny_llama.config.num_hidden_layers)
    empty.append(cache.segment(25, 40), shift)  # an empty cache takes the segment at position 0
    torch.testing.assert_close(empty.keys(0), assemble([cache.segment(25, 40)], shift).keys(0), atol=1e-6, rtol=1e-6)


def test_a_dropped_cache_frees_its_keys_and_values_at_once(tiny_llama: LlamaForCausalLM) -> None:
    """No reference cycle holds a cache's store: dropped, it goes at once, not whenever the cyclic garbage
    collector next runs (in a long-running server, rarely: gigabytes of dropped caches piled up)."""
    from streamer.decoding import BatchedCache

    gc.collect()
    gc.disable()
    try:
        cache = StreamingCache(tiny_llama.config.num_hidden_layers)
        ids = torch.arange(12)[None]
        with torch.no_grad():
            tiny_llama(input_ids=ids, past_key_values=cache, use_cache=True)
        fork = cache.fork()
        with torch.no_grad():
            fork.reserve(3)
            tiny_llama(input_ids=ids[:, :3], past_key_values=fork, use_cache=True)
        fork.close()
        batch = BatchedCache(cache, 2, 64)
        assert cache.store is not None
        stored, batched = weakref.ref(cache.store.keys[0]), weakref.ref(batch.keys[0])
        del cache, fork, batch
        assert stored() is None and batched() is None
    finally:
        gc.enable()
