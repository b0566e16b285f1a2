"""What a question asks of the memory: a time it names, the newest or oldest of something, an order,
a count, the present, or written text.

Read from the wording alone, cheaply, before retrieval: "the most recent sign" wants the newest
showing of a sign, "how many times" wants the event timeline's count, "which came first" wants the
timeline's order, "right now" wants the recent window. Words are matched after the funnel's
normalisation (`streamer.funnel.normal_words`), so "signs" and "sign" are one word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streamer.funnel import normal_words

LETTERS = "ABCDEFGH"
_CLOCK = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2})\b")

_LATEST = ("most recent", "latest", "last", "newest", "recently", "just now", "just shown", "previous")
_EARLIEST = ("first", "earliest", "at the start", "at the beginning", "oldest")
_ORDER = re.compile(r"\b(which|what)\b.*\b(first|before|after|earlier|later|last)\b.*\bor\b")
_COUNT = re.compile(r"\bhow (many|often)\b|\bnumber of times\b|\bcount\b")
_NOW = re.compile(r"\b(right now|currently|at the moment|at present|now)\b")
_TEXT = re.compile(
    r"\b(written|write|writing|say|said|says|saying|read|reads|text|word|words|sign|signs|number|label)\b"
)

# Words of a question that only frame it ("what was shown on screen?") and name nothing to look for.
QUESTION_WORDS = frozenset(
    normal_words(
        """a an the of to in on at by for from with and or is are was were be been being it its this that these
        those there what which who whom whose when where why how many much times time often did does do has have
        had shown show shows showing seen see appear appeared appears visible screen video stream frame frames
        clip camera most recent latest last first earliest newest oldest right now currently moment present
        before after earlier later just recently previous any some one please tell me say said says saying
        written write read text word words drawn picture image photo look looked like kind thing things
        number count"""
    )
)


@dataclass(frozen=True)
class QuestionIntent:
    """What the wording of a question asks for.

    times: stream times it names (MM:SS or H:MM:SS), in seconds.
    recency: "latest" for the most recent / last of something, and for written text when no time is named
        ("what did the sign say?" means the last sign); "earliest" for the first; None otherwise.
    order: it asks which of several things came first (or after).
    count: it asks how many times something happened.
    now: it asks about the present moment.
    text: it asks about written text (what a sign said, a word, a number).
    words: its normalised content words, the things to look for.
    """

    times: tuple[float, ...] = ()
    recency: Literal["latest", "earliest"] | None = None
    order: bool = False
    count: bool = False
    now: bool = False
    text: bool = False
    words: frozenset[str] = frozenset()


def times_named(question: str) -> list[float]:
    """Stream times written in the question as MM:SS or H:MM:SS, in seconds."""
    return [float(int(h or 0) * 3600 + int(m) * 60 + int(s)) for h, m, s in _CLOCK.findall(question)]


def read_intent(question: str) -> QuestionIntent:
    """The intent of `question` (its first line: options below it are not the question)."""
    first_line = question.strip().splitlines()[0] if question.strip() else ""
    lowered = " " + re.sub(r"\s+", " ", first_line.lower()) + " "
    without_times = _CLOCK.sub(" ", lowered)
    order = bool(_ORDER.search(without_times))
    recency: Literal["latest", "earliest"] | None = None
    if not order:
        if any(f" {phrase} " in without_times or f" {phrase}?" in without_times for phrase in _LATEST):
            recency = "latest"
        elif any(f" {phrase} " in without_times or f" {phrase}?" in without_times for phrase in _EARLIEST):
            recency = "earliest"
    words = frozenset(word for word in normal_words(without_times) if word not in QUESTION_WORDS)
    times = tuple(times_named(first_line))
    count = bool(_COUNT.search(without_times))
    now = bool(_NOW.search(without_times)) and recency is None
    text = bool(_TEXT.search(without_times))
    if text and recency is None and not (times or order or count or now):
        # "What did the sign say?" names no time: the sign meant is the last one shown.
        recency = "latest"
    return QuestionIntent(times=times, recency=recency, order=order, count=count, now=now, text=text, words=words)


def options_prompt(question: str, options: Sequence[str]) -> str:
    """A multiple-choice question as the model reads it: the question, lettered options, the instruction."""
    lines = [question.strip(), "Options:", *(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))]
    return "\n".join([*lines, "Answer with the option's letter."])
