"""The retrieval index: per-layer z-scored key scores, text scores, fusion, snapshot bounds."""

from __future__ import annotations

import numpy as np

from memory.index import BlockIndex, zscore


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
    assert all(layer.code_size == 2 * dim for layer in index.layers), "2 bytes per value"
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
