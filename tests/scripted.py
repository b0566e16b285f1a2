"""A describer that tells what a script says instead of looking: each test knows exactly what was shown when.

A frame's first pixel holds its second; `SCRIPT[second]` (or the footage description) is what it shows,
always described in full. It stands in for the vision models, which `test_vision.py` and the end-to-end
tests run for real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sources.frame import Frame
from streamer.vision.describer import FrameDescription
from streamer.vision.detector import DetectedObject

FOOTAGE = FrameDescription(np.zeros(4), [("mountain bike", 0.5)], colours=["grey", "green"])
CAT = FrameDescription(np.zeros(4), [("Egyptian cat", 0.7)], [DetectedObject("cat", 0.9, 1)], colours=["brown"])


def sign(word: str) -> FrameDescription:
    return FrameDescription(np.zeros(4), [("street sign", 0.4)], text=[word], colours=["white", "black"])


def frame_at(second: int) -> Frame:
    """The frame of `second`: an 8 x 8 picture whose pixels hold the second."""
    return Frame(np.full((8, 8, 3), second, np.uint8), float(second), 0.0, second)


class ScriptedDescriber:
    """Describes the frame of second `s` as `script[s]`, or as `default`; every description is "full"."""

    def __init__(self, script: Mapping[int, FrameDescription], default: FrameDescription = FOOTAGE) -> None:
        self.script = script
        self.default = default

    def look_batch(self, frames: Sequence[np.ndarray], batched: Any = ()) -> list[FrameDescription]:
        found = []
        for pixels in frames:
            second = int(pixels[0, 0, 0])
            scripted = self.script.get(second, self.default)
            features = np.random.default_rng(second).standard_normal(16).astype(np.float32)
            found.append(
                FrameDescription(
                    features / np.linalg.norm(features),
                    scripted.labels,
                    scripted.objects,
                    scripted.text,
                    scripted.colours,
                )
            )
        return found

    def finish_batch(
        self, frames: Sequence[np.ndarray], looks: Sequence[FrameDescription], details: Any, batched: Any = ()
    ) -> list[FrameDescription]:
        return list(looks)
