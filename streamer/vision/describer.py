"""One frame -> a FrameDescription: feature vector, scene labels, objects, text and colours.

The rendered line stands in for a caption (no captioning weights are installable here) and becomes
language-model tokens for every frame, so it is kept short and empty parts are left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from streamer.vision.colours import dominant_colours
from streamer.vision.detector import DetectedObject, ObjectDetector
from streamer.vision.efficientnet import FrameFeatureExtractor
from streamer.vision.ocr import TextReader

Detail = Literal["full", "terse"]
DETAILS: tuple[Detail, ...] = ("full", "terse")

_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep",
                      "skis": "skis", "scissors": "scissors"}  # fmt: skip

_T = TypeVar("_T")


@dataclass
class FrameDescription:
    """What the vision models saw in one frame.

    features: (1280,) float32 EfficientNet-Lite0 features, unit L2 norm.
    labels: ImageNet scene labels with probabilities, most probable first.
    objects: COCO detections, one per class (empty for terse descriptions).
    text: OCR lines in reading order (empty for terse descriptions).
    colours: up to three palette names, most prominent first.
    timings_ms: milliseconds per part that ran ("features", "detector", "ocr", "colours").
    detail: what was run: "full", or "terse" (no detector, no OCR).
    """

    features: np.ndarray
    labels: list[tuple[str, float]]
    objects: list[DetectedObject] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    detail: str = "full"

    def render(self, detail: Detail = "full") -> str:
        """One short line, e.g. `scene: Egyptian cat, tabby cat; objects: cat; colours: grey, brown`.

        "terse" keeps only scene labels and colours.
        """
        _check_detail(detail)
        parts = [("scene", ", ".join(name for name, _ in self.labels))]
        if detail == "full":
            parts.append(("objects", ", ".join(_count_phrase(found) for found in self.objects)))
            parts.append(("text", ", ".join(f'"{readable_case(line)}"' for line in self.text)))
        parts.append(("colours", ", ".join(self.colours)))
        return "; ".join(f"{name}: {value}" for name, value in parts if value)


def readable_case(text: str) -> str:
    """Signs are often all capitals; small LMs copy "Juniper" far more reliably than "JUNIPER"."""
    return text.title() if text.isupper() and len(text) > 1 else text


class FrameDescriber:
    """Owns the vision models and describes frames; the terse path skips the detector and OCR.

    Components may be passed in to share loaded models; missing ones are loaded here, with `threads`
    intra-op threads for the classifier and OCR (None keeps the libraries' defaults; see
    FrameFeatureExtractor for why the default is 1).
    """

    def __init__(
        self,
        extractor: FrameFeatureExtractor | None = None,
        detector: ObjectDetector | None = None,
        reader: TextReader | None = None,
        threads: int | None = 1,
    ) -> None:
        # Confident labels only: every extra label is tokens a small LM must read past.
        self.extractor = extractor or FrameFeatureExtractor(top_k=2, min_probability=0.3, threads=threads)
        self.detector = detector or ObjectDetector(min_score=0.6)
        self.reader = reader or TextReader(threads=threads)

    def describe(
        self, frame_bgr: np.ndarray, detail: Detail | Callable[[np.ndarray], str] = "full"
    ) -> FrameDescription:
        """Describe one H x W x 3 uint8 BGR frame; "terse" runs only the classifier and colours.

        `detail` may be a function of the frame's features that chooses, so the costly parts run
        only for the frames it wants in full.
        """
        timings: dict[str, float] = {}
        features, labels = _timed(timings, "features", lambda: self.extractor.extract(frame_bgr))
        chosen = detail(features) if callable(detail) else detail
        _check_detail(chosen)
        description = FrameDescription(features=features, labels=labels, timings_ms=timings, detail=chosen)
        if chosen == "full":
            description.objects = _timed(timings, "detector", lambda: self.detector.detect(frame_bgr))
            description.text = _timed(timings, "ocr", lambda: self.reader.read(frame_bgr))
        description.colours = _timed(timings, "colours", lambda: dominant_colours(frame_bgr))
        return description


def _timed(timings: dict[str, float], part: str, run: Callable[[], _T]) -> _T:
    start = time.perf_counter()
    result = run()
    timings[part] = (time.perf_counter() - start) * 1000.0
    return result


def _check_detail(detail: str) -> None:
    if detail not in DETAILS:
        raise ValueError(f"Unknown detail {detail!r}: use one of {', '.join(DETAILS)}.")


def _count_phrase(found: DetectedObject) -> str:
    """'cat' for one, '2 people' for several."""
    if found.count == 1:
        return found.name
    plural = _IRREGULAR_PLURALS.get(found.name)
    if plural is None:
        plural = found.name + ("es" if found.name.endswith(("s", "sh", "ch", "x")) else "s")
    return f"{found.count} {plural}"
