"""Qwen2.5-VL's 3-D multimodal RoPE in the streaming cache, on a tiny random checkpoint.

The family-wide checks (exactness against a plain forward pass, 2x2-pooled terse frames, a streamed
answer) run for Qwen2.5-VL in tests/test_vlm_adapters.py. Here: that the frame positions are the
model's own image layout, that they matter, and that blocks moved with `rotate_keys` are exactly the
blocks computed at their new positions, alone and inside a stream that evicts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data
from test_vlm_adapters import QUESTION, plain_forward_logits

from memory.kv_cache import KVSegment, StreamingCache, assemble
from sources.frame import Frame
from streamer.adapters.tiny import build_qwen2_5_vl
from streamer.adapters.vlm import VisionLanguageAdapter, bgr_to_image
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig
from streamer.rope import mrope_positions


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> VisionLanguageAdapter:
    folder: Path = tmp_path_factory.mktemp("qwen2_5_vl")
    build_qwen2_5_vl(folder)
    return VisionLanguageAdapter.load(str(folder))


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    photos = [data.chelsea(), data.coffee(), data.rocket()]
    now = time.time()
    return [Frame(np.ascontiguousarray(rgb[..., ::-1]), 2.0 * i, now, i) for i, rgb in enumerate(photos)]


def test_frame_positions_are_the_models_own_image_layout(adapter: VisionLanguageAdapter, frames: list[Frame]) -> None:
    frame = frames[0]
    tokens = adapter.frame_tokens(frame)
    assert tokens.positions is not None and tokens.positions.shape == (3, tokens.length)
    before_text, _ = adapter.frame_text(frame.stream_time)
    before = adapter.ids(before_text)
    pixels = adapter.format.pixel_inputs(adapter.image_processor, bgr_to_image(frame.pixels), adapter.model.config)
    merge = adapter.model.config.vision_config.spatial_merge_size
    _, rows, cols = (int(n) // merge for n in pixels["image_grid_thw"][0])
    assert (rows, cols) == (4, 6)
    # The model's own positions for the same text followed by the same image, from position 0.
    image_pad = adapter.model.config.image_token_id
    ids = torch.cat([before, torch.full((1, rows * cols), image_pad)], dim=1)
    kinds = torch.cat([torch.zeros_like(before), torch.ones(1, rows * cols, dtype=before.dtype)], dim=1)
    expected, _ = adapter.model.model.get_rope_index(ids, kinds, image_grid_thw=pixels["image_grid_thw"])
    head = ids.shape[1]
    torch.testing.assert_close(tokens.positions[:, :head], expected[:, 0])
    grid = tokens.positions[:, before.shape[1] : head]
    assert not torch.equal(grid[1], grid[2]), "height and width differ across the grid"
    # After the grid, text resumes at its token index: the block spans exactly its length.
    tail = torch.arange(head, tokens.length)
    torch.testing.assert_close(tokens.positions[:, head:], tail.expand(3, -1))
    terse = adapter.frame_tokens(frame, "terse")
    assert terse.positions is not None
    pooled = (rows + 1) // 2 * ((cols + 1) // 2)
    assert pooled * 4 == rows * cols and terse.length == tokens.length - rows * cols + pooled
    torch.testing.assert_close(
        terse.positions, mrope_positions(terse.length, before.shape[1], (rows + 1) // 2, (cols + 1) // 2)
    )


def test_3d_positions_change_what_the_model_reads(adapter: VisionLanguageAdapter, frames: list[Frame]) -> None:
    tokens = adapter.frame_tokens(frames[0])
    question = adapter.question_embeds(QUESTION)
    as_3d = plain_forward_logits(adapter, [(tokens.embeds, tokens.positions), (question, None)])
    with torch.inference_mode():  # the model's default for input embeddings: 1-D positions
        as_1d = adapter.model(inputs_embeds=torch.cat([tokens.embeds, question], dim=1)).logits[0, -1].float()
    assert (as_3d - as_1d).abs().max() > 1e-3, "the grid's height and width positions reach the logits"


def test_block_moved_with_rotate_keys_equals_block_computed_there(
    adapter: VisionLanguageAdapter, frames: list[Frame]
) -> None:
    tokens = adapter.frame_tokens(frames[1])
    far = 300
    # The frame prefilled alone as if it started at position 300 ...
    computed_far = StreamingCache(adapter.num_layers)
    computed_far.reserve(tokens.length)
    with torch.inference_mode():
        adapter.model.get_decoder()(
            inputs_embeds=tokens.embeds,
            position_ids=adapter.position_ids(far, tokens.length, tokens.positions),
            past_key_values=computed_far,
            use_cache=True,
        )
    far_segment = computed_far.segment(0, tokens.length)
    # ... then moved to position 0 by rotating its keys, against the same frame prefilled at 0.
    moved = assemble([KVSegment(far_segment.keys, far_segment.values, far)], adapter.rotate_keys)
    computed_here = StreamingCache(adapter.num_layers)
    adapter.prefill(tokens.embeds, computed_here, positions=tokens.positions)
    assert not torch.allclose(far_segment.keys[0], computed_here.keys(0), atol=1e-3), "the move is not a no-op"
    for layer in range(adapter.num_layers):
        torch.testing.assert_close(moved.keys(layer), computed_here.keys(layer), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(moved.values(layer), computed_here.values(layer), atol=1e-5, rtol=1e-5)
    question = adapter.question_embeds(QUESTION)
    streamed = adapter.next_token_logits(question, moved)
    plain = plain_forward_logits(adapter, [(tokens.embeds, tokens.positions), (question, None)])
    torch.testing.assert_close(streamed, plain, atol=1e-4, rtol=1e-4)


def test_eviction_moves_the_remaining_frames_exactly(adapter: VisionLanguageAdapter, frames: list[Frame]) -> None:
    sink = adapter.system_embeds().shape[1]
    lengths = [adapter.frame_tokens(frame).length for frame in frames]
    # Room for the last two frames beside the sink and the answer reserve, not for all three.
    budget = 256
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=budget, evict_chunk=1, policy="fifo"),
        answer=AnswerConfig(max_question_tokens=budget - sink - lengths[1] - lengths[2] - 1, max_new_tokens=1),
    )
    engine = Engine(adapter, config)
    engine.add_stream("cam")
    for frame in frames:
        engine.push_frame("cam", frame, "full")
    memory = engine.memory("cam")
    records = memory.records
    assert [r.resident for r in records] == [False, True, True] and memory.evicted_tokens == lengths[0]
    fresh = StreamingCache(adapter.num_layers)
    adapter.prefill(adapter.system_embeds(), fresh)
    for frame in frames[1:]:
        tokens = adapter.frame_tokens(frame)
        adapter.prefill(tokens.embeds, fresh, positions=tokens.positions)
    # Layer 0 sees no other token, so its keys depend only on each token and its 3-D position.
    assert memory.cache.length == fresh.length
    torch.testing.assert_close(memory.cache.keys(0), fresh.keys(0), atol=1e-4, rtol=1e-4)
