"""Where a right answer is lost: perceived -> kept -> chosen -> answered.

For a question with a known answer, its evidence (the phrases a frame description shows when the
answer was seen: the question file's `seen`, else the correct option's text, else the expected
answer) is looked for in the text the engine had at each step:

- perceived: the description of some frame up to the question's time;
- kept: a frame whose KV block is still readable at question time (on the device or the host), or a
  line of the stream's event timeline (the long-term level);
- chosen: a frame or timeline line the question read;
- answered: the answer was scored right.

Matching is by normalised words, so OCR's look-alike characters and plurals do not hide a match: text
is lower-cased and split into runs of letters and digits; 0 counts as o, 1 and i as l, 5 as s; a final
"s" is dropped from words of four or more characters; "GATE42" matches "gate 42" (phrases of five or
more characters also match inside the text with spaces removed). A phrase may list alternatives
separated by "|" ("espresso|cup|coffee"): any one of them is enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memory.words import normal_words as normal_words

if TYPE_CHECKING:
    from memory.stream_memory import StreamMemory
    from streamer.query import Answer

STEPS = ("perceived", "kept", "chosen", "answered")

# Words of an answer that say nothing a frame description could show.
_FILLER = frozenset({"a", "an", "the", "of", "and", "with", "in", "on", "at", "to", "it", "is", "was"})
_JOINED_MIN = 5


def _phrase_words(phrase: str) -> list[str]:
    words = [word for word in normal_words(phrase) if word not in _FILLER]
    return words or normal_words(phrase)


def mentions(text: str, phrase: str) -> bool:
    """Whether `text` shows `phrase` (or one of its "|" alternatives), by normalised words."""
    words = normal_words(text)
    present = set(words)
    joined = "".join(words)
    for alternative in phrase.split("|"):
        wanted = _phrase_words(alternative)
        if not wanted:
            continue
        if all(word in present for word in wanted):
            return True
        concatenated = "".join(wanted)
        if len(concatenated) >= _JOINED_MIN and concatenated in joined:
            return True
    return False


def shows_all(texts: Iterable[str], evidence: Sequence[str]) -> bool:
    """Whether every evidence phrase is shown by at least one of `texts`."""
    pool = list(texts)
    return all(any(mentions(text, phrase) for text in pool) for phrase in evidence)


@dataclass(frozen=True)
class FunnelRow:
    """One question's way through the funnel; `lost_at` is the first step it failed, None when answered."""

    perceived: bool
    kept: bool
    chosen: bool
    answered: bool

    @property
    def lost_at(self) -> str | None:
        if self.answered:
            return None
        for step in STEPS:
            if not getattr(self, step):
                return step
        return None

    def as_dict(self) -> dict[str, bool | str | None]:
        return {"perceived": self.perceived, "kept": self.kept, "chosen": self.chosen,
                "answered": self.answered, "lost_at": self.lost_at}  # fmt: skip


def trace(memory: StreamMemory, answer: Answer, phrases: Sequence[str]) -> tuple[bool, bool, bool]:
    """(perceived, kept, chosen) for an answer just given from `memory`, before more frames arrive."""
    from streamer.retrieval import timeline_line

    records = [record for record in memory.records if record.stream_time <= answer.as_of]
    perceived = [record.text for record in records]
    kept = [record.text for record in records if record.location != "gone"]
    kept += [timeline_line(item) for item in memory.timeline.view(answer.as_of)]
    read = set(answer.frames_read)
    chosen = [record.text for record in records if record.frame_id in read] + list(answer.lines_read)
    return shows_all(perceived, phrases), shows_all(kept, phrases), shows_all(chosen, phrases)


def seen_phrases(answer: str | None, options: Sequence[str] | None, seen: Sequence[str] | None) -> list[str]:
    """The phrases whose presence shows the answer was perceived: `seen` if given, else the correct
    option's text (when `answer` is a letter or an option), else `answer`; empty when there is no key."""
    if seen:
        return list(seen)
    if answer is None:
        return []
    if options:
        expected = answer.strip()
        if len(expected) == 1 and expected.upper().isalpha():
            index = ord(expected.upper()) - 65
            return [options[index]] if 0 <= index < len(options) else []
        return [expected]
    return [answer]


def rates(rows: Sequence[FunnelRow]) -> dict[str, float]:
    """The share of rows that passed each step."""
    if not rows:
        return {step: 0.0 for step in STEPS}
    return {step: sum(getattr(row, step) for row in rows) / len(rows) for step in STEPS}
