"""One frame -> a FrameDescription: feature vector, scene labels, objects, text and colours.

The rendered line stands in for a caption (no captioning weights are installable here) and becomes
language-model tokens for every frame, so it is kept short and empty parts are left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeVar

import numpy as np

from streamer.vision.colours import dominant_colours
from streamer.vision.detector import DetectedObject, ObjectDetector
from streamer.vision.efficientnet import FrameFeatureExtractor
from streamer.vision.ocr import TextReader

Detail = Literal["full", "terse"]
DETAILS: tuple[Detail, ...] = ("full", "terse")
# The parts of a description that `describe_batch` can run as one model call for several frames.
BATCHABLE = ("features", "detector")

_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep",
                      "skis": "skis", "scissors": "scissors"}  # fmt: skip

_T = TypeVar("_T")
# What the describing steps take and give: frames (H x W x 3 uint8 BGR), the parts to batch, descriptions.
Frames = Sequence[np.ndarray]
Parts = Collection[str]
Descriptions = list["FrameDescription"]


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

    def items(self) -> list[tuple[str, str]]:
        """The things it names, as (kind, name) for the memory's event timeline: each text line read, each
        object detected, each scene label, each palette colour."""
        found = [("text", readable_case(line)) for line in self.text]
        found += [("object", detected.name) for detected in self.objects]
        found += [("scene", name) for name, _ in self.labels]
        found += [("colour", colour) for colour in self.colours]
        return found


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

    def describe(self, frame_bgr: np.ndarray, detail: Detail = "full") -> FrameDescription:
        """Describe one H x W x 3 uint8 BGR frame; "terse" runs only the classifier and colours."""
        return self.describe_batch([frame_bgr], [detail])[0]

    def describe_batch(self, frames_bgr: Frames, details: Sequence[str], batched: Parts = ()) -> Descriptions:
        """`describe` for several frames, except that the parts named in `batched` ("features",
        "detector") run as one model call for all the frames that need them: `look_batch`, then
        `finish_batch`."""
        return self.finish_batch(frames_bgr, self.look_batch(frames_bgr, batched), details, batched)

    def look_batch(self, frames_bgr: Frames, batched: Parts = ()) -> Descriptions:
        """The first, cheap part of describing: each frame's features and scene labels (the classifier), as
        descriptions with nothing else yet. The features decide how the rest is described (a memory
        policy's tier); `finish_batch` completes them."""
        unknown = set(batched) - set(BATCHABLE)
        if unknown:
            raise ValueError(f"Cannot batch {', '.join(sorted(unknown))}: choose from {', '.join(BATCHABLE)}.")
        timings: list[dict[str, float]] = [{} for _ in frames_bgr]
        extracted = _run_parts(timings, "features", "features" in batched, frames_bgr, self.extractor.extract_batch)
        return [
            FrameDescription(features, labels, timings_ms=frame_timings)
            for (features, labels), frame_timings in zip(extracted, timings, strict=True)
        ]

    def finish_batch(
        self, frames_bgr: Frames, looks: Sequence[FrameDescription], details: Sequence[str], batched: Parts = ()
    ) -> Descriptions:
        """Complete the descriptions `look_batch` began, each at its detail: "full" adds the detector's
        objects and OCR's text, both add the colours. A batched part's time is shared equally among the
        frames it covered."""
        if not len(frames_bgr) == len(looks) == len(details):
            raise ValueError(f"{len(frames_bgr)} frames, {len(looks)} looks and {len(details)} details")
        for detail in details:
            _check_detail(detail)
        descriptions = [
            FrameDescription(look.features, look.labels, timings_ms=dict(look.timings_ms), detail=detail)
            for look, detail in zip(looks, details, strict=True)
        ]
        full = [index for index, description in enumerate(descriptions) if description.detail == "full"]
        full_frames = [frames_bgr[index] for index in full]
        full_timings = [descriptions[index].timings_ms for index in full]
        found = _run_parts(full_timings, "detector", "detector" in batched, full_frames, self.detector.detect_batch)
        for index, objects in zip(full, found, strict=True):
            descriptions[index].objects = objects
        for index in full:
            description = descriptions[index]
            description.text = _timed(description.timings_ms, "ocr", partial(self.reader.read, frames_bgr[index]))
        for frame_bgr, description in zip(frames_bgr, descriptions, strict=True):
            description.colours = _timed(description.timings_ms, "colours", partial(dominant_colours, frame_bgr))
        return descriptions


def _run_parts(
    timings: list[dict[str, float]],
    part: str,
    batched: bool,
    frames: Sequence[np.ndarray],
    run: Callable[[Sequence[np.ndarray]], list[_T]],
) -> list[_T]:
    """`run` over `frames`, as one call when `batched`, else one call per frame; records each frame's time."""
    if not batched:
        return [
            _timed(frame_timings, part, partial(_first, run, frame))
            for frame, frame_timings in zip(frames, timings, strict=True)
        ]
    start = time.perf_counter()
    results = run(frames)
    share = (time.perf_counter() - start) * 1000.0 / max(1, len(frames))
    for frame_timings in timings:
        frame_timings[part] = share
    return results


def _first(run: Callable[[Sequence[np.ndarray]], list[_T]], frame: np.ndarray) -> _T:
    return run([frame])[0]


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
