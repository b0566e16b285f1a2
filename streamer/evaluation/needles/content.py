"""What a needle stream is made of: the signs, photos, shapes and clips it draws on, the needles and
questions of a plan, and the questions file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Bump when the rendering changes, so cached videos made by an older generator are rebuilt.
GENERATOR_VERSION = 2


FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


SIGN_WORDS = (
    "KESTREL", "MARIGOLD", "ZEPHYR", "OBSIDIAN", "LANTERN", "QUARTZ",
    "JUNIPER", "FALCON", "VELVET", "TUNDRA", "PELICAN", "SAFFRON",
)  # fmt: skip


# Label words of the numbered signs, e.g. "GATE 42".
SIGN_LABELS = ("GATE", "PLATFORM", "ROOM", "BUS", "EXIT", "DOCK")


# Photo subject -> (library, sample name): a scikit-image `skimage.data` function, or a file of
# matplotlib's sample data.
PHOTO_SUBJECTS = {
    "cat": ("scikit-image", "chelsea"),
    "coffee": ("scikit-image", "coffee"),
    "astronaut": ("scikit-image", "astronaut"),
    "rocket": ("scikit-image", "rocket"),
    "motorcycle": ("scikit-image", "stereo_motorcycle"),
    "horse": ("scikit-image", "horse"),
    "person": ("matplotlib", "grace_hopper.jpg"),
}


# The photos the embedded describer names (cat, espresso/cup, motorcycle, horse, person); the
# astronaut and the rocket read as "person" and "missile", so suites leave them out.
SUITE_PHOTOS = ("cat", "coffee", "motorcycle", "horse", "person")


# Shape colours (BGR) whose palette names the colour describer reports, and the shapes drawn.
SHAPE_COLOURS = {"red": (40, 40, 220), "blue": (220, 80, 20), "yellow": (20, 220, 240), "purple": (190, 40, 140)}


SHAPE_KINDS = ("triangle", "circle", "square")


# Footage clip -> what a viewer sees in it: the options and answer of "what is on screen now?".
CLIP_SCENES = {
    "bigbuckbunny.mp4": "an animated rabbit in a meadow",
    "bikes.mp4": "a city street with bicycles",
    "carphone_pristine.mp4": "a man talking in a car",
}


# Footage clip -> one word for its main subject: the open-form answer to "what is on screen now?".
CLIP_SUBJECTS = {"bigbuckbunny.mp4": "rabbit", "bikes.mp4": "bicycles", "carphone_pristine.mp4": "car"}


# What a frame description shows when a photo's subject or a clip's subject was seen: the words the
# ImageNet labels and COCO objects use for it ("|" separates alternatives; `streamer.funnel`). The
# evaluation's funnel looks for these to tell whether the answer was perceived at all.
PHOTO_SEEN = {
    "cat": "cat",
    "coffee": "espresso|cup|coffee",
    "astronaut": "astronaut|person",
    "rocket": "rocket|missile",
    "motorcycle": "motorcycle|moped|scooter",
    "horse": "horse|sorrel",
    "person": "person|uniform",
}


CLIP_SEEN = {
    "bigbuckbunny.mp4": "rabbit|hare|bunny",
    "bikes.mp4": "bicycle|bike|cycle",
    "carphone_pristine.mp4": "car|person|seat belt",
}


@dataclass(frozen=True)
class Needle:
    """Something shown from `start` to `end` seconds: a sign (content = its text), a photo (content =
    its subject, a key of PHOTO_SUBJECTS) or a shape (content = "<colour> <shape>", from
    SHAPE_COLOURS and SHAPE_KINDS)."""

    kind: Literal["sign", "photo", "shape"]
    start: float
    end: float
    content: str


@dataclass(frozen=True)
class Question:
    """One line of a replay questions file: asked at `t` seconds into the stream."""

    id: str
    t: float
    question: str
    answer: str | None = None
    options: tuple[str, ...] | None = None
    seen: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The replay format: {"id", "t", "question", "answer"?, "options"?, "seen"?}."""
        line: dict[str, Any] = {"id": self.id, "t": self.t, "question": self.question}
        if self.options is not None:
            line["options"] = list(self.options)
        if self.answer is not None:
            line["answer"] = self.answer
        if self.seen is not None:
            line["seen"] = list(self.seen)
        return line


@dataclass(frozen=True)
class FootageSegment:
    """`clip` plays from its first frame over stream time [start, end) at `speed`."""

    clip: str
    start: float
    end: float
    speed: float


@dataclass
class NeedleStream:
    """A generated video, what was hidden in it, and the questions about it."""

    video: Path
    duration: float
    needles: list[Needle]
    questions: list[Question]
    footage: list[FootageSegment] = field(default_factory=list)

    @property
    def questions_path(self) -> Path:
        return questions_path_for(self.video)


def questions_path_for(video: Path) -> Path:
    """Where the questions JSONL of `video` lives: next to it, `<name>.questions.jsonl`."""
    return video.with_name(video.stem + ".questions.jsonl")


def write_questions(path: Path, questions: Sequence[Question]) -> None:
    """Write `questions` as JSONL in the replay format."""
    with path.open("w", encoding="utf-8") as out:
        for question in questions:
            out.write(json.dumps(question.to_json()) + "\n")


def _check_needle(needle: Needle, duration: float) -> None:
    if not 0 <= needle.start < needle.end <= duration:
        raise ValueError(f"Needle {needle} must lie within the stream [0, {duration}] s with start < end.")
    if needle.kind == "photo" and needle.content not in PHOTO_SUBJECTS:
        raise ValueError(f"Unknown photo subject '{needle.content}'; use one of {sorted(PHOTO_SUBJECTS)}.")
    if needle.kind == "shape":
        colour, _, shape = needle.content.partition(" ")
        if colour not in SHAPE_COLOURS or shape not in SHAPE_KINDS:
            raise ValueError(
                f"Unknown shape '{needle.content}'; use '<colour> <shape>' with a colour of {sorted(SHAPE_COLOURS)} "
                f"and a shape of {list(SHAPE_KINDS)}."
            )
