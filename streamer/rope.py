"""Exact re-positioning of cached keys under rotary position embeddings (RoPE).

RoPE turns each pair of key channels by an angle proportional to the position, so a key computed at
position p becomes the key at p + delta by one more turn of delta. This is what lets the memory
drop or reorder blocks and keep positions contiguous without recomputing anything.
"""

from __future__ import annotations

from typing import Any

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the Llama/Qwen2 layout)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryShift:
    """Moves 1-D RoPE keys by a position delta, using the model's own rotary embedding module."""

    def __init__(self, rotary_embedding: Any) -> None:
        self.rotary = rotary_embedding
        # Some RoPE variants scale cos/sin for attention; a shift must be a pure rotation.
        self.scaling = float(getattr(rotary_embedding, "attention_scaling", 1.0) or 1.0)

    def __call__(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        """keys: (batch, heads, tokens, head_dim) rotated for positions p; returns them for p + delta."""
        if delta == 0:
            return keys
        position = torch.tensor([[delta]], device=keys.device)
        cos, sin = self.rotary(keys.float(), position_ids=position)  # (1, 1, head_dim) each
        cos = (cos / self.scaling).to(keys.dtype)[:, None]
        sin = (sin / self.scaling).to(keys.dtype)[:, None]
        rotated: torch.Tensor = keys * cos + rotate_half(keys) * sin
        return rotated
