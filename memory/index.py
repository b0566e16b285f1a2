"""Retrieval index over every frame a stream has seen, resident or not.

Two signals per frame, both kept after the frame's KV is gone so a question can still be routed:

- internal: per layer, the mean of the frame's (un-rotated) keys; a question's per-layer mean query
  scores it by dot product (ReKV). Raw dot products drift toward recent frames, so each layer's
  scores are z-scored over all frames before the layers are averaged (MemStream's finding). The
  summaries are kept here only, in half precision (the records let go of theirs once indexed).
- external: a text embedding of the frame's description against the question's (cosine).

The two z-scored signals are fused with configurable weights. A question scores every frame, so the
vectors are scanned whole. On a CPU they live in faiss flat inner-product indexes: the key summaries as
float16 codes, which halve what a long stream keeps per frame, the text vectors as float32. On a GPU
(`device`) they live in tensors on it, in the same precisions, scored by one matrix product per signal
(GPU faiss returns at most 2,048 results per search, fewer than a long stream's frames).

`compact(first)` forgets the frames before id `first`: new stores with the remaining vectors are
swapped in, so a `frozen()` copy taken for a question keeps scoring what it saw."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import faiss
import numpy as np
import torch


def zscore(scores: np.ndarray) -> np.ndarray:
    """(..., n) scores standardised along the last axis; constant rows become zeros."""
    mean = scores.mean(axis=-1, keepdims=True)
    std = scores.std(axis=-1, keepdims=True)
    return np.asarray((scores - mean) / np.where(std > 1e-12, std, 1.0), dtype=np.float32)


class _FaissStore:
    """Vectors of `parts` x `dim` per frame, part i in faiss index i (flat inner product; float16 codes
    with `half`)."""

    def __init__(self, parts: int, dim: int, half: bool) -> None:
        self.half = half
        self.indexes = [self._index(dim) for _ in range(parts)]

    def _index(self, dim: int) -> faiss.Index:
        if self.half:
            return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexFlatIP(dim)

    @property
    def ntotal(self) -> int:
        return int(self.indexes[0].ntotal)

    @property
    def nbytes(self) -> int:
        return sum(index.ntotal * index.d * (2 if self.half else 4) for index in self.indexes)

    def add(self, vectors: np.ndarray) -> None:
        """Append frames: (frames, parts, dim)."""
        for part, index in enumerate(self.indexes):
            index.add(np.ascontiguousarray(vectors[:, part], dtype=np.float32))

    def get(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), parts, dim) float32."""
        return np.stack([index.reconstruct_batch(positions) for index in self.indexes], axis=1)

    def scores(self, query: np.ndarray, n: int) -> np.ndarray:
        """(parts, n): part i's inner products of `query[i]` with the first `n` frames, in order."""
        found = []
        for index, part in zip(self.indexes, query, strict=True):
            distances, ids = index.search(np.ascontiguousarray(part[None], dtype=np.float32), index.ntotal)
            scores = np.empty(index.ntotal, dtype=np.float32)
            scores[ids[0]] = distances[0]
            found.append(scores[:n])
        return np.stack(found)

    def tail(self, start: int) -> _FaissStore:
        """A new store with the frames from position `start` on."""
        fresh = _FaissStore(len(self.indexes), self.indexes[0].d, self.half)
        if self.ntotal > start:
            fresh.add(self.get(np.arange(start, self.ntotal)))
        return fresh


class _TensorStore:
    """Vectors of `parts` x `dim` per frame in one tensor on `device` (float16 with `half`), growing by
    doubling; scored by one matrix product."""

    def __init__(self, parts: int, dim: int, half: bool, device: torch.device) -> None:
        self.half = half
        self.data = torch.empty(0, parts, dim, dtype=torch.float16 if half else torch.float32, device=device)
        self.ntotal = 0

    @property
    def nbytes(self) -> int:
        _, parts, dim = self.data.shape
        return self.ntotal * parts * dim * self.data.element_size()

    def add(self, vectors: np.ndarray) -> None:
        """Append frames: (frames, parts, dim). Rows already written never change (a grown tensor is a new
        one), so a frozen index reading the first n keeps its scores."""
        data, end = self.data, self.ntotal + len(vectors)
        if end > data.shape[0]:
            grown = data.new_empty(max(64, end, 2 * data.shape[0]), *data.shape[1:])
            grown[: self.ntotal] = data[: self.ntotal]
            self.data = data = grown
        data[self.ntotal : end] = torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(data.device, data.dtype)
        self.ntotal = end

    def get(self, positions: np.ndarray) -> np.ndarray:
        chosen = self.data[torch.as_tensor(positions, dtype=torch.long, device=self.data.device)]
        return chosen.float().cpu().numpy()

    def scores(self, query: np.ndarray, n: int) -> np.ndarray:
        wanted = torch.from_numpy(np.asarray(query, dtype=np.float32)).to(self.data.device)
        return torch.einsum("npd,pd->pn", self.data[:n].float(), wanted).cpu().numpy()

    def tail(self, start: int) -> _TensorStore:
        _, parts, dim = self.data.shape
        fresh = _TensorStore(parts, dim, self.half, self.data.device)
        fresh.data = self.data[start : self.ntotal].clone()
        fresh.ntotal = max(0, self.ntotal - start)
        return fresh


Store = _FaissStore | _TensorStore


class BlockIndex:
    """Key summaries (layers x dim) and text vectors of frames, in arrival order (ids 0, 1, ...); frames
    [first, count) are held, at positions id - first. `device`: keep the vectors on this torch device
    (a GPU) instead of in faiss."""

    def __init__(
        self, internal_weight: float = 1.0, text_weight: float = 1.0, device: str | torch.device | None = None
    ) -> None:
        self.internal_weight = internal_weight
        self.text_weight = text_weight
        self.device = torch.device(device) if device is not None else None
        self.summaries: Store | None = None
        self.text: Store | None = None
        self.first = 0
        self.count = 0
        self.lock = threading.Lock()

    def _store(self, parts: int, dim: int, half: bool) -> Store:
        if self.device is None:
            return _FaissStore(parts, dim, half)
        return _TensorStore(parts, dim, half, self.device)

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors held (key summaries and text vectors)."""
        with self.lock:
            return sum(store.nbytes for store in (self.summaries, self.text) if store is not None)

    def add(self, key_summary: np.ndarray | None, text_vector: np.ndarray | None) -> int:
        """Index one frame; returns its id. key_summary: (layers, dim); text_vector: (dim,)."""
        with self.lock:
            if key_summary is not None:
                if self.summaries is None:
                    layers, dim = key_summary.shape
                    self.summaries = self._store(layers, dim, half=True)
                if self.first + self.summaries.ntotal != self.count:
                    raise ValueError("every frame needs a key summary once the first one had one")
                self.summaries.add(key_summary[None])
            if text_vector is not None:
                if self.text is None:
                    self.text = self._store(1, text_vector.shape[0], half=False)
                if self.first + self.text.ntotal != self.count:
                    raise ValueError("every frame needs a text vector once the first one had one")
                self.text.add(text_vector[None, None])
            self.count += 1
            return self.count - 1

    def key_summary(self, frame_id: int) -> np.ndarray | None:
        """The frame's key summary (layers, dim) as stored (float16 precision, as float32); None without any."""
        with self.lock:
            if self.summaries is None:
                return None
            found: np.ndarray = self.summaries.get(np.array([frame_id - self.first]))[0]
            return found

    def key_summaries(self, ids: Sequence[int] | None = None) -> np.ndarray | None:
        """The key summaries of frames `ids` (every frame held by default, in id order), (frames, layers,
        dim) float16; None without any."""
        with self.lock:
            if self.summaries is None:
                return None
            wanted = np.arange(self.summaries.ntotal) if ids is None else np.asarray(ids, dtype=np.int64) - self.first
            return self.summaries.get(wanted).astype(np.float16)

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
            if query_summary is not None and self.summaries is not None and self.internal_weight:
                per_layer = self.summaries.scores(query_summary, n)
                parts.append(self.internal_weight * zscore(per_layer).mean(axis=0))
            if text_query is not None and self.text is not None and self.text_weight:
                parts.append(self.text_weight * zscore(self.text.scores(text_query[None], n)[0]))
            if not parts:
                return None
            return np.asarray(sum(parts), dtype=np.float32)

    def compact(self, first: int) -> None:
        """Forget the frames before id `first`; new stores are swapped in, frozen copies keep the old ones."""
        with self.lock:
            drop = first - self.first
            if drop <= 0:
                return
            if self.summaries is not None:
                self.summaries = self.summaries.tail(drop)
            if self.text is not None:
                self.text = self.text.tail(drop)
            self.first = first

    def frozen(self) -> BlockIndex:
        """A copy that keeps scoring today's stores (and sees frames added later) whatever `compact` does."""
        with self.lock:
            return copy.copy(self)
