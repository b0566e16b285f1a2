"""Curvature scoring: which frames the memory keeps in full detail ("clear") and which it compresses ("fuzzy").

CurveStream's observation is that sharp turns of the frame-feature trajectory mark semantic transitions. Its
code is not public; this is our reconstruction. For L2-normalised features f_t:

    velocity  v_t = f_t - f_{t-1}
    turn      k_t = 1 - cos(v_t, v_{t-1})          in [0, 2]
    score     S_t = k_t * |v_t|

The turn alone would fire on the jitter of a static scene (noise points every way), so it is gated by the
speed |v_t|. A frame is clear when S_t > mean + K * std of the scores of the last W frames, else fuzzy.

A frame's score joins the window after its own comparison, so each frame is judged against the past
only. The first `warmup` frames are clear whatever their score. The first two frames have no score (a turn
needs two velocities); they report 0 and stay out of the window.

What real footage showed (20 generated needle streams of 60 s, EfficientNet-Lite0 features sampled at 1 fps):
- The turn is never small at a cut. At 1 fps consecutive steps of real footage are nearly unrelated, so the
  turn stays between about 0.55 and 1.9 on every frame and was at least 0.74 at every clip change and
  needle boundary. S therefore already scores a hard cut by its speed, and a separate rule for a speed far
  above the window's (2 or 3 std) would have added 5 frames of 1200, one at a real transition. There is no
  such rule.
- The threshold marks what is unusual for the last W frames, not every change. After a montage with a new
  shot every second, cuts are ordinary and one more stays fuzzy, even when a sign appears with it. K is the
  knob: 22 of 50 needle onsets were clear at K = 1.5 (17% of frames clear), 37 of 50 at K = 1.0 (30%).
- On three 12-minute streams of 12 signs each (4 s over a montage with a cut every few seconds; a sign
  onset is a step of about 1.0 after steps of 0.2-0.4, a cut scores 1.2-1.7), the signs with at least one
  clear frame were 16/36 at K = 1.5 (10% of frames clear), 27/36 at K = 1.0 (24%), 34/36 at K = 0.8 (29%)
  and 36/36 at K = 0.7 (31%). The engine uses K = 0.7, the smallest K sweep value with every sign of seeds
  2 and 3 caught; seed 1 (12/12 at it) was also seen while choosing, so it is not a held-out check.
- On a still scene the clear fraction is the threshold's tail (about 8% at K = 1.5) whatever the jitter's
  amplitude, since the threshold is relative; after real motion, jitter scores near 0 and stays fuzzy.
- A sign can appear without a turn that stands out (over a montage whose cuts score as high), and then
  every frame of it is fuzzy: described tersely, with no OCR, so its word is never read. A heartbeat
  bounds that: a frame is clear when no frame was clear for `heartbeat_s` seconds, so any showing longer
  than heartbeat_s plus one frame interval has a fully described frame. 3 s would cover the shortest
  showings the needle suites use (4 s at 1 fps); it is off in the engine until its effect on answers,
  watches and ingest cost has been measured.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

Tier = Literal["clear", "fuzzy"]
Reason = Literal["warmup", "above threshold", "below threshold", "heartbeat"]

# Features are unit vectors, so a step shorter than this is rounding, not motion (the jitter of a still
# photo through a video codec moves them by about 0.01).
_STILL_SPEED = 1e-6
# The engine's K, lower than the scorer's own default of 1.5: on 12-minute needle streams it left no sign
# without a clear frame, at 31% clear frames instead of 10% (see above).
ENGINE_DEFAULT_K = 0.7
# The engine's heartbeat (off: not yet measured on the suites; see above).
ENGINE_HEARTBEAT_S = 0.0


class CurvatureConfig(BaseModel):
    """Knobs of the clear/fuzzy decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(32, ge=2, description="scores of the most recent frames the mean and std are taken over")
    k: float = Field(1.5, gt=0, description="standard deviations above the mean a score must exceed to be clear")
    warmup: int = Field(3, ge=0, description="first frames after a start or reset that are clear whatever their score")
    heartbeat_s: float = Field(
        0.0, ge=0, description="a frame is clear when no frame was clear for this many seconds (0: no heartbeat)"
    )


@dataclass(frozen=True)
class CurvatureDecision:
    """How one frame was classified, with everything the decision used.

    score: S_t = angle * velocity; 0 for the first two frames, which have none.
    velocity: |v_t|, the distance from the previous frame's unit features (0 for the first frame).
    angle: the turn 1 - cos(v_t, v_{t-1}), in [0, 2], where v_{t-1} is the last velocity that was not 0.
    mean, std, threshold: the window's statistics before this frame's score joined them.
    """

    stream_time: float
    score: float
    velocity: float
    angle: float
    mean: float
    std: float
    threshold: float
    tier: Tier
    reason: Reason

    def __str__(self) -> str:
        return (
            f"t={self.stream_time:.2f}s {self.tier} ({self.reason}): score {self.score:.4f} "
            f"= turn {self.angle:.3f} x speed {self.velocity:.4f}; threshold {self.threshold:.4f} "
            f"= mean {self.mean:.4f} + k x std {self.std:.4f}"
        )


class CurvatureScorer:
    """Classifies frames one at a time, in stream order, from their feature vectors.

    The scorer keeps only what the next decision needs (the previous features, the heading, the window of
    scores); the caller keeps the decisions it wants, e.g. in each frame's record. Every decision is also
    logged at DEBUG level.

    A frame is compared against the past: its score joins the window after the comparison, so a burst of
    high scores raises the threshold only for the frames after it.
    """

    def __init__(self, config: CurvatureConfig | None = None) -> None:
        self.config = config or CurvatureConfig()
        self._scores: deque[float] = deque(maxlen=self.config.window)
        self._previous: np.ndarray | None = None
        self._heading: np.ndarray | None = None
        self._frames = 0
        self._last_clear: float | None = None

    def reset(self) -> None:
        """Forget the trajectory and the window, as at the start of a new stream; warm-up begins again."""
        self._scores.clear()
        self._previous = None
        self._heading = None
        self._frames = 0
        self._last_clear = None

    def score(self, features: np.ndarray, stream_time: float) -> CurvatureDecision:
        """Classify the frame whose feature vector (any 1-D float vector, e.g. (1280,)) is `features`."""
        current = _unit(features)
        if self._previous is not None and self._previous.shape != current.shape:
            raise ValueError(
                f"Features changed from {self._previous.shape[0]} to {current.shape[0]} values mid-stream; "
                "call reset() before scoring a different kind of feature."
            )
        defined_score, speed, angle = self._advance(current)
        score = 0.0 if defined_score is None else defined_score
        mean, std = self._statistics()
        threshold = mean + self.config.k * std
        if self._frames < self.config.warmup:
            tier: Tier = "clear"
            reason: Reason = "warmup"
        elif score > threshold:
            tier, reason = "clear", "above threshold"
        elif self._heartbeat_due(stream_time):
            tier, reason = "clear", "heartbeat"
        else:
            tier, reason = "fuzzy", "below threshold"
        if tier == "clear":
            self._last_clear = stream_time
        if defined_score is not None:
            self._scores.append(defined_score)
        self._frames += 1
        decision = CurvatureDecision(
            stream_time=stream_time,
            score=score,
            velocity=speed,
            angle=angle,
            mean=mean,
            std=std,
            threshold=threshold,
            tier=tier,
            reason=reason,
        )
        log.debug("curvature %s", decision)
        return decision

    def _heartbeat_due(self, stream_time: float) -> bool:
        beat = self.config.heartbeat_s
        return beat > 0 and self._last_clear is not None and stream_time - self._last_clear >= beat - 1e-6

    def _advance(self, current: np.ndarray) -> tuple[float | None, float, float]:
        """Step the trajectory to `current`; returns (score, None until two steps exist; speed; turn)."""
        previous, self._previous = self._previous, current
        if previous is None:
            return None, 0.0, 0.0
        velocity = current - previous
        speed = float(np.linalg.norm(velocity))
        first_step = self._frames == 1
        if speed < _STILL_SPEED:
            # An identical frame does not move: it scores 0 whatever the turn, and keeps the heading.
            return (None if first_step else 0.0), 0.0, 0.0
        heading, self._heading = self._heading, velocity / speed
        if first_step:
            return None, speed, 0.0
        # The turn is measured against the last step that moved, so repeated frames inside a smooth pan do
        # not read as turns. A trajectory that has stood still since the start has no heading; its first
        # move counts as a right angle, so it scores its speed.
        cosine = 0.0 if heading is None else float(np.dot(velocity, heading)) / speed
        angle = 1.0 - min(1.0, max(-1.0, cosine))
        return angle * speed, speed, angle

    def _statistics(self) -> tuple[float, float]:
        """Mean and population standard deviation of the window, exact (W is small); (0, 0) while empty."""
        if not self._scores:
            return 0.0, 0.0
        window = np.fromiter(self._scores, dtype=np.float64, count=len(self._scores))
        return float(window.mean()), float(window.std())


def _unit(features: np.ndarray) -> np.ndarray:
    """`features` as a float64 unit vector; raises ValueError for what cannot be one."""
    vector = np.asarray(features, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"Features must be a non-empty 1-D vector, got shape {vector.shape}.")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("Features must be finite and not all zero to be normalised.")
    return vector / norm
