"""Standing questions: "tell me when the sign says CLOSED", checked as the stream goes, firing once per episode.

A watch is a condition on one stream. The engine checks it on every clear frame (where the video
changed: the curvature policy's peaks) and at least every `every_s` seconds of stream time between
them, so many watches on a stream cost little while nothing happens. A check gives `p_yes`, how
strongly the stream shows the condition now:

- With an adapter that describes its frames (the embedded stack), from the memory's event timeline: the
  condition's quoted or capitalised words are text a frame must read, its other content words things a
  frame must show (an object, a scene label, a colour). Each word showing now counts as sure as the
  perceivers that named it at its latest look: a detection's score, a scene label's probability (labels
  of one word, "tabby cat" and "Egyptian cat", add up: they are classes of one softmax), text read and
  colours 1; perceivers that both name it (the detector and the classifier) are independent, so the
  word's confidence is 1 - (1 - detection)(1 - label). `p_yes` is the mean over the condition's words (0
  for a word not showing). A showing ends only at a frame that looked for the item and did not find it,
  so a fuzzy frame's terse description (no OCR, no detector) neither starts nor ends an episode about text
  or objects, and cannot lower a word's confidence. A small language model reading descriptions cannot
  answer yes or no better than chance (SmolLM2-135M gave P(yes) 0.13 to 0.15 whether or not the sign it
  was asked about had been read), which is why the descriptions decide here.
- With image tokens (a vision-language model), from the model: one forward pass of the condition as a
  yes/no question over the sink and the frames of the last `RECENT_S` seconds, no generation;
  `p_yes = P(yes) / (P(yes) + P(no))` of the first answer token.

A check is a look: a frame the policy left fuzzy is described in full when a watch of its stream is due
(`Engine.push_frames` asks `Watches.wants_look`), so the timeline a check reads is as fresh as the frame,
and at least every `every_s` seconds something looks for text and objects even where the video barely
changes (a sign that appears without moving much). A watch is also due at a new picture, a frame whose
features stepped at least `NEW_PICTURE_STEP` from the previous frame's: the memory's policy keeps only
what is unusual for its last frames clear, so after a run of cuts a sign's first frame can be fuzzy, and
waiting for the heartbeat would cost up to `every_s` of latency. Every frame described in full is
checked by every watch of its stream (a check reads the timeline: a fraction of a millisecond).

Hysteresis turns the checks into episodes: an episode starts when `p_yes >= on` has been seen by
`confirm` looks in a row (default 2: the look that saw it and the next frame, described in full to check
it; detectors and OCR err on single frames, and a recorder's tracker likewise wants a few detections
before it believes an object) and has held for `hold_s`; while a start is pending every frame is looked
at and checked. An episode ends at the first check with `p_yes < off`, and after an end no episode starts
for `cooldown_s`. Each episode has one `event_id`, a start event and an end event.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from memory.events import TimelineItem
from memory.records import FrameRecord
from memory.stream_memory import MemoryView, StreamMemory
from streamer.adapters.base import ModelAdapter
from streamer.clock import clock
from streamer.funnel import normal_words
from streamer.intent import QUESTION_WORDS

# Seconds of the newest frames a model-read check reads (at least one frame at any sampling rate above 0.2 fps).
RECENT_S = 5.0
# Default thresholds of p_yes, calibrated on the watch suite's development streams (README, "Standing questions").
DEFAULT_ON = 0.9
DEFAULT_OFF = 0.5
# A frame whose unit feature vector moved at least this far from the previous frame's shows a new picture (a
# cut, or something held up to the camera). At 1 fps, steps inside a shot measure 0.2-0.4 and a sign's first
# frame or a new shot 1.0-1.7 (EfficientNet-Lite0 features; see `memory.curvature`).
NEW_PICTURE_STEP = 0.8

_LEAD = re.compile(
    r"^\s*(?:please\s+)?(?:(?:tell|notify|alert|warn|ping|show)\s+(?:me|us)?\s*)?"
    r"(?:when(?:ever)?|if|once|as soon as)\s+",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'|“([^”]+)”")
_CAPITALS = re.compile(r"\b[A-Z0-9][A-Z0-9-]*[A-Z0-9]\b")
_SAYS = re.compile(r"\b(?:says?|saying|reads?|reading|written|spells?)\s+([A-Za-z0-9-]+)", re.IGNORECASE)
# Words of a watch that frame it and name nothing a frame could show (what carries text is framing too:
# the text itself is what must be read).
_WATCH_WORDS = frozenset(
    normal_words(
        """alert notify warn ping tell whenever once soon someone something anything enters entered enter arrives
        arrive arrived comes come came goes go went leaves leave left passes pass starts start begins begin stops
        stop there here into onto up out sign label board display banner poster notice"""
    )
)
_event_ids = itertools.count(1)


@dataclass(frozen=True)
class WatchSpec:
    """What a watch looks for and how it turns checks into episodes (see the module docstring)."""

    text: str
    every_s: float = 5.0
    hold_s: float = 2.0
    cooldown_s: float = 10.0
    on: float = DEFAULT_ON
    off: float = DEFAULT_OFF
    confirm: int = 2

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("A watch needs a condition, e.g. 'tell me when the sign says CLOSED'.")
        if self.every_s <= 0 or self.hold_s < 0 or self.cooldown_s < 0:
            raise ValueError("every_s must be positive, hold_s and cooldown_s zero or more.")
        if self.confirm < 1:
            raise ValueError(f"confirm is the looks that must agree before a start, 1 or more; got {self.confirm}.")
        if not 0 < self.off <= self.on <= 1:
            raise ValueError(f"Watch thresholds need 0 < off <= on <= 1, got on {self.on:g}, off {self.off:g}.")

    @classmethod
    def of(cls, fields: Any) -> WatchSpec:
        """The spec of a client's or a config file's watch (text, every_s, hold_s, cooldown_s, confirm, on); an
        `on` below the default `off` lowers `off` with it."""
        on = float(fields.on)
        return cls(
            fields.text, fields.every_s, fields.hold_s, fields.cooldown_s, on, min(DEFAULT_OFF, on), fields.confirm
        )


@dataclass(frozen=True)
class Condition:
    """The words a frame must show for a watch: text it reads, and things it names (objects, scenes, colours)."""

    texts: tuple[str, ...]
    things: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.texts + self.things


def parse_condition(text: str) -> Condition:
    """ "tell me when the sign says CLOSED" -> texts ("closed",), things (); "alert when a cat appears" ->
    things ("cat",). Quoted, capitalised and said words are text; other content words are things."""
    body = _LEAD.sub("", text, count=1)
    read: list[str] = []
    for match in _QUOTED.finditer(body):
        read += normal_words(next(group for group in match.groups() if group))
    unquoted = _QUOTED.sub(" ", body)
    for word in _CAPITALS.findall(unquoted) + _SAYS.findall(unquoted):
        read += normal_words(word)
    texts = tuple(dict.fromkeys(word for word in read if word not in QUESTION_WORDS))
    framing = QUESTION_WORDS | _WATCH_WORDS | set(texts)
    things = tuple(dict.fromkeys(word for word in normal_words(unquoted) if word not in framing and len(word) > 1))
    return Condition(texts, things)


@dataclass(frozen=True)
class WatchReading:
    """What one check found: `p_yes`, since when the condition has held (`onset`), and the frame times
    that show it (`evidence`, [t0, t1] spans) with a one-line account (`text`). `looked`: the check read a
    frame that looked for everything (a fully described frame, or image tokens), so it can confirm a start."""

    p_yes: float
    onset: float | None = None
    evidence: tuple[tuple[float, float], ...] = ()
    text: str = ""
    looked: bool = True


def read_timeline(
    condition: Condition, items: Sequence[TimelineItem], sure: Mapping[str, float] | None = None
) -> WatchReading:
    """The condition against the event timeline as of a check: the mean over its words of how sure the stream
    is of each one now (`sure[word]`, 1 when not given; 0 for a word not showing)."""
    if not condition.words:
        return WatchReading(0.0)
    showing: dict[str, tuple[TimelineItem, float, float]] = {}
    for item in items:
        current = item.showings[-1]
        if current.ended:
            continue
        named = set(normal_words(item.name))
        # Text must be read; things must be seen (an object, a scene label or a colour).
        for word in condition.texts if item.kind == "text" else condition.things:
            earlier = showing.get(word)
            if word in named and (earlier is None or current.first < earlier[1]):
                showing[word] = (item, current.first, current.last)
    if not showing:
        return WatchReading(0.0)
    sure = sure or {}
    p_yes = sum(sure.get(word, 1.0) for word in showing) / len(condition.words)
    onset = max(first for _, first, _ in showing.values())
    spans = tuple(sorted({(first, last) for _, first, last in showing.values()}))
    seen = sorted({(item.kind, item.name) for item, _, _ in showing.values()})
    text = ", ".join(f'"{name}"' if kind == "text" else name for kind, name in seen)
    return WatchReading(p_yes, onset, spans, f"{text} on screen since {clock(onset)}")


def word_confidence(condition: Condition, named: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """How sure one frame's description is of each of the condition's words it names, from the confidence of
    each (kind, name) item: scene labels of the word add up (disjoint classes of one classifier), other kinds
    take their best item, and the kinds (independent perceivers) combine as 1 - prod(1 - confidence)."""
    by_kind: dict[str, dict[str, float]] = {}
    for (kind, name), confidence in named.items():
        words = set(normal_words(name))
        for word in condition.texts if kind == "text" else condition.things:
            if word in words:
                kinds = by_kind.setdefault(word, {})
                earlier = kinds.get(kind, 0.0)
                kinds[kind] = min(1.0, earlier + confidence) if kind == "scene" else max(earlier, confidence)
    return {word: 1.0 - math.prod(1.0 - c for c in kinds.values()) for word, kinds in by_kind.items()}


def yes_no_ids(adapter: ModelAdapter) -> tuple[list[int], list[int]]:
    """The first token ids of "yes" and "no" as an answer may begin them (capitalised, after a space)."""
    found: list[list[int]] = []
    for words in (("Yes", " Yes", "yes", " yes"), ("No", " No", "no", " no")):
        ids = {int(adapter.ids(word)[0, 0]) for word in words if adapter.ids(word).shape[1]}
        found.append(sorted(ids))
    return found[0], found[1]


def read_model(adapter: ModelAdapter, view: MemoryView, condition: str, recent_s: float = RECENT_S) -> WatchReading:
    """The condition as a yes/no question over the sink and the frames of the last `recent_s` seconds: one
    forward pass, p_yes = P(yes) / (P(yes) + P(no)) of the first answer token."""
    recent = [block for block in view.blocks if block.record.stream_time > view.as_of - recent_s]
    if not recent:
        return WatchReading(0.0)
    body = _LEAD.sub("", condition.strip(), count=1).rstrip(" ?.!")
    question = f"Is this true now: {body}? Answer yes or no."
    cache = view.context(recent, adapter.rotate_keys)
    try:
        logits = adapter.next_token_logits(adapter.question_embeds(question), cache)
    finally:
        if cache is not view.cache:
            cache.close()
    yes, no = yes_no_ids(adapter)
    scores = torch.log_softmax(logits, -1)
    p_yes = float(torch.sigmoid(torch.logsumexp(scores[yes], 0) - torch.logsumexp(scores[no], 0)))
    first, last = recent[0].record.stream_time, recent[-1].record.stream_time
    return WatchReading(p_yes, first, ((first, last),), f"{body} (the model says yes with p {p_yes:.2f})")


@dataclass(frozen=True)
class WatchEvent:
    """An episode's start or end, as every client attached to the stream receives it.

    t_onset: stream time the condition began to hold (its first frame); t_detected: the stream time of
    the check that fired; as_of: the newest frame the check read; evidence: [t0, t1] spans of the frames
    that show it.
    """

    watch_id: str
    stream_id: str
    event_id: str
    phase: Literal["start", "end"]
    t_onset: float
    t_detected: float
    as_of: float
    p_yes: float
    text: str
    evidence: list[list[float]] = field(default_factory=list)


@dataclass
class WatchState:
    """One watch's hysteresis, fed its checks in stream order."""

    watch_id: str
    stream_id: str
    spec: WatchSpec
    condition: Condition
    checks: int = 0
    events: int = 0
    check_ms: float = 0.0  # milliseconds spent reading the stream for this watch, all checks
    last_check: float | None = None
    high_since: float | None = None  # stream time of the first check of the current run at or above `on`
    high_looks: int = 0  # looks of the current run at or above `on`
    episode: str | None = None  # the open episode's event id
    onset: float = 0.0
    ended_at: float | None = None
    sure: dict[str, float] = field(default_factory=dict)  # each word's confidence at its latest sighting

    def saw(self, named: Mapping[tuple[str, str], float], looked: bool) -> None:
        """Take the confidences of what a checked frame's description names: a look sets every word's (a word
        it did not name is not showing); a terse description ran fewer perceivers, so it can only raise one."""
        found = word_confidence(self.condition, named)
        if looked:
            self.sure = found
        else:
            for word, confidence in found.items():
                self.sure[word] = max(confidence, self.sure.get(word, 0.0))

    def due(self, stream_time: float, clear: bool) -> bool:
        """Whether a frame at `stream_time` is checked: every clear frame, every frame while a start waits for
        its confirming looks or its `hold_s`, else once `every_s` has passed."""
        if clear or self.last_check is None or (self.high_since is not None and self.episode is None):
            return True
        return stream_time - self.last_check >= self.spec.every_s

    def update(self, stream_time: float, reading: WatchReading) -> WatchEvent | None:
        """Take one check's reading; the event it causes, if any."""
        self.checks += 1
        self.last_check = stream_time
        spec = self.spec
        if self.episode is not None:
            if reading.p_yes >= spec.off:
                return None
            event = self._event("end", stream_time, reading, self.onset)
            self.episode, self.high_since, self.high_looks, self.ended_at = None, None, 0, stream_time
            return event
        if reading.p_yes < spec.on:
            self.high_since, self.high_looks = None, 0
            return None
        if self.ended_at is not None and stream_time - self.ended_at < spec.cooldown_s:
            return None
        if self.high_since is None:
            self.high_since = stream_time
        self.high_looks += reading.looked
        if stream_time - self.high_since < spec.hold_s or self.high_looks < spec.confirm:
            return None
        self.episode = f"e{next(_event_ids)}"
        self.onset = reading.onset if reading.onset is not None else self.high_since
        return self._event("start", stream_time, reading, self.onset)

    def _event(
        self, phase: Literal["start", "end"], stream_time: float, reading: WatchReading, onset: float
    ) -> WatchEvent:
        assert self.episode is not None
        return WatchEvent(
            self.watch_id,
            self.stream_id,
            self.episode,
            phase,
            round(onset, 3),
            round(stream_time, 3),
            round(stream_time, 3),
            round(reading.p_yes, 3),
            reading.text if phase == "start" else f"no longer on screen ({self.spec.text.strip()})",
            [[round(t0, 3), round(t1, 3)] for t0, t1 in reading.evidence],
        )


@dataclass(frozen=True)
class WatchInfo:
    """A watch as a client lists it."""

    watch_id: str
    stream_id: str
    spec: WatchSpec
    checks: int
    active: bool  # an episode is open
    last_check: float | None
    events: int = 0
    check_ms: float = 0.0


EVENTS_KEPT = 1000
EventListener = Callable[[WatchEvent], None]


class Watches:
    """The watches of an engine's streams, their recent events, and who is told of new ones.

    Checks run in the thread that ingests the frame (`Engine.push_frames`), after the frame is in memory;
    listeners are called there too, so they must only hand the event on (the server queues it for its
    event loop).
    """

    def __init__(self) -> None:
        self._states: dict[str, WatchState] = {}
        self._events: deque[tuple[int, WatchEvent]] = deque(maxlen=EVENTS_KEPT)
        self._sequence = itertools.count(1)
        self._listeners: list[EventListener] = []
        self._lock = threading.Lock()

    def add(self, stream_id: str, spec: WatchSpec, watch_id: str | None = None) -> WatchInfo:
        watch_id = watch_id or f"w{uuid.uuid4().hex[:10]}"
        with self._lock:
            if watch_id in self._states:
                raise ValueError(f"A watch named '{watch_id}' already exists; pick another watch_id.")
            state = self._states[watch_id] = WatchState(watch_id, stream_id, spec, parse_condition(spec.text))
        return _info(state)

    def remove(self, watch_id: str) -> bool:
        with self._lock:
            return self._states.pop(watch_id, None) is not None

    def remove_stream(self, stream_id: str) -> None:
        with self._lock:
            for watch_id in [w for w, state in self._states.items() if state.stream_id == stream_id]:
                del self._states[watch_id]

    def of_stream(self, stream_id: str | None = None) -> list[WatchInfo]:
        with self._lock:
            states = list(self._states.values())
        return [_info(state) for state in states if stream_id is None or state.stream_id == stream_id]

    def events(self, since: int = 0) -> list[tuple[int, WatchEvent]]:
        """The events kept (the newest EVENTS_KEPT), each with its sequence number, after `since`."""
        with self._lock:
            return [(number, event) for number, event in self._events if number > since]

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener` with every new event; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def check(
        self,
        stream_id: str,
        record: FrameRecord,
        memory: StreamMemory,
        adapter: ModelAdapter,
        confidence: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        """Check the stream's watches that are due at the frame just stored (`record`): every watch on a clear
        frame (one the policy scored clear) or one described in full, the others once their `every_s` has
        passed. `confidence`: how sure the description is of each item of `record.items` (1 where missing)."""
        t = record.stream_time
        looked = record.detail == "full"
        due = self.due(stream_id, t, clear=record.tier == "clear" or looked)
        if not due:
            return
        if adapter.describes_frames:
            started = time.perf_counter()
            items = memory.timeline.view(t)
            named = {item: (confidence or {}).get(item, 1.0) for item in record.items}
            shared_ms = (time.perf_counter() - started) * 1000 / len(due)
            for state in due:
                started = time.perf_counter()
                state.saw(named, looked)
                reading = dataclasses.replace(read_timeline(state.condition, items, state.sure), looked=looked)
                self.record(state, t, reading, shared_ms + (time.perf_counter() - started) * 1000)
            return
        view = memory.view()
        try:
            for state in due:
                started = time.perf_counter()
                reading = read_model(adapter, view, state.spec.text)
                self.record(state, t, reading, (time.perf_counter() - started) * 1000)
        finally:
            view.close()

    def due(self, stream_id: str, stream_time: float, clear: bool) -> list[WatchState]:
        with self._lock:
            return [s for s in self._states.values() if s.stream_id == stream_id and s.due(stream_time, clear)]

    def wants_look(self, stream_id: str, stream_time: float, step: float = 0.0) -> bool:
        """Whether a frame at `stream_time` that the policy left fuzzy should be described in full anyway: the
        stream has a watch and the frame is a new picture (its features moved `step` >= NEW_PICTURE_STEP from
        the previous frame's), or a watch is due (its heartbeat, or a start waiting for its confirming look)."""
        return bool(self.due(stream_id, stream_time, clear=step >= NEW_PICTURE_STEP))

    def record(
        self, state: WatchState, stream_time: float, reading: WatchReading, ms: float = 0.0
    ) -> WatchEvent | None:
        """Feed one check (which took `ms` milliseconds) to its watch; a resulting event is kept and handed to the
        listeners."""
        with self._lock:
            if self._states.get(state.watch_id) is not state:
                return None  # deleted while it was being checked
            state.check_ms += ms
            event = state.update(stream_time, reading)
            if event is not None:
                state.events += 1
                self._events.append((next(self._sequence), event))
        if event is not None:
            for listener in list(self._listeners):
                listener(event)
        return event


def _info(state: WatchState) -> WatchInfo:
    return WatchInfo(
        state.watch_id,
        state.stream_id,
        state.spec,
        state.checks,
        state.episode is not None,
        state.last_check,
        state.events,
        state.check_ms,
    )
