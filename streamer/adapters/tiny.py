"""Tiny random checkpoints of the VLM families the adapter reads, saved as a real checkpoint folder.

No VLM weights can be installed everywhere, so each family is built from a small config (2 layers,
64-wide language model, 2-layer SigLIP-style vision tower) with random weights, saved with its tokenizer
(the packaged SmolLM2 one plus the family's special tokens), image processor and chat template. The
folder loads through `streamer --model FOLDER` exactly as a downloaded checkpoint does: the tests run
every command on them, and a user can smoke-test an install (a GPU one included) without a download.
Answers are gibberish; the machinery (tokens, positions, budget, exactness) is what they exercise.

    python scripts/tiny_vlm.py OUT_FOLDER --arch llava-onevision|smolvlm|qwen2.5-vl
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from streamer.llm import resolve_llm

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


# The language model of every tiny family: 2 layers, 64 wide, grouped-query attention.
TINY_TEXT: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)


def tiny_text_config(model_type: str, vocab_size: int) -> dict[str, Any]:
    return dict(model_type=model_type, vocab_size=vocab_size, **TINY_TEXT)


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
    text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
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


# --arch name: (builder, model_type in the saved config.json)
ARCHITECTURES: dict[str, tuple[Callable[[Path], None], str]] = {
    "llava-onevision": (build_llava_onevision, "llava_onevision"),
    "smolvlm": (build_smolvlm, "idefics3"),
    "qwen2.5-vl": (build_qwen2_5_vl, "qwen2_5_vl"),
}


def save_tiny_vlm(folder: Path, arch: str) -> Path:
    """Write a tiny random checkpoint of `arch` (a key of ARCHITECTURES) into `folder`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ARCHITECTURES[arch][0](folder)
    return folder
