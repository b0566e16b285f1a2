"""The retrieval index: per-layer z-scored key scores, text scores, fusion, snapshot bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_adapter import SyntheticFrames, tiny_model

from memory.index import BlockIndex, zscore
from streamer.engine import Engine, EngineConfig


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_zscore_standardises_and_keeps_constant_rows_finite() -> None:
    z = zscore(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z[0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[0].std(), 1.0, atol=1e-6)
    assert np.all(z[1] == 0)


def test_internal_scores_find_the_matching_block_despite_a_loud_layer() -> None:
    rng = np.random.default_rng(0)
    layers, dim, frames = 4, 16, 20
    summaries = rng.normal(size=(frames, layers, dim)).astype(np.float32)
    query = summaries[7].copy()
    # One layer whose raw scores are 100x larger must not decide alone: z-scoring per layer.
    summaries[:, 0] *= 100
    summaries[12, 0] = query[0] * 1000
    index = BlockIndex(internal_weight=1.0, text_weight=0.0)
    for frame in summaries:
        index.add(frame, None)
    scores = index.scores(query, None)
    assert scores is not None and int(np.argmax(scores)) == 7


def test_text_scores_fusion_and_snapshot_bound() -> None:
    rng = np.random.default_rng(1)
    texts = [unit(rng.normal(size=8)) for _ in range(10)]
    index = BlockIndex(internal_weight=0.0, text_weight=1.0)
    for vector in texts:
        index.add(None, vector)
    scores = index.scores(None, texts[4])
    assert scores is not None and int(np.argmax(scores)) == 4
    bounded = index.scores(None, texts[4], upto=3)
    assert bounded is not None and bounded.shape == (3,)
    assert index.scores(None, None) is None


def test_key_summaries_are_kept_in_half_precision_and_score_as_in_full() -> None:
    rng = np.random.default_rng(2)
    layers, dim, frames = 3, 32, 50
    summaries = rng.normal(size=(frames, layers, dim)).astype(np.float32)
    index = BlockIndex(internal_weight=1.0, text_weight=0.0)
    for frame in summaries:
        index.add(frame, None)
    assert index.nbytes == frames * layers * dim * 2, "2 bytes per value"
    one = index.key_summary(17)
    assert one is not None
    np.testing.assert_array_equal(one, summaries[17].astype(np.float16).astype(np.float32))
    every = index.key_summaries()
    assert every is not None and every.dtype == np.float16 and every.shape == (frames, layers, dim)
    np.testing.assert_array_equal(every, summaries.astype(np.float16))
    query = rng.normal(size=(layers, dim)).astype(np.float32)
    exact = zscore(np.einsum("fld,ld->lf", summaries, query)).mean(axis=0)
    scores = index.scores(query, None)
    assert scores is not None
    np.testing.assert_allclose(scores, exact, atol=2e-3)
    assert BlockIndex().key_summary(0) is None and BlockIndex().key_summaries() is None


def test_an_index_on_a_device_scores_and_compacts_as_faiss_does() -> None:
    """The index's tensor form (the one a GPU gets; here on the CPU) against faiss: the same key summaries
    and text vectors, the same bytes, the same fused scores before and after compaction, and a frozen
    copy keeps scoring what it saw."""
    rng = np.random.default_rng(3)
    layers, dim, frames = 5, 24, 300
    summaries = rng.normal(size=(frames, layers, dim)).astype(np.float32)
    texts = [unit(rng.normal(size=12)) for _ in range(frames)]
    faiss_index, tensor_index = BlockIndex(1.0, 0.5), BlockIndex(1.0, 0.5, device="cpu")
    for summary, text in zip(summaries, texts, strict=True):
        assert faiss_index.add(summary, text) == tensor_index.add(summary, text)
    query, text_query = rng.normal(size=(layers, dim)).astype(np.float32), texts[123]

    def same(upto: int | None = None) -> None:
        a, b = faiss_index.scores(query, text_query, upto), tensor_index.scores(query, text_query, upto)
        assert a is not None and b is not None
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)

    same()
    same(upto=77)
    assert tensor_index.nbytes == faiss_index.nbytes == frames * (layers * dim * 2 + 12 * 4)
    # Both keep float16 (faiss rounds an odd value one unit apart).
    np.testing.assert_allclose(tensor_index.key_summaries(), faiss_index.key_summaries(), atol=1e-3)
    np.testing.assert_allclose(tensor_index.key_summary(42), faiss_index.key_summary(42), atol=1e-3)
    seen = tensor_index.frozen()
    before = seen.scores(query, text_query)
    for index in (faiss_index, tensor_index):
        index.compact(100)
        index.add(summaries[0], texts[0])  # a frame after the compaction
    same()
    after = tensor_index.scores(query, text_query)
    assert after is not None and after.shape == (frames - 100 + 1,)
    np.testing.assert_array_equal(seen.scores(query, text_query, upto=frames), before)
    np.testing.assert_allclose(tensor_index.key_summaries([150, 300]), faiss_index.key_summaries([150, 300]), atol=1e-3)


def test_an_engine_on_a_gpu_keeps_its_index_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index goes where the model is when that is a GPU, and stays in faiss on a CPU."""
    adapter = SyntheticFrames(tiny_model())
    engine = Engine(adapter, EngineConfig())
    assert engine.memory_settings().index_device is None
    monkeypatch.setattr(SyntheticFrames, "device", property(lambda _self: torch.device("cuda", 1)))
    assert engine.memory_settings().index_device == "cuda:1"
