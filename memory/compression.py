"""KV-level compression of one frame's block: fewer tokens, positions still exact.

A demoted frame keeps part of what the language model already read instead of being read again:

- "pool": average adjacent pairs of tokens (keys are brought to a common position before the
  average, so the mean is of like with like), halving the block;
- "value_norm": keep the tokens whose values are largest (L2 norm summed over layers and heads),
  in their original order; a token that contributes little to any attention output has a small
  value.

Either way the surviving tokens sit at contiguous positions from the block's position, and each
key is rotated by exactly the distance it moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from memory.kv_cache import KeyRotation, KVSegment
from memory.settings import COMPRESSION_METHODS


def compress(segment: KVSegment, method: str, ratio: float, rotate: KeyRotation) -> KVSegment:
    """`segment` with about `ratio` of its tokens (at least one), by `method`."""
    return compress_block(segment, method, ratio, rotate)[0]


def compress_block(
    segment: KVSegment, method: str, ratio: float, rotate: KeyRotation
) -> tuple[KVSegment, list[int] | None]:
    """`compress`, also returning which of the block's tokens were kept, in order (None when tokens
    were merged, so no original token stands for a kept one)."""
    if method not in COMPRESSION_METHODS:
        raise ValueError(f"Unknown compression method {method!r}: use one of {', '.join(COMPRESSION_METHODS)}.")
    if not 0 < ratio <= 1:
        raise ValueError(f"Compression ratio must be in (0, 1], got {ratio}.")
    keep = compressed_length(segment.length, ratio)
    if keep >= segment.length:
        return segment, list(range(segment.length))
    if method == "pool":
        return _pool(segment, keep, rotate), None
    return _by_value_norm(segment, keep, rotate)


def compressed_length(tokens: int, ratio: float) -> int:
    """Tokens a block of `tokens` keeps when compressed to `ratio`."""
    return min(tokens, max(1, math.ceil(tokens * ratio)))


def _by_value_norm(segment: KVSegment, keep: int, rotate: KeyRotation) -> tuple[KVSegment, list[int]]:
    norms = sum(v.float().norm(dim=-1).sum(dim=(0, 1)) for v in segment.values)
    assert isinstance(norms, torch.Tensor)
    kept = torch.topk(norms, keep).indices.sort().values.tolist()
    keys = _stack(segment.keys)
    moved = [rotate(keys[..., i : i + 1, :], new - i) for new, i in enumerate(kept)]
    index = torch.tensor(kept, device=keys.device)
    values = [v.index_select(-2, index) for v in segment.values]
    return KVSegment(_unstack(torch.cat(moved, dim=-2), len(segment.keys)), values, segment.position), kept


def _pool(segment: KVSegment, keep: int, rotate: KeyRotation) -> KVSegment:
    """Average groups of `group` adjacent tokens; the pooled key sits at the group's new index."""
    group = math.ceil(segment.length / keep)
    keys = _stack(segment.keys)
    # Every key brought to the block's first position, so keys of one group are comparable.
    aligned = torch.cat([rotate(keys[..., i : i + 1, :], -i) for i in range(segment.length)], dim=-2)
    pooled_keys = []
    pooled_values: list[list[torch.Tensor]] = [[] for _ in segment.values]
    for new, start in enumerate(range(0, segment.length, group)):
        end = min(start + group, segment.length)
        pooled_keys.append(rotate(aligned[..., start:end, :].mean(dim=-2, keepdim=True), new))
        for layer, v in enumerate(segment.values):
            pooled_values[layer].append(v[..., start:end, :].mean(dim=-2, keepdim=True))
    keys_out = _unstack(torch.cat(pooled_keys, dim=-2), len(segment.keys))
    return KVSegment(keys_out, [torch.cat(v, dim=-2) for v in pooled_values], segment.position)


def _stack(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """Layers stacked along the batch dimension, so one rotation call serves them all."""
    return torch.cat(list(per_layer), dim=0)


def _unstack(stacked: torch.Tensor, layers: int) -> list[torch.Tensor]:
    return list(stacked.chunk(layers, dim=0))
