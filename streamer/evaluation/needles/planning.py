"""Plans: which needles a stream shows when, and the questions asked about them (demo and suites)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from streamer.clock import clock
from streamer.errors import UserError
from streamer.evaluation.needles.content import (
    CLIP_SCENES,
    CLIP_SEEN,
    CLIP_SUBJECTS,
    PHOTO_SEEN,
    SHAPE_COLOURS,
    SHAPE_KINDS,
    SIGN_LABELS,
    SIGN_WORDS,
    SUITE_PHOTOS,
    FootageSegment,
    Needle,
    Question,
)
from streamer.evaluation.needles.footage import plan_footage, scene_at, segment_at


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
