"""The language model's KV cache for one stream, owned by us rather than by the library.

The cache keeps every layer's keys and values in one pre-allocated store with spare capacity, so
appending a frame costs the frame, not the whole history. Questions are answered on a *fork*: a
second cache that shares the store read-only up to the fork point and writes its question and
answer tokens after it. The rule that makes sharing safe: tokens below a cache's length are never
modified in place. Whoever appends while another cache owns the tail copies the store first, and
eviction always builds a new store. So an answer sees a consistent snapshot while ingest goes on.

Tensor shapes: keys and values are (batch, kv_heads, tokens, head_dim), batch = 1.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# A function that moves keys rotated for positions p to positions p + delta (the model's RoPE).
KeyRotation = Callable[[torch.Tensor, int | torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KVSegment:
    """A run of tokens' keys and values, one tensor per layer, keys rotated for `position` onward."""

    keys: Sequence[torch.Tensor]
    values: Sequence[torch.Tensor]
    position: int

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2])


def assemble(segments: Sequence[KVSegment], rotate: KeyRotation, device: torch.device | None = None) -> StreamingCache:
    """A new cache holding `segments` in order at contiguous positions from 0.

    Each segment's keys are re-rotated from where they were computed to where they land; segments
    may live on the host, and are only read.
    """
    total = sum(segment.length for segment in segments)
    first = segments[0].keys
    device = device or first[0].device
    store = KVStore.allocate([k.to(device) if k.device != device else k for k in first], total + 256)
    # Every layer moves each token by the same delta: one per-token delta tensor, one rotation per layer.
    starts = [0]
    for segment in segments[:-1]:
        starts.append(starts[-1] + segment.length)
    deltas = torch.cat(
        [torch.full((s.length,), at - s.position, dtype=torch.long) for s, at in zip(segments, starts, strict=True)]
    ).to(device)
    moved = bool(deltas.any())
    for layer in range(len(first)):
        keys = torch.cat([s.keys[layer].to(device, non_blocking=True) for s in segments], dim=-2)
        values = torch.cat([s.values[layer].to(device, non_blocking=True) for s in segments], dim=-2)
        store.keys[layer][..., :total, :] = rotate(keys, deltas) if moved else keys
        store.values[layer][..., :total, :] = values
    store.written = total
    return StreamingCache(len(first), store, total)


class KVStore:
    """Keys and values of every layer with room to grow; shared between a cache and its forks."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys = keys
        self.values = values
        self._owner: weakref.ref[object] | None = None
        self.written = 0  # tokens [0, written) hold data some cache may still read

    @property
    def owner(self) -> object | None:
        """The cache allowed to write past its length in place (None: none, or it is gone).

        Held weakly: a cache holds its store, and a store that held its cache back would keep both, and
        all their keys and values, alive until the cyclic garbage collector happened to run, which in a
        long-running server is rare enough for gigabytes of dropped caches to pile up."""
        return self._owner() if self._owner is not None else None

    @owner.setter
    def owner(self, cache: object | None) -> None:
        self._owner = weakref.ref(cache) if cache is not None else None

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[-2] if self.keys else 0

    @classmethod
    def allocate(cls, like: Sequence[torch.Tensor], capacity: int) -> KVStore:
        """An empty store shaped like the per-layer tensors in `like`, holding `capacity` tokens."""
        keys = [_empty_like(t, capacity) for t in like]
        values = [_empty_like(t, capacity) for t in like]
        return cls(keys, values)


def _empty_like(t: torch.Tensor, capacity: int) -> torch.Tensor:
    batch, heads, _, dim = t.shape
    return torch.empty(batch, heads, capacity, dim, dtype=t.dtype, device=t.device)


class StreamingLayer(CacheLayerMixin):
    """One layer's view of the shared store: the first `length` tokens are this cache's."""

    is_croppable = True
    is_sliding = False

    def __init__(self, cache: StreamingCache, index: int) -> None:
        super().__init__()
        self._cache = weakref.ref(cache)  # weak: see KVStore.owner
        self.index = index
        self.length = 0

    @property
    def cache(self) -> StreamingCache:
        cache = self._cache()
        assert cache is not None, "a cache layer outlived its cache"
        return cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if self.cache.store is None:
            self.cache.allocate_first(key_states)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        store = self.cache.store
        assert store is not None and store.owner is self.cache, "reserve() must precede a forward pass"
        new = key_states.shape[-2]
        end = self.length + new
        if end > store.capacity:
            raise RuntimeError(f"KV store overflow: {end} > {store.capacity}; reserve() was too small")
        store.keys[self.index][..., self.length : end, :] = key_states
        store.values[self.index][..., self.length : end, :] = value_states
        self.length = end
        store.written = max(store.written, end)
        return store.keys[self.index][..., :end, :], store.values[self.index][..., :end, :]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0


class StreamingCache(Cache):
    """A `transformers` cache over a shared, growable `KVStore` (see the module docstring)."""

    def __init__(self, num_layers: int, store: KVStore | None = None, length: int = 0) -> None:
        layers = [StreamingLayer(self, i) for i in range(num_layers)]
        super().__init__(layers=list(layers))
        self.stream_layers = layers
        self.store = store
        self._first_capacity = 256
        self.base_length = length  # tokens inherited from the cache this one was forked from
        # When a copy is needed, room for twice the tokens held (appends amortised), but no more than
        # this many when set: a cache kept under a token budget never uses more than the budget's room.
        self.most_tokens = 0
        for layer in layers:
            layer.length = length
            layer.is_initialized = store is not None

    @property
    def length(self) -> int:
        return self.stream_layers[0].length

    @property
    def num_layers(self) -> int:
        return len(self.stream_layers)

    def segment(self, start: int, end: int) -> KVSegment:
        """Views of tokens [start, end) of every layer."""
        keys = [self.keys(layer)[..., start:end, :] for layer in range(self.num_layers)]
        values = [self.values(layer)[..., start:end, :] for layer in range(self.num_layers)]
        return KVSegment(keys, values, start)

    def keys(self, layer: int) -> torch.Tensor:
        """Keys of `layer` for this cache's tokens: (batch, kv_heads, length, head_dim), a view."""
        assert self.store is not None
        return self.store.keys[layer][..., : self.length, :]

    def values(self, layer: int) -> torch.Tensor:
        """Values of `layer` for this cache's tokens: (batch, kv_heads, length, head_dim), a view."""
        assert self.store is not None
        return self.store.values[layer][..., : self.length, :]

    def reserve(self, new_tokens: int) -> None:
        """Make room to append `new_tokens` in place; copies the store if another cache owns its tail.

        Call before every forward pass that writes to this cache.
        """
        store = self.store
        needed = self.length + new_tokens
        if store is None:
            self._first_capacity = needed + 256  # allocated by the first layer update, which knows the shape
            return
        if store.owner in (None, self) and store.written == self.length and needed <= store.capacity:
            store.owner = self
            return
        room = 2 * self.length if not self.most_tokens else min(2 * self.length, self.most_tokens)
        fresh = KVStore.allocate(store.keys, max(needed + 256, room))
        for layer in range(len(self.layers)):
            fresh.keys[layer][..., : self.length, :] = store.keys[layer][..., : self.length, :]
            fresh.values[layer][..., : self.length, :] = store.values[layer][..., : self.length, :]
        fresh.owner = self
        fresh.written = self.length
        self.store = fresh

    def allocate_first(self, key_states: torch.Tensor) -> None:
        """Create the store on the first write, shaped like the model's keys."""
        fresh = KVStore.allocate([key_states] * len(self.layers), self._first_capacity)
        fresh.owner = self
        self.store = fresh

    def fork(self) -> StreamingCache:
        """A cache that starts as this one and writes after it without disturbing it.

        The fork takes over the store's tail, so it appends without copying; this cache copies
        only if it appends while the fork is still open. Call `close()` on the fork when done.
        """
        fork = StreamingCache(len(self.layers), self.store, self.length)
        store = self.store
        if store is not None and store.owner in (None, self) and store.written == self.length:
            store.owner = fork
        return fork

    def close(self) -> None:
        """Give the store's tail back, so the cache this was forked from appends without a copy."""
        for layer in self.stream_layers:
            layer.length = self.base_length
        self.release_tail()

    def release_tail(self) -> None:
        """Tokens past this cache's length are no longer needed by it; others may overwrite them."""
        store = self.store
        if store is not None and store.owner is self:
            store.written = self.length
            if self.length == self.base_length:
                store.owner = None

    @torch.inference_mode()
    def append(self, segment: KVSegment, rotate: KeyRotation) -> None:
        """Write `segment` after this cache's tokens, its keys re-rotated to land there."""
        count = segment.length
        self.reserve(count)
        if self.store is None:
            self.allocate_first(segment.keys[0])
        store = self.store
        assert store is not None
        start, end = self.length, self.length + count
        delta = start - segment.position
        for layer in range(len(self.layers)):
            keys = segment.keys[layer]
            store.keys[layer][..., start:end, :] = rotate(keys, delta) if delta else keys
            store.values[layer][..., start:end, :] = segment.values[layer]
        store.written = max(store.written, end)
        for layer_cache in self.stream_layers:
            layer_cache.length = end
            layer_cache.is_initialized = True

    def remove(self, start: int, count: int, rotate: KeyRotation) -> None:
        """Drop tokens [start, start + count) and move the later tokens back by `count` positions.

        Keys after the gap are re-rotated by -count, so positions stay contiguous and exact. A
        new store is built; forks holding the old one are unaffected.
        """
        if count <= 0:
            return
        store = self.store
        assert store is not None
        end = start + count
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"cannot remove tokens [{start}, {end}) from a cache of {self.length}")
        length = self.length - count
        fresh = KVStore.allocate(store.keys, max(length + 256, store.capacity))
        for layer in range(len(self.layers)):
            keys, values = store.keys[layer], store.values[layer]
            fresh.keys[layer][..., :start, :] = keys[..., :start, :]
            fresh.values[layer][..., :start, :] = values[..., :start, :]
            fresh.keys[layer][..., start:length, :] = rotate(keys[..., end : self.length, :], -count)
            fresh.values[layer][..., start:length, :] = values[..., end : self.length, :]
        fresh.owner = self
        fresh.written = length
        self.store = fresh
        self.base_length = min(self.base_length, length)
        for layer_cache in self.stream_layers:
            layer_cache.length = length
