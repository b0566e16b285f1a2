"""The curvature scorer: synthetic trajectories with known geometry, then real footage with needles."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from memory.curvature import ENGINE_DEFAULT_K, CurvatureConfig, CurvatureDecision, CurvatureScorer
from sources.file import FileSource
from sources.frame import SourceEnded
from streamer.evaluation.needles import Needle, NeedleStream, build_stream
from streamer.vision import FrameFeatureExtractor

DIM = 1280


def _unit(vector: np.ndarray) -> np.ndarray:
    unit: np.ndarray = vector / float(np.linalg.norm(vector))
    return unit


def _score_all(scorer: CurvatureScorer, trajectory: list[np.ndarray]) -> list[CurvatureDecision]:
    return [scorer.score(features, float(t)) for t, features in enumerate(trajectory)]


def _clear_fraction(decisions: list[CurvatureDecision]) -> float:
    return sum(d.tier == "clear" for d in decisions) / len(decisions)


def test_first_frames_are_clear_for_the_warmup() -> None:
    rng = np.random.default_rng(0)
    scorer = CurvatureScorer(CurvatureConfig(warmup=4))
    decisions = _score_all(scorer, [rng.normal(size=DIM) for _ in range(10)])
    assert [d.reason for d in decisions[:4]] == ["warmup"] * 4
    assert all(d.tier == "clear" for d in decisions[:4])
    assert all(d.reason != "warmup" for d in decisions[4:])
    # A turn needs two velocities: the first two frames have no score and leave the window empty.
    assert [d.score for d in decisions[:2]] == [0.0, 0.0]
    assert decisions[2].mean == 0.0 and decisions[3].mean == decisions[2].score


def test_jitter_of_a_static_scene_is_rarely_clear() -> None:
    rng = np.random.default_rng(1)
    scene = _unit(np.abs(rng.normal(size=DIM)))
    decisions = _score_all(CurvatureScorer(), [scene + 0.01 * rng.normal(size=DIM) for _ in range(500)])
    # What crosses is the tail of the relative threshold (about 8% at K = 1.5), not a response to the noise.
    assert _clear_fraction(decisions[3:]) < 0.10


def test_jitter_after_motion_stays_fuzzy_although_its_turns_are_sharp() -> None:
    rng = np.random.default_rng(2)
    walk = [_unit(rng.normal(size=DIM))]
    for _ in range(40):
        walk.append(_unit(walk[-1] + 0.01 * rng.normal(size=DIM)))
    still = [walk[-1] + 0.001 * rng.normal(size=DIM) for _ in range(20)]
    decisions = _score_all(CurvatureScorer(), walk + still)
    moving, jitter = decisions[3 : len(walk)], decisions[len(walk) :]
    assert all(d.tier == "fuzzy" for d in jitter)
    # The turn alone would have marked the jitter clear: once stopped (the first still frame is the stop
    # itself), it turns more sharply than the walk ever did.
    assert min(d.angle for d in jitter[1:]) > max(d.angle for d in moving)


def test_turn_after_a_long_straight_drift_is_clear() -> None:
    rng = np.random.default_rng(3)
    start, ahead, aside = (_unit(rng.normal(size=DIM)) for _ in range(3))
    drift = [start + 0.02 * step * ahead for step in range(60)]
    turned = [drift[-1] + 0.02 * (step + 1) * aside for step in range(5)]
    decisions = _score_all(CurvatureScorer(), drift + turned)
    turn = decisions[len(drift)]
    assert turn.tier == "clear" and turn.reason == "above threshold"
    assert turn.angle > 0.5
    assert all(d.tier == "fuzzy" for d in decisions[3 : len(drift)])
    assert all(d.tier == "fuzzy" for d in decisions[len(drift) + 1 :])


def test_identical_frames_score_zero_and_the_first_move_from_rest_is_clear() -> None:
    rng = np.random.default_rng(4)
    frame = rng.normal(size=DIM)
    decisions = _score_all(CurvatureScorer(), [frame] * 10 + [rng.normal(size=DIM)])
    still, move = decisions[:10], decisions[10]
    for decision in still:
        values = [decision.score, decision.velocity, decision.angle, decision.mean, decision.std, decision.threshold]
        assert np.all(np.isfinite(values))
        assert decision.score == 0.0
    assert all(d.tier == "fuzzy" for d in still[3:])
    # With no earlier motion there is no heading; the move counts as a right angle.
    assert move.angle == pytest.approx(1.0)
    assert move.tier == "clear"


def test_repeated_frames_inside_a_smooth_pan_are_not_turns() -> None:
    rng = np.random.default_rng(5)
    east, north = _unit(rng.normal(size=DIM)), _unit(rng.normal(size=DIM))
    north = _unit(north - np.dot(north, east) * east)
    pan = [np.cos(0.05 * step) * east + np.sin(0.05 * step) * north for step in range(30)]
    decisions = _score_all(CurvatureScorer(), [frame for frame in pan for _ in range(2)])
    moves = [d for d in decisions[3:] if d.velocity > 0]
    assert len(moves) == 28
    assert max(d.angle for d in moves) < 1e-2


def test_each_frame_is_judged_against_the_scores_of_the_frames_before_it() -> None:
    rng = np.random.default_rng(6)
    window = 8
    decisions = _score_all(CurvatureScorer(CurvatureConfig(window=window, k=1.0)), list(rng.normal(size=(50, DIM))))
    scores = [d.score for d in decisions]
    for index in range(3, len(decisions)):
        past = scores[max(2, index - window) : index]
        decision = decisions[index]
        assert decision.mean == pytest.approx(np.mean(past), abs=1e-12)
        assert decision.std == pytest.approx(np.std(past), abs=1e-12)
        assert decision.threshold == pytest.approx(decision.mean + decision.std, abs=1e-12)
        assert (decision.tier == "clear") == (decision.score > decision.threshold)


def test_reset_forgets_the_trajectory_and_restarts_the_warmup() -> None:
    rng = np.random.default_rng(7)
    scorer = CurvatureScorer()
    _score_all(scorer, list(rng.normal(size=(20, DIM))))
    scorer.reset()
    decisions = _score_all(scorer, list(rng.normal(size=(4, DIM))))
    assert [d.reason for d in decisions[:3]] == ["warmup"] * 3
    assert decisions[0].velocity == 0.0 and decisions[2].mean == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("window", 1), ("window", 0), ("k", 0.0), ("k", -1.0), ("warmup", -1)],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as error:
        CurvatureConfig.model_validate({field: value})
    assert field in str(error.value)


def test_config_defaults() -> None:
    assert CurvatureConfig() == CurvatureConfig(window=32, k=1.5, warmup=3)


def test_features_that_are_not_a_vector_are_rejected() -> None:
    scorer = CurvatureScorer()
    with pytest.raises(ValueError, match="1-D"):
        scorer.score(np.ones((2, DIM)), 0.0)
    with pytest.raises(ValueError, match="not all zero"):
        scorer.score(np.zeros(DIM), 0.0)
    scorer.score(np.ones(DIM), 0.0)
    with pytest.raises(ValueError, match="reset"):
        scorer.score(np.ones(DIM // 2), 1.0)


def test_every_decision_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(8)
    with caplog.at_level(logging.DEBUG, logger="memory.curvature"):
        decisions = _score_all(CurvatureScorer(), list(rng.normal(size=(5, DIM))))
    lines = [record.getMessage() for record in caplog.records if record.name == "memory.curvature"]
    assert len(lines) == len(decisions)
    assert all("\n" not in line for line in lines)
    assert lines[4].startswith(f"curvature t=4.00s {decisions[4].tier} ({decisions[4].reason})")


# Real footage: EfficientNet-Lite0 features of generated needle streams, sampled at 1 fps.


@pytest.fixture(scope="module")
def extractor() -> FrameFeatureExtractor:
    return FrameFeatureExtractor()


def _decide_stream(stream: NeedleStream, extractor: FrameFeatureExtractor) -> list[CurvatureDecision]:
    async def read() -> list[CurvatureDecision]:
        source, scorer, decisions = FileSource(stream.video, fps=1.0), CurvatureScorer(), []
        try:
            while True:
                frame = await source.recv()
                decisions.append(scorer.score(extractor.extract(frame.pixels).features, frame.stream_time))
        except SourceEnded:
            return decisions
        finally:
            source.close()

    return asyncio.run(read())


def _onset(decisions: list[CurvatureDecision], needle: Needle) -> CurvatureDecision:
    return next(d for d in decisions if d.stream_time >= needle.start - 1e-3)


SIGN = Needle("sign", 20.0, 24.0, "KESTREL")
PHOTO = Needle("photo", 40.0, 44.0, "cat")


@pytest.fixture(scope="module")
def montage_decisions(
    tmp_path_factory: pytest.TempPathFactory, extractor: FrameFeatureExtractor
) -> list[CurvatureDecision]:
    """60 s of seed 1: 20 s of the bikes clip (a montage, a new shot about every second) before the sign."""
    video = tmp_path_factory.mktemp("curvature") / "montage.mp4"
    stream = build_stream(video, [SIGN, PHOTO], [], duration=60.0, fps=2.0, seed=1)
    return _decide_stream(stream, extractor)


def test_real_footage_is_mostly_fuzzy_and_the_photo_onset_is_clear(
    montage_decisions: list[CurvatureDecision],
) -> None:
    assert len(montage_decisions) == 60
    assert _clear_fraction(montage_decisions) <= 0.5  # 0.15 observed
    photo = _onset(montage_decisions, PHOTO)
    assert photo.tier == "clear"  # score 1.78 against a threshold of 1.47
    # While the photo stays on screen only codec noise moves its features.
    assert all(d.tier == "fuzzy" and d.score < 0.1 for d in montage_decisions[41:44])


@pytest.mark.xfail(
    strict=True,
    reason="known limit of a relative threshold: after a montage of cuts, the sign's cut is ordinary "
    "(score 1.22 against a threshold of 1.47); lower K catches more onsets at the cost of more clear frames",
)
def test_sign_appearing_with_a_cut_after_a_montage_is_clear(montage_decisions: list[CurvatureDecision]) -> None:
    assert _onset(montage_decisions, SIGN).tier == "clear"


def test_at_the_engine_k_the_sign_after_a_montage_is_clear(montage_decisions: list[CurvatureDecision]) -> None:
    # The window's statistics do not depend on K, so the decision at another K follows from them.
    onset = _onset(montage_decisions, SIGN)
    assert onset.score > onset.mean + ENGINE_DEFAULT_K * onset.std, onset
    clear = [d.reason == "warmup" or d.score > d.mean + ENGINE_DEFAULT_K * d.std for d in montage_decisions]
    assert sum(clear) / len(clear) < 0.5


def test_needle_onsets_in_calm_footage_are_clear(tmp_path: Path, extractor: FrameFeatureExtractor) -> None:
    # Seed 16 opens with 10.6 s of the slowed-down animation, then the talking man in the car.
    sign, photo = Needle("sign", 5.0, 7.0, "KESTREL"), Needle("photo", 14.0, 16.0, "cat")
    stream = build_stream(tmp_path / "calm.mp4", [sign, photo], [], duration=18.0, fps=2.0, seed=16)
    decisions = _decide_stream(stream, extractor)
    for needle in (sign, photo):
        onset = _onset(decisions, needle)
        assert onset.tier == "clear", onset
        assert onset.reason == "above threshold"


def test_a_heartbeat_bounds_every_fuzzy_run() -> None:
    # A slow smooth pan with jitter: after the warm-up nothing stands out, so without a heartbeat the frames
    # stay fuzzy for long runs; with one, no two clear frames are more than heartbeat_s apart.
    rng = np.random.default_rng(3)
    base, direction = _unit(rng.normal(size=DIM)), _unit(rng.normal(size=DIM))
    trajectory = [base + 0.02 * t * direction + 0.001 * rng.normal(size=DIM) for t in range(120)]

    def clear_times(config: CurvatureConfig) -> list[float]:
        decisions = _score_all(CurvatureScorer(config), trajectory)
        return [d.stream_time for d in decisions if d.tier == "clear"]

    without = clear_times(CurvatureConfig(k=ENGINE_DEFAULT_K))
    assert max(np.diff([*without, len(trajectory)])) > 6, "the case the heartbeat is for: long fuzzy runs"
    with_beat = CurvatureScorer(CurvatureConfig(k=ENGINE_DEFAULT_K, heartbeat_s=3.0))
    decisions = _score_all(with_beat, trajectory)
    times = [d.stream_time for d in decisions if d.tier == "clear"]
    assert max(np.diff([*times, len(trajectory) - 1])) <= 3.0
    assert {d.reason for d in decisions if d.tier == "clear"} >= {"heartbeat"}
    assert set(times) >= set(without), "the heartbeat only adds clear frames"
    assert _clear_fraction(decisions) < 0.5


def test_a_partial_curvature_section_keeps_the_engine_defaults() -> None:
    from streamer.engine_config import EngineConfig

    curvature = EngineConfig.model_validate({"memory": {"curvature": {"window": 16}}}).memory.curvature
    assert (curvature.window, curvature.k) == (16, ENGINE_DEFAULT_K)
    beating = EngineConfig.model_validate({"memory": {"curvature": {"heartbeat_s": 3}}}).memory.curvature
    assert (beating.k, beating.heartbeat_s) == (ENGINE_DEFAULT_K, 3.0)
    assert CurvatureConfig().heartbeat_s == 0.0, "the scorer alone has no heartbeat"
