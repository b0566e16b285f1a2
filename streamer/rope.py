"""Exact re-positioning of cached keys under rotary position embeddings (RoPE and M-RoPE).

RoPE turns each pair of key channels by an angle proportional to the position, so a key computed at
position p becomes the key at p + delta by one more turn of delta. This is what lets the memory
drop or reorder blocks and keep positions contiguous without recomputing anything.

Multimodal RoPE (M-RoPE, Qwen2-VL / Qwen2.5-VL) gives each token three positions, temporal, height
and width, and splits the channel pairs into three sections, each turned by its own position. Our
position scheme for it (`mrope_positions`) places every token of a block relative to the block's
first position in *all three* sections, so moving a block by delta adds delta to every section.
Every channel pair then turns by delta times its frequency, whichever section it belongs to: the
same rotation as 1-D RoPE by delta, so `RotaryShift` serves both.
"""

from __future__ import annotations

from typing import Any

import torch

MROPE_SECTIONS = 3  # temporal, height, width


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the Llama/Qwen2 layout)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryShift:
    """Moves RoPE keys by a position delta, using the model's own rotary embedding module.

    For an M-RoPE module the delta is given to all three sections at once (see the module docstring).
    """

    def __init__(self, rotary_embedding: Any) -> None:
        self.rotary = rotary_embedding
        # Some RoPE variants scale cos/sin for attention; a shift must be a pure rotation.
        self.scaling = float(getattr(rotary_embedding, "attention_scaling", 1.0) or 1.0)
        # cos/sin of the last per-token delta tensor: a cache assembled layer by layer rotates every
        # layer by the same deltas, and the angles are the costly part of a small rotation.
        self._last: tuple[torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, keys: torch.Tensor, delta: int | torch.Tensor) -> torch.Tensor:
        """keys: (batch, heads, tokens, head_dim) rotated for positions p; returns them for p + delta.

        delta: one shift for every token, or a (tokens,) integer tensor with a shift per token.
        """
        if isinstance(delta, int):
            if delta == 0:
                return keys
            cos, sin = self._angles(torch.tensor([delta], device=keys.device), keys.dtype)
        else:
            cos, sin = self._angles(delta, keys.dtype)
        rotated: torch.Tensor = keys * cos + rotate_half(keys) * sin
        return rotated

    def _angles(self, deltas: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 1, tokens, head_dim) cos and sin turning each token by its delta."""
        last = self._last  # one read: another thread may replace it meanwhile
        if last is not None and last[0] is deltas and last[1] == dtype:
            return last[2], last[3]
        position = deltas.reshape(1, -1)  # an M-RoPE module expands it to every section
        probe = torch.zeros(1, dtype=torch.float32, device=deltas.device)
        cos, sin = self.rotary(probe, position_ids=position)  # (1, tokens, head_dim) each
        cos = (cos / self.scaling).to(dtype)[:, None]
        sin = (sin / self.scaling).to(dtype)[:, None]
        self._last = (deltas, dtype, cos, sin)
        return cos, sin


def mrope_positions(length: int, grid_start: int = 0, rows: int = 0, cols: int = 0) -> torch.Tensor:
    """(3, length) temporal/height/width positions of a block's tokens, relative to its first position.

    Token i sits at i in every section, except the `rows` x `cols` vision grid (row-major, from token
    `grid_start`): all its tokens share the temporal position `grid_start`, and the token at
    (row, col) has height `grid_start + row` and width `grid_start + col`. That is Qwen2.5-VL's own
    layout for an image whose first token is at `grid_start`; unlike the model's default, the text
    after the grid resumes at its token index, so a block spans exactly as many positions as it has
    tokens and the blocks of a contiguous cache never overlap.
    """
    positions = torch.arange(length).repeat(MROPE_SECTIONS, 1)
    if rows * cols:
        row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        grid = slice(grid_start, grid_start + rows * cols)
        positions[0, grid] = grid_start
        positions[1, grid] = grid_start + row.flatten()
        positions[2, grid] = grid_start + col.flatten()
    return positions
