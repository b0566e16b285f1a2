"""The interface between the engine and a model: frames in, KV-cached tokens and answers out.

The engine core never branches on the model. An adapter owns the prompt layout (system prefix,
frame tokens, question suffix), the tokenizer, the vision side and the position scheme.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memory.kv_cache import StreamingCache
from sources.frame import Frame


@dataclass
class FrameTokens:
    """What one frame contributes to the language model's context.

    embeds: (1, tokens, hidden) input embeddings, in the model's dtype and device.
    text: a readable account of the frame (its description), kept in the frame's record.
    features: the cheap per-frame feature vector used for scoring and retrieval, if any.
    text_vector: embedding of `text` for retrieval by question, if the adapter has a text embedder.
    timings_ms: cost of each step that produced the tokens.
    """

    embeds: torch.Tensor
    text: str
    detail: str = "full"
    features: np.ndarray | None = None
    text_vector: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


class ModelAdapter(ABC):
    """A language model plus whatever turns frames into its tokens."""

    model: Any  # a transformers causal LM
    name: str

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    @abstractmethod
    def system_embeds(self) -> torch.Tensor:
        """(1, tokens, hidden): the prompt that opens the context (the attention sink)."""

    @abstractmethod
    def frame_tokens(self, frame: Frame, detail: str = "full") -> FrameTokens:
        """The tokens for one frame; `detail` is "full" or "terse" (cheaper, fewer tokens)."""

    @abstractmethod
    def question_embeds(self, question: str) -> torch.Tensor:
        """(1, tokens, hidden): the question and whatever opens the model's answer."""

    def question_vector(self, question: str) -> np.ndarray | None:
        """Embedding of the question in the space of `FrameTokens.text_vector`, if there is one."""
        return None

    @abstractmethod
    def rotate_keys(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        """Keys (batch, heads, tokens, head_dim) computed at positions p, moved to p + delta."""

    @abstractmethod
    def token_embeds(self, token_id: int) -> torch.Tensor:
        """(1, 1, hidden) embedding of one generated token, to feed it back."""

    @abstractmethod
    def is_stop(self, token_id: int) -> bool:
        """Whether the token ends the answer."""

    @abstractmethod
    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens."""

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, cache: StreamingCache) -> None:
        """Append `embeds` to `cache` (keys and values of every layer); no logits needed."""
        cache.reserve(int(embeds.shape[1]))
        self.model.get_decoder()(inputs_embeds=embeds, past_key_values=cache, use_cache=True)

    @torch.inference_mode()
    def next_token_logits(self, embeds: torch.Tensor, cache: StreamingCache) -> torch.Tensor:
        """Append `embeds` to `cache` and return the logits (vocab,) for the token that follows."""
        cache.reserve(int(embeds.shape[1]))
        out = self.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits: torch.Tensor = out.logits[0, -1].float()
        return logits
