"""The transformers VLM adapter on tiny random SmolVLM (Idefics3), LLaVA-OneVision and Qwen2.5-VL checkpoints.

No VLM weights can be installed here, so each architecture is built from a small config with random
weights, saved with its tokenizer (the packaged SmolLM2 one plus the family's special tokens), image
processor and chat template, and loaded back by path through the adapter: the same code that loads
a real checkpoint. Answers are gibberish; what is checked is exactness and shapes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage import data

from sources.frame import Frame
from streamer.adapters.vlm import VisionLanguageAdapter
from streamer.engine import Engine, EngineConfig
from streamer.errors import UserError
from streamer.llm import resolve_llm
from streamer.query import drain

QUESTION = "What is in the video?"

SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_text_config(model_type: str, vocab_size: int) -> dict[str, Any]:
    return dict(
        model_type=model_type,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )


def tiny_vision_config(image_size: int, **extra: Any) -> dict[str, Any]:
    """A 2-layer SigLIP tower over 8x8-pixel patches."""
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        **extra,
    )


def build_smolvlm(folder: Path) -> None:
    """A 6x6-token-per-frame Idefics3 (research/models.md, Appendix B), saved with its processor."""
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm())
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]}
    )
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 96}, max_image_size={"longest_edge": 96}
    )
    processor = Idefics3Processor(images, tokenizer, image_seq_len=36, chat_template=SMOLVLM_TEMPLATE)
    config = Idefics3Config(
        vision_config=tiny_vision_config(96),
        text_config=tiny_text_config("llama", len(tokenizer)),
        scale_factor=2,
        image_token_id=tokenizer.get_vocab()["<image>"],
    )
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def build_llava_onevision(folder: Path) -> None:
    """A 7x7-token-per-frame LLaVA-OneVision (Qwen2 LM, SigLIP tower).

    Its processor class cannot be built without torchvision (for the video processor), so the
    tokenizer, image processor and chat template are saved one by one, as a checkpoint holds them.
    """
    from transformers import (
        AutoTokenizer,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm())  # Qwen2's tokenizer is not installable here
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    tokenizer.chat_template = LLAVA_OV_TEMPLATE
    pinpoints = [[112, 112], [112, 224], [224, 112], [224, 224]]
    images = LlavaOnevisionImageProcessorPil(
        size={"height": 112, "width": 112}, image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    config = LlavaOnevisionConfig(
        vision_config=tiny_vision_config(112, model_type="siglip_vision_model"),
        text_config=tiny_text_config("qwen2", len(tokenizer)),
        image_token_index=tokenizer.get_vocab()["<image>"],
        video_token_index=tokenizer.get_vocab()["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    torch.manual_seed(0)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    images.save_pretrained(folder)


def build_qwen2_5_vl(folder: Path) -> None:
    """A Qwen2.5-VL with M-RoPE over (temporal, height, width) sections of 2, 3 and 3 channel pairs.

    Its 2-layer vision tower has one windowed and one full-attention layer; the image processor
    caps frames at 140x140 pixels, so the first test photo (451x300) becomes 6x4 merged tokens.
    """
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm())  # Qwen2.5's tokenizer is not installable here
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = QWEN_VL_TEMPLATE
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=140 * 140)
    vocab = tokenizer.get_vocab()
    text = tiny_text_config("qwen2_5_vl_text", len(tokenizer))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=56,  # windows of 2x2 merged tokens
            fullatt_block_indexes=[1],
        ),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    images.save_pretrained(folder)


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
    engine = Engine(adapter, EngineConfig(budget_tokens=4096, retrieval_top_k=0))
    engine.add_stream("cam")
    details = ["terse" if i == 1 else "full" for i in range(len(frames))]
    records = [engine.push_frame("cam", frame, detail) for frame, detail in zip(frames, details, strict=True)]
    assert all(r.resident for r in records) and engine.stream("cam").memory.evicted_tokens == 0
    streamed = engine.first_token_logits("cam", QUESTION)
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


def test_answer_streams_text(family: tuple[str, VisionLanguageAdapter], frames: list[Frame]) -> None:
    _, adapter = family
    engine = Engine(adapter, EngineConfig(max_new_tokens=8))
    engine.add_stream("cam")
    for frame in frames[:2]:
        engine.push_frame("cam", frame)
    deltas: list[str] = []
    answer = drain(engine.ask("cam", QUESTION), deltas.append)
    assert deltas, "the answer arrives as text deltas"
    assert "".join(deltas).strip() == answer.text
    assert 0 < answer.tokens <= 8 and answer.as_of == frames[1].stream_time


def test_a_text_only_model_is_refused_in_one_sentence() -> None:
    with pytest.raises(UserError, match="reads only idefics3, llava_onevision, qwen2_5_vl"):
        VisionLanguageAdapter.load(str(resolve_llm()))
