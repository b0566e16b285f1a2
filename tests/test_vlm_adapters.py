"""The transformers VLM adapter on tiny random SmolVLM (Idefics3), LLaVA-OneVision and Qwen2.5-VL checkpoints.

No VLM weights can be installed here, so each architecture is built from a small config with random
weights, saved with its tokenizer (the packaged SmolLM2 one plus the family's special tokens), image
processor and chat template, and loaded back by path through the adapter: the same code that loads
a real checkpoint. Answers are gibberish; what is checked is exactness and shapes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from engine_probes import first_token_logits
from skimage import data

from sources.frame import Frame
from streamer.adapters.tiny import build_llava_onevision, build_qwen2_5_vl, build_smolvlm
from streamer.adapters.vlm import VisionLanguageAdapter, bgr_to_image
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig, RetrievalConfig
from streamer.errors import UserError
from streamer.llm import resolve_llm

QUESTION = "What is in the video?"

# family: (builder, (rows, cols) of the first frame's vision grid, vision tokens after the grid)
FAMILIES = {
    "smolvlm": (build_smolvlm, (6, 6), 0),
    "llava_onevision": (build_llava_onevision, (7, 7), 1),
    "qwen2_5_vl": (build_qwen2_5_vl, (4, 6), 0),
}


def plain_forward_logits(
    adapter: VisionLanguageAdapter, pieces: list[tuple[torch.Tensor, torch.Tensor | None]]
) -> torch.Tensor:
    """Next-token logits (vocab,) of one forward pass, no cache, over `pieces` laid end to end from position 0.

    Each piece is (embeds, relative positions or None) and sits at the positions the adapter gives it.
    """
    ids, start = [], 0
    for embeds, offsets in pieces:
        ids.append(adapter.position_ids(start, embeds.shape[1], offsets))
        start += embeds.shape[1]
    position_ids = None if ids[0] is None else torch.cat(ids, dim=-1)
    with torch.inference_mode():
        out = adapter.model(inputs_embeds=torch.cat([embeds for embeds, _ in pieces], dim=1), position_ids=position_ids)
    logits: torch.Tensor = out.logits[0, -1].float()
    return logits


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, VisionLanguageAdapter]:
    name = str(request.param)
    folder = tmp_path_factory.mktemp(name)
    FAMILIES[name][0](folder)
    return name, VisionLanguageAdapter.load(str(folder))


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    now = time.time()
    return [Frame(np.ascontiguousarray(rgb[..., ::-1]), 1.5 * i, now, i) for i, rgb in enumerate(photos)]


def test_streaming_cache_equals_full_forward(family: tuple[str, VisionLanguageAdapter], frames: list[Frame]) -> None:
    _, adapter = family
    engine = Engine(adapter, EngineConfig(memory=MemoryConfig(budget_tokens=4096), retrieval=RetrievalConfig(top_k=0)))
    engine.add_stream("cam")
    details = ["terse" if i == 1 else "full" for i in range(len(frames))]
    for frame, detail in zip(frames, details, strict=True):
        engine.push_frame("cam", frame, detail)
    records = engine.memory("cam").records
    assert all(r.resident for r in records) and engine.memory("cam").evicted_tokens == 0
    streamed = first_token_logits(engine, "cam", QUESTION)
    pieces = [
        (adapter.system_embeds(), None),
        *((tokens.embeds, tokens.positions) for tokens in map(adapter.frame_tokens, frames, details)),
        (adapter.question_embeds(QUESTION), None),
    ]
    plain = plain_forward_logits(adapter, pieces)
    assert streamed.dtype == torch.float32 and streamed.std() > 0
    torch.testing.assert_close(streamed, plain, atol=1e-4, rtol=1e-4)
    assert int(streamed.argmax()) == int(plain.argmax())


def test_terse_frames_pool_vision_tokens_over_2x2_cells(
    family: tuple[str, VisionLanguageAdapter], frames: list[Frame]
) -> None:
    name, adapter = family
    _, (rows, cols), after_grid = FAMILIES[name]
    full, terse = adapter.frame_tokens(frames[0], "full"), adapter.frame_tokens(frames[0], "terse")
    before, after = (adapter.ids(text).shape[1] for text in adapter.frame_text(frames[0].stream_time))
    assert full.length == before + rows * cols + after_grid + after
    assert terse.length == before + ((rows + 1) // 2) * ((cols + 1) // 2) + after_grid + after
    assert terse.detail == "terse" and terse.features is not None
    hidden = full.embeds.shape[-1]
    grid = full.embeds[0, before : before + rows * cols].reshape(rows, cols, hidden)
    first_cell = terse.embeds[0, before]
    torch.testing.assert_close(first_cell, grid[:2, :2].reshape(4, hidden).mean(0), atol=1e-5, rtol=1e-5)


def test_frames_encoded_together_equal_frames_encoded_alone(
    family: tuple[str, VisionLanguageAdapter], frames: list[Frame]
) -> None:
    """Several streams' frames in one vision pass (the ingest scheduler's batch on a GPU): each frame's tokens
    and positions are what it gets alone, whether its size matches the others' or not."""
    _, adapter = family
    same_size = [Frame(frames[0].pixels[:, ::-1].copy(), 9.0 + i, frames[0].capture_time, 10 + i) for i in range(2)]
    batch = [*frames, *same_size]
    details = ["terse" if i % 2 else "full" for i in range(len(batch))]
    looks = adapter.look(batch)
    together = adapter.encode(batch, looks, details)
    groups = adapter.format.join([adapter.format.pixel_inputs(adapter.image_processor, bgr_to_image(f.pixels),
                                                              adapter.model.config) for f in batch])  # fmt: skip
    assert any(len(indices) >= 3 for indices, _ in groups), "equal sizes share a pass"
    for frame, look, detail, joint in zip(batch, looks, details, together, strict=True):
        (alone,) = adapter.encode([frame], [look], [detail])
        assert joint.detail == detail and joint.text == alone.text
        torch.testing.assert_close(joint.embeds, alone.embeds, atol=1e-5, rtol=1e-4)
        if alone.positions is None:
            assert joint.positions is None
        else:
            assert torch.equal(joint.positions, alone.positions)
    assert adapter.frame_batch == 1, "on a CPU frames are encoded one at a time"
    assert Engine(adapter).scheduler().max_batch == adapter.frame_batch


def test_answer_streams_text(family: tuple[str, VisionLanguageAdapter], frames: list[Frame]) -> None:
    _, adapter = family
    engine = Engine(adapter, EngineConfig(answer=AnswerConfig(max_new_tokens=8)))
    engine.add_stream("cam")
    for frame in frames[:2]:
        engine.push_frame("cam", frame)
    deltas: list[str] = []
    answer = engine.ask("cam", QUESTION).result(deltas.append)
    assert deltas, "the answer arrives as text deltas"
    assert "".join(deltas).strip() == answer.text
    assert 0 < answer.tokens <= 8 and answer.as_of == frames[1].stream_time


def test_a_text_only_model_is_refused_in_one_sentence() -> None:
    with pytest.raises(UserError, match="reads only idefics3, llava_onevision, qwen2_5_vl"):
        VisionLanguageAdapter.load(str(resolve_llm()))
