"""Retrieval index over every frame a stream has seen, resident or not.

Two signals per frame, both kept after the frame's KV is gone so a question can still be routed:

- internal: per layer, the mean of the frame's (un-rotated) keys; a question's per-layer mean query
  scores it by dot product (ReKV). Raw dot products drift toward recent frames, so each layer's
  scores are z-scored over all frames before the layers are averaged (MemStream's finding). The
  summaries are kept here only, in half precision (the records let go of theirs once indexed).
- external: a text embedding of the frame's description against the question's (cosine).

The two z-scored signals are fused with configurable weights. Vectors live in faiss flat
inner-product indexes (faiss-cpu; the same calls run on GPU faiss): the key summaries as float16
codes, which halve what a long stream keeps per frame, the text vectors as float32.

`compact(first)` forgets the frames before id `first`: new faiss indexes with the remaining vectors are
swapped in, so a `frozen()` copy taken for a question keeps scoring what it saw.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import TypeVar

import faiss
import numpy as np

IndexT = TypeVar("IndexT", bound=faiss.Index)


def zscore(scores: np.ndarray) -> np.ndarray:
    """(..., n) scores standardised along the last axis; constant rows become zeros."""
    mean = scores.mean(axis=-1, keepdims=True)
    std = scores.std(axis=-1, keepdims=True)
    return np.asarray((scores - mean) / np.where(std > 1e-12, std, 1.0), dtype=np.float32)


class BlockIndex:
    """Key summaries (layers x dim) and text vectors of frames, in arrival order (ids 0, 1, ...); frames
    [first, count) are held, at positions id - first."""

    def __init__(self, internal_weight: float = 1.0, text_weight: float = 1.0) -> None:
        self.internal_weight = internal_weight
        self.text_weight = text_weight
        self.layers: list[faiss.IndexScalarQuantizer] = []
        self.text: faiss.IndexFlatIP | None = None
        self.first = 0
        self.count = 0
        self.lock = threading.Lock()

    def add(self, key_summary: np.ndarray | None, text_vector: np.ndarray | None) -> int:
        """Index one frame; returns its id. key_summary: (layers, dim); text_vector: (dim,)."""
        with self.lock:
            if key_summary is not None:
                if not self.layers:
                    self.layers = [_half_precision_index(key_summary.shape[1]) for _ in range(key_summary.shape[0])]
                if self.first + self.layers[0].ntotal != self.count:
                    raise ValueError("every frame needs a key summary once the first one had one")
                for layer, vector in zip(self.layers, key_summary, strict=True):
                    layer.add(np.ascontiguousarray(vector[None], dtype=np.float32))
            if text_vector is not None:
                if self.text is None:
                    self.text = faiss.IndexFlatIP(text_vector.shape[0])
                if self.first + self.text.ntotal != self.count:
                    raise ValueError("every frame needs a text vector once the first one had one")
                self.text.add(np.ascontiguousarray(text_vector[None], dtype=np.float32))
            self.count += 1
            return self.count - 1

    def key_summary(self, frame_id: int) -> np.ndarray | None:
        """The frame's key summary (layers, dim) as stored (float16 precision, as float32); None without any."""
        with self.lock:
            if not self.layers:
                return None
            return np.stack([layer.reconstruct(frame_id - self.first) for layer in self.layers])

    def key_summaries(self, ids: Sequence[int] | None = None) -> np.ndarray | None:
        """The key summaries of frames `ids` (every frame held by default, in id order), (frames, layers,
        dim) float16; None without any."""
        with self.lock:
            if not self.layers:
                return None
            if ids is None:
                parts = [layer.reconstruct_n(0, layer.ntotal) for layer in self.layers]
            elif len(ids):
                wanted = np.asarray(ids, dtype=np.int64) - self.first
                parts = [layer.reconstruct_batch(wanted) for layer in self.layers]
            else:
                parts = [np.zeros((0, layer.d), dtype=np.float32) for layer in self.layers]
            return np.stack(parts, axis=1).astype(np.float16)

    def scores(
        self, query_summary: np.ndarray | None, text_query: np.ndarray | None, upto: int | None = None
    ) -> np.ndarray | None:
        """Fused z-scores (n,) of frames [first, upto) for a question (frame id i at i - first); None if
        there is nothing to rank by.

        query_summary: (layers, dim) in the space of the key summaries; text_query: (dim,).
        """
        with self.lock:
            n = (self.count if upto is None else min(upto, self.count)) - self.first
            if n <= 0:
                return None
            parts: list[np.ndarray] = []
            if query_summary is not None and self.layers and self.internal_weight:
                per_layer = np.stack(
                    [_all_scores(index, q, n) for index, q in zip(self.layers, query_summary, strict=True)]
                )
                parts.append(self.internal_weight * zscore(per_layer).mean(axis=0))
            if text_query is not None and self.text is not None and self.text_weight:
                parts.append(self.text_weight * zscore(_all_scores(self.text, text_query, n)))
            if not parts:
                return None
            return np.asarray(sum(parts), dtype=np.float32)

    def compact(self, first: int) -> None:
        """Forget the frames before id `first`; new indexes are swapped in, frozen copies keep the old ones."""
        with self.lock:
            drop = first - self.first
            if drop <= 0:
                return
            self.layers = [_tail(layer, drop, _half_precision_index(layer.d)) for layer in self.layers]
            if self.text is not None:
                self.text = _tail(self.text, drop, faiss.IndexFlatIP(self.text.d))
            self.first = first

    def frozen(self) -> BlockIndex:
        """A copy that keeps scoring today's indexes (and sees frames added later) whatever `compact` does."""
        with self.lock:
            return copy.copy(self)


def _half_precision_index(dim: int) -> faiss.IndexScalarQuantizer:
    """A flat inner-product index storing vectors as float16 (no training needed)."""
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def _tail(index: faiss.Index, start: int, into: IndexT) -> IndexT:
    """`into` with the vectors of `index` from position `start` on, added in order."""
    if index.ntotal > start:
        into.add(index.reconstruct_n(start, index.ntotal - start))
    return into


def _all_scores(index: faiss.Index, query: np.ndarray, n: int) -> np.ndarray:
    """Inner products of `query` with the first `n` vectors of `index`, in id order."""
    distances, ids = index.search(np.ascontiguousarray(query[None], dtype=np.float32), index.ntotal)
    scores = np.empty(index.ntotal, dtype=np.float32)
    scores[ids[0]] = distances[0]
    return scores[:n]
