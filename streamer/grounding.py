"""Answers grounded in what a question read: the chosen frames' descriptions and the event timeline lines.

A small language model reads the right frame and still names a neighbour's word, an option by its
position, or two options at once (measured with SmolLM2-135M: option likelihoods picked the sign's word
from four options no better than chance with the frame in its context). What was read is text that says
what was seen, so an answer can be checked against it:

- an option is **supported** by the read texts in proportion to its content words found in one of them
  (normalised words, as the funnel matches them), plus half its MiniLM similarity to the closest text;
- "which came first / last" between options is decided by the timeline: the first showing of the items
  each option names;
- "how many times" is the count of showings of the item the question names, from its timeline line;
- a question about written text is answered with the text the chosen frames read;
- "what is on screen now" is answered with what the newest described frame shows: its objects, then its
  scene label.

The language model still decides wherever the texts do not: between options equally supported, and for
every other open question.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from streamer.funnel import normal_words
from streamer.intent import QUESTION_WORDS, QuestionIntent

_TEXT_READ = re.compile(r'text: ((?:"[^"]*"(?:, )?)+)')
_QUOTED = re.compile(r'"([^"]*)"')
_SHOWN = re.compile(r"^(.*) \((text|object|scene|colour)\), shown (\d+) times?: (.*)$")
_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})")
_CHOICES = re.compile(r"[:,]\s*([^:,?]+?)\s+or\s+([^?]+?)\s*\?\s*$")

Embed = Callable[[Sequence[str]], np.ndarray]
# How much the embedding similarity (-1 to 1) counts beside the share of words read (0 to 1), and how close
# two options' support must be for the language model to choose between them.
SEMANTIC_WEIGHT = 0.5
SUPPORT_TIE = 0.02


@dataclass(frozen=True)
class TimelineFact:
    """One timeline line read back: the item's name, its kind, how many showings, and each showing's first
    and last second."""

    name: str
    kind: str
    count: int
    spans: tuple[tuple[float, float], ...]

    @property
    def starts(self) -> tuple[float, ...]:
        return tuple(first for first, _ in self.spans)


def timeline_facts(lines: Sequence[str]) -> list[TimelineFact]:
    """The facts of the timeline lines among `lines` (see `streamer.retrieval.timeline_line`)."""
    facts = []
    for line in lines:
        found = _SHOWN.match(line)
        if found is None:
            continue
        name, kind, count, listed = found.groups()
        spans = []
        for span in listed.split(", "):
            times = [_seconds(clock) for clock in _CLOCK.findall(span)]
            if times:
                spans.append((times[0], times[-1]))
        facts.append(TimelineFact(name.strip('"'), kind, int(count), tuple(spans)))
    return facts


def _seconds(clock: tuple[str, str, str]) -> float:
    hours, minutes, seconds = clock
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def content_words(text: str) -> list[str]:
    """`text`'s normalised words less those that only frame a question or an answer."""
    return [word for word in normal_words(text) if word not in QUESTION_WORDS]


def lexical_support(candidate: str, texts: Sequence[str]) -> float:
    """The largest share of `candidate`'s content words found together in one of `texts` (0 to 1)."""
    wanted = set(content_words(candidate)) or set(normal_words(candidate))
    if not wanted:
        return 0.0
    return max((len(wanted & set(normal_words(text))) / len(wanted) for text in texts), default=0.0)


def option_support(options: Sequence[str], texts: Sequence[str], embed: Embed | None) -> list[float]:
    """How well each option is supported by the read `texts`: the share of its words found together in one
    of them, plus SEMANTIC_WEIGHT times its MiniLM similarity to the closest one (which tells options
    apart that share no word, or as many words, with what was read; 0 without a text embedder)."""
    if not texts:
        return [0.0] * len(options)
    lexical = [lexical_support(option, texts) for option in options]
    vectors = embed([*options, *texts]) if embed is not None else None
    if vectors is None or vectors.shape[1] == 0:
        return lexical
    similarity = vectors[: len(options)] @ vectors[len(options) :].T
    return [share + SEMANTIC_WEIGHT * float(row.max()) for share, row in zip(lexical, similarity, strict=True)]


def first_showing(option: str, facts: Sequence[TimelineFact]) -> float | None:
    """When the earliest timeline item that `option` names was first shown; None when it names none."""
    words = set(content_words(option))
    times = [
        fact.starts[0] for fact in facts if fact.starts and (names := set(content_words(fact.name))) and names <= words
    ]
    return min(times) if times else None


def order_choice(options: Sequence[str], facts: Sequence[TimelineFact], latest: bool) -> int | None:
    """The option whose item was shown first (or, with `latest`, last); None unless every option names an item."""
    times = [first_showing(option, facts) for option in options]
    if any(time is None for time in times):
        return None
    known = [time for time in times if time is not None]
    pick = max if latest else min
    best = pick(known)
    return known.index(best) if known.count(best) == 1 else None


def choices_named(question: str) -> list[str]:
    """The alternatives an open question offers ("...: the red circle or the photo of the cat?"), or []."""
    found = _CHOICES.search(question.strip().splitlines()[0]) if question.strip() else None
    return [found.group(1).strip(), found.group(2).strip()] if found else []


def count_answer(intent: QuestionIntent, facts: Sequence[TimelineFact]) -> str | None:
    """ "2 times", from the timeline line of the item the question names; None when no line names it."""
    for fact in facts:
        names = set(content_words(fact.name))
        if names and names <= intent.words:
            return f"{fact.count} time{'s' if fact.count != 1 else ''}"
    return None


_COLOUR_ASKED = re.compile(r"\b(colou?r|colou?rs)\b")


def colours_appeared(question: str, intent: QuestionIntent, facts: Sequence[TimelineFact], slack: float) -> list[str]:
    """For a question about the colour of what was shown at a named time: the colours whose showing began
    then (a colour already on screen before is the background's); when some of them also ended then (a
    thing shown for a moment), only those."""
    if not intent.times or not _COLOUR_ASKED.search(question.lower().splitlines()[0]):
        return []
    began = [fact for fact in began_at(facts, intent.times, slack) if fact.kind == "colour"]
    passing = [fact for fact in began if any(_passed(span, intent.times, slack) for span in fact.spans)]
    return [fact.name for fact in passing or began]


def _passed(span: tuple[float, float], times: Sequence[float], slack: float) -> bool:
    """Whether a showing began and ended around one of `times` (within `slack` of it, both ways)."""
    first, last = span
    return any(abs(first - t) <= slack and last <= t + 2 * slack for t in times)


_WHAT_SHOWN = re.compile(r"^\s*what (was|were|is|appeared|happened|did)\b")


def things_appeared(question: str, intent: QuestionIntent, facts: Sequence[TimelineFact], slack: float) -> list[str]:
    """For "what was (shown, in the photo, ...) at <time>?": the objects, then the scene labels, whose showing
    began then (at most three names); [] for any other question."""
    first_line = question.lower().splitlines()[0]
    if not intent.times or intent.text or intent.count or intent.order or not _WHAT_SHOWN.search(first_line):
        return []
    if _COLOUR_ASKED.search(first_line):
        return []
    appeared = [fact for fact in began_at(facts, intent.times, slack) if fact.kind in ("object", "scene")]
    appeared.sort(key=lambda fact: fact.kind != "object")
    return list(dict.fromkeys(fact.name for fact in appeared))[:3]


_PART = re.compile(r"(?:^|; |\] )(scene|objects|text|colours): ([^;]*)")


def description_parts(text: str) -> dict[str, str]:
    """The parts of a frame description (`FrameDescription.render`): {"scene": ..., "objects": ...}."""
    return dict(_PART.findall(text))


def on_screen(descriptions: Sequence[tuple[float, str]]) -> tuple[float, str] | None:
    """For "what is on screen now": the newest of `descriptions` (stream time, description) that names
    something, as (its time, its objects then its top scene label, e.g. "person, 2 bicycles; streetcar");
    None when none names anything."""
    for when, text in sorted(descriptions, reverse=True):
        parts = description_parts(text)
        scene = parts.get("scene", "").split(", ")[0]
        named = [part for part in (parts.get("objects", ""), scene) if part]
        if named:
            return when, "; ".join(named)
    return None


def texts_read(lines: Sequence[str]) -> list[str]:
    """The distinct text that frames read (`text: "..."` in their descriptions, text items of the timeline),
    in the order met."""
    found: list[str] = []
    for line in lines:
        quoted = _TEXT_READ.search(line)
        if quoted is not None:
            found += _QUOTED.findall(quoted.group(1))
    found += [fact.name for fact in timeline_facts(lines) if fact.kind == "text"]
    return list(dict.fromkeys(found))


def names(option: str, fact: TimelineFact) -> bool:
    """Whether `option` names the timeline item of `fact` ("the sign saying BUS 69" names "Bus 69")."""
    wanted, named = set(content_words(option)), set(content_words(fact.name))
    return bool(wanted and named) and (named <= wanted or wanted <= named)


def began_at(facts: Sequence[TimelineFact], times: Sequence[float], slack: float) -> list[TimelineFact]:
    """The facts of items with a showing that began within `slack` seconds of one of `times`."""
    return [fact for fact in facts if any(abs(start - t) <= slack for start in fact.starts for t in times)]


def recency_choice(options: Sequence[str], facts: Sequence[TimelineFact], latest: bool) -> int | None:
    """Among the options the timeline shows, the one shown most recently (`latest`) or first; None when
    none is shown or two tie. An option never shown cannot be the most recent or the first thing shown."""
    when: dict[int, float] = {}
    for index, option in enumerate(options):
        starts = [start for fact in facts if names(option, fact) for start in fact.starts]
        if starts:
            when[index] = max(starts) if latest else min(starts)
    if not when:
        return None
    best = (max if latest else min)(when.values())
    winners = [index for index, start in when.items() if start == best]
    return winners[0] if len(winners) == 1 else None


def option_choice(
    question: str,
    intent: QuestionIntent,
    options: Sequence[str],
    texts: Sequence[str],
    embed: Embed | None,
    slack: float = 3.0,
) -> tuple[list[int], str]:
    """The options still in the running after the read texts have had their say, and why: one index when
    the texts decide, several (equally supported) for the language model to choose among.

    slack: how near a named time a showing must begin to count as what appeared then."""
    facts = timeline_facts(texts)
    among = list(range(len(options)))
    if intent.order:
        latest = bool(re.search(r"\b(last|after|later)\b", question.lower().splitlines()[0]))
        ordered = order_choice(options, facts, latest)
        if ordered is not None:
            return [ordered], "timeline order"
    if intent.recency is not None:
        recent = recency_choice(options, facts, intent.recency == "latest")
        if recent is not None:
            return [recent], "timeline recency"
    if intent.times:
        appeared = began_at(facts, intent.times, slack)
        shown_then = [i for i, option in enumerate(options) if any(names(option, fact) for fact in appeared)]
        if len(shown_then) == 1:
            return shown_then, "appeared then"
        if shown_then:
            among = shown_then
    if intent.count:
        counted = count_answer(intent, facts)
        if counted is not None:
            number = counted.split()[0]
            matching = [i for i, option in enumerate(options) if option.strip() == number]
            if len(matching) == 1:
                return matching, "timeline count"
    support = option_support(options, texts, embed)
    best = max((support[i] for i in among), default=0.0)
    if best <= 0:
        return among, "no support"
    return [i for i in among if support[i] >= best - SUPPORT_TIE], "support"
