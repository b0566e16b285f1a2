"""A tiny random Llama as a model adapter, reading generated frames: engine tests that need no real weights run
in seconds with it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from conftest import make_tiny_llama
from transformers import LlamaForCausalLM

from sources.frame import Frame
from sources.synthetic import render
from streamer.adapters.base import FrameLook, FrameTokens, ModelAdapter

# The per-layer KV geometry of the embedded default (SmolLM2-135M: 3 key/value heads of 64 channels,
# fp32 on CPU), over fewer layers so thousands of frames replay in seconds.
LAYERS = 4
KV_HEADS = 3
HEAD_DIM = 64
FRAME_TOKENS = {"full": 16, "terse": 8}


class SyntheticFrames(ModelAdapter):
    """A tiny random Llama reading generated frames: a frame's tokens are ids drawn from its number.

    Text is read as bytes, one token each. Clear frames take 16 tokens and fuzzy ones 8, like the
    full and terse descriptions of the embedded default.
    """

    system_text = "You watch a live video. Each block below is one frame.\n"
    answer_opening = "\nAnswer:"

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__(model, None, "tiny-llama")
        self.stop_ids = set()  # answers run to their token limit
        self.vocab = int(model.config.vocab_size)

    def ids(self, text: str) -> torch.Tensor:
        return torch.tensor([[byte % self.vocab for byte in text.encode()]])

    def decode(self, token_ids: list[int]) -> str:
        return bytes(token % 256 for token in token_ids).decode(errors="replace")

    def question_text(self, question: str) -> str:
        return f"\nQuestion: {question}{self.answer_opening}"

    def encode(self, frames: Sequence[Frame], looks: Sequence[FrameLook], details: Sequence[str]) -> list[FrameTokens]:
        return [self._tokens(frame, look, detail) for frame, look, detail in zip(frames, looks, details, strict=True)]

    def _tokens(self, frame: Frame, look: FrameLook, detail: str) -> FrameTokens:
        generator = torch.Generator().manual_seed(frame.sequence)
        ids = torch.randint(0, self.vocab, (1, FRAME_TOKENS[detail]), generator=generator)
        return FrameTokens(self.embed_ids(ids), f"frame {frame.sequence}", detail, look.features)


def synthetic_frame(index: int) -> Frame:
    """Frame `index` of a 1 fps stream of a bouncing ball (each second the ball is somewhere new)."""
    return Frame(render("ball", index, 1.0, 64, 48), float(index), 0.0, index)


def tiny_model(**overrides: object) -> LlamaForCausalLM:
    """A random Llama with the embedded default's KV geometry over LAYERS layers."""
    geometry = {
        "num_hidden_layers": LAYERS,
        "hidden_size": KV_HEADS * HEAD_DIM,
        "intermediate_size": 2 * KV_HEADS * HEAD_DIM,
        "num_attention_heads": KV_HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
    }
    return make_tiny_llama(**{**geometry, **overrides})
