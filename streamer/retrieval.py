"""Choosing which resident frames a question reads: relevant ones, the recent window, named times.

A small language model answers far better from a few hundred relevant tokens than from thousands of
mostly unrelated ones, and reading fewer tokens is also faster. The context for a question is the
sink, then the chosen frame blocks in time order (re-positioned to be contiguous), then the question.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from memory.events import Showing, TimelineItem
from memory.index import zscore
from memory.stream_memory import Block, MemoryView
from streamer.clock import clock
from streamer.funnel import normal_words
from streamer.intent import QUESTION_WORDS, QuestionIntent, read_intent


@dataclass(frozen=True)
class Reading:
    """What one question reads: frame blocks (time order) and lines of the event timeline (time order).

    focus: frame ids of the blocks read for the question's subject (a named time, a showing, the most
    relevant frames), as opposed to the recent window every question reads; nearest the named time or
    most relevant first.
    """

    blocks: list[Block]
    lines: list[str] = field(default_factory=list)
    focus: list[int] = field(default_factory=list)


# Showings a timeline line lists at most: the first 3, the last 2, and the 3 nearest a time the question
# names. An item of a long stream is shown hundreds of times (a looping clip, a parked car), and a line
# that listed every showing would cost its prefill, and every answer that reads it, more each hour.
_FIRST_SHOWINGS, _LAST_SHOWINGS, _NEAR_SHOWINGS = 3, 2, 3


def timeline_line(item: TimelineItem, near: Sequence[float] = ()) -> str:
    """One line a language model reads, e.g. `"Kestrel" (text), shown 2 times: 00:42-00:46, 03:10-03:14`.

    The count is every showing; the spans listed are the first and last few and those nearest the times
    in `near`, the others summed up in place (`(40 more)`)."""
    shown = f'"{item.name}"' if item.kind == "text" else item.name
    showings = item.showings
    count = len(showings)
    kept = set(range(min(count, _FIRST_SHOWINGS))) | set(range(max(0, count - _LAST_SHOWINGS), count))
    for t in near:
        kept.update(heapq.nsmallest(_NEAR_SHOWINGS, range(count), key=functools.partial(_away, showings, t)))
    spans = []
    previous = -1
    for i in sorted(kept):
        if i > previous + 1:
            spans.append(f"({i - previous - 1} more)")
        first, last = clock(showings[i].first), clock(showings[i].last)
        spans.append(first if first == last else f"{first}-{last}")
        previous = i
    return f"{shown} ({item.kind}), shown {count} time{'s' if count != 1 else ''}: {', '.join(spans)}"


# Which kinds of item a question about written text, or about anything else, is about first.
_KIND_RANK = {"text": 0, "object": 1, "scene": 2, "colour": 3}
# Timeline lines read for what began at a named time, and per option of a multiple-choice question.
_ONSET_LINES = 6
_OPTION_LINES = 2


@functools.lru_cache(maxsize=65536)
def _name_words(name: str) -> tuple[str, ...]:
    """An item name's normalised words, question words left out (asked of every item by every question)."""
    return tuple(word for word in normal_words(name) if word not in QUESTION_WORDS)


def topic_items(timeline: Sequence[TimelineItem], intent: QuestionIntent, limit: int = 3) -> list[TimelineItem]:
    """The timeline items a question is about: those whose every name word is in the question, most words
    first (then text, objects, scenes); with none and a question about written text, every text item."""
    matched = []
    for item in timeline:
        words = _name_words(item.name)
        if words and all(word in intent.words for word in words):
            matched.append((-len(words), _KIND_RANK.get(item.kind, 3), item))
    if matched:
        matched.sort(key=lambda entry: entry[:2])
        return [item for _, _, item in matched[:limit]]
    if intent.text:
        return [item for item in timeline if item.kind == "text"]
    return []


def named_by(timeline: Sequence[TimelineItem], text: str, limit: int) -> list[TimelineItem]:
    """The timeline items whose every name word is in `text` (an option), most specific kind first."""
    words = set(normal_words(text)) - QUESTION_WORDS
    found = []
    for item in timeline:
        names = _name_words(item.name)
        if names and set(names) <= words:
            found.append(item)
    found.sort(key=lambda item: (_KIND_RANK.get(item.kind, 4), -len(item.name)))
    return found[:limit]


def began_near(timeline: Sequence[TimelineItem], times: Sequence[float], slack: float) -> list[TimelineItem]:
    """The items with a showing that began within `slack` seconds of one of `times`: what appeared then,
    as opposed to what was already on screen; most specific kind first."""
    found = [item for item in timeline if any(abs(s.first - t) <= slack for s in item.showings for t in times)]
    return sorted(found, key=lambda item: _KIND_RANK.get(item.kind, 4))


def showing_frames(items: Sequence[TimelineItem], recency: str) -> list[int]:
    """Frame ids of the newest ("latest") or oldest ("earliest") showing among `items`, of those held for
    more than one frame when there are any (a word read in a single frame is as often a misreading of
    passing footage as something shown)."""
    showings = [showing for item in items for showing in item.showings]
    showings = [showing for showing in showings if showing.last > showing.first] or showings
    if not showings:
        return []
    pick = max if recency == "latest" else min
    return list(pick(showings, key=lambda showing: showing.first).frame_ids)


@dataclass(frozen=True)
class Selection:
    """How a question chooses what it reads (see `select_reading`).

    top_k: frames read by relevance besides the recent window (0: every resident frame instead).
    window_seconds: the recent window every question reads. anchor_seconds: how near a named time a
    frame must be. lexical_weight: weight of the BM25 score of a frame's description against the
    question's words, fused with the embedding score (both z-scored over the candidates).
    coverage: choose the relevant frames by adaptive keyframe sampling (`adaptive_keyframes`) instead
    of the plain top-k, so they are not all from one moment when relevance does not stand out.
    intent: read what the question asks (recency, order, counts, the present) and the event timeline;
    False keeps to named times, the recent window and the relevant frames.
    """

    top_k: int = 4
    window_seconds: float = 8.0
    anchor_seconds: float = 3.0
    lexical_weight: float = 1.0
    coverage: bool = False
    intent: bool = True


def relevance(
    view: MemoryView, ids: np.ndarray, scores: np.ndarray, intent: QuestionIntent, lexical_weight: float
) -> np.ndarray:
    """The relevance (len(ids),) of frames `ids` (ascending): each one's z-scored embedding score plus
    `lexical_weight` times its z-scored BM25 score (`memory.frame_table.FrameTable.bm25`, over these
    frames), when any description shares a word with the question."""
    if not len(ids):
        return np.zeros(0, dtype=np.float32)
    fused = zscore(np.asarray(scores[ids - view.first], dtype=np.float32))
    if lexical_weight:
        lexical = view.table.bm25(ids, intent.words)
        if lexical.any():
            fused = fused + lexical_weight * zscore(lexical)
    return fused


def adaptive_keyframes(scores: Sequence[float], k: int, threshold: float = 1.0, depth: int = 2) -> list[int]:
    """Indices of `k` frames among `scores` (frames in time order), balancing relevance and coverage.

    Adaptive keyframe sampling (Tang et al., CVPR 2025): a span keeps its best `m` frames when they stand
    out (their mean score exceeds the span's mean by `threshold`, in the scores' units), or when `depth`
    splits have been made; otherwise it is halved in time and each half chooses half of `m`. Relevant
    moments are read in full; when nothing stands out, the frames spread over the stream.
    """

    def pick(low: int, high: int, m: int, level: int) -> list[int]:
        if m <= 0 or high <= low:
            return []
        span = range(low, high)
        best = sorted(span, key=lambda i: -scores[i])[:m]
        if level >= depth or high - low <= m:
            return best
        standing_out = float(np.mean([scores[i] for i in best])) - float(np.mean([scores[i] for i in span]))
        if standing_out > threshold:
            return best
        middle = (low + high) // 2
        return pick(low, middle, m - m // 2, level + 1) + pick(middle, high, m // 2, level + 1)

    return sorted(pick(0, len(scores), k, 0))


def select_reading(
    view: MemoryView,
    question: str,
    scores: np.ndarray | None,
    selection: Selection | None = None,
    options: Sequence[str] = (),
) -> Reading:
    """What a question reads, from resident and host blocks alike and the event timeline.

    top_k <= 0, or no scores to rank by, means every resident block (and nothing from the host or the
    timeline). Otherwise every block within `window_seconds` of the newest frame, and then, by what the
    question asks (`streamer.intent`):

    - a time it names: the blocks within `anchor_seconds` of it, and nothing else (frames from elsewhere
      that merely resemble them would compete with the evidence); when none is left, the timeline lines
      of what was shown then;
    - the most recent or first of something: the frames of the newest or oldest showing of the timeline
      items it is about (for written text with nothing more specific named, any text read);
    - how many times, or which came first: the lines of the timeline items it is about, which hold the
      counts and times, besides the `top_k` best-scoring blocks;
    - the present ("right now"): the recent window alone;
    - otherwise the `top_k` most relevant other blocks (`relevance`: the embedding `scores` of frames
      [view.first, view.frames), fused with BM25 over the descriptions), or `top_k` chosen for relevance
      and coverage.

    A question about written text reads, of the frames chosen by relevance, only frames that read text. Besides
    the blocks, a question that names a time reads the timeline lines of what began then, and a
    multiple-choice question the lines of the items its `options` name (when each was shown, how often).
    """
    settings = selection or Selection()
    top_k, window_seconds, anchor_seconds = settings.top_k, settings.window_seconds, settings.anchor_seconds
    if top_k <= 0 or scores is None:
        return Reading(list(view.blocks))
    intent = read_intent(question)
    if not settings.intent:
        intent = QuestionIntent(times=intent.times, words=intent.words)
    ids = view.ids
    times = view.table.times(ids)
    newest = view.as_of
    recent_mask = newest - times <= window_seconds
    recent = _blocks(view, ids[recent_mask])
    if intent.times:
        distance = np.abs(times[:, None] - np.asarray(intent.times)[None, :]).min(axis=1)
        anchored_mask = distance <= anchor_seconds
    else:
        distance = np.zeros(len(ids))
        anchored_mask = np.zeros(len(ids), dtype=bool)
    timeline = view.timeline if settings.intent else ()
    extra: list[TimelineItem] = []
    if intent.times:
        extra += began_near(timeline, intent.times, anchor_seconds)[:_ONSET_LINES]
    for option in options:
        extra += named_by(timeline, option, _OPTION_LINES)
    if anchored_mask.any():
        anchored = ids[anchored_mask]
        nearest = anchored[np.argsort(distance[anchored_mask], kind="stable")]
        return Reading(_in_time_order(_blocks(view, anchored) + recent), _lines(extra, intent.times), nearest.tolist())
    if intent.times and settings.intent:
        # The frames are gone, but the timeline still knows what was shown then.
        near = [item for item in timeline if _shown_near(item, intent.times, anchor_seconds)]
        near.sort(key=lambda item: _KIND_RANK.get(item.kind, 4))
        if near:
            return Reading(_in_time_order(recent), _lines([*near[:_ONSET_LINES], *extra], intent.times))
    if intent.now and not (intent.count or intent.order):
        return Reading(_in_time_order(recent), _lines(extra, intent.times))
    topic = topic_items(timeline, intent)
    lines = _lines([*(topic[:3] if intent.count or intent.order else []), *extra], intent.times)
    if intent.recency is not None and topic:
        shown = _blocks(view, sorted(set(showing_frames(topic, intent.recency))))
        if shown:
            return Reading(_in_time_order(shown + recent), lines, _ids(shown))
    others = ids[~recent_mask]
    if intent.text and not (intent.count or intent.order):
        # About written text: the most relevant of the frames that read some.
        reading_text = view.table.reads_text(others)
        if reading_text.any():
            others = others[reading_text]
    fused = relevance(view, others, scores, intent, settings.lexical_weight)
    if settings.coverage:
        order = adaptive_keyframes(fused.tolist(), top_k)
        order.sort(key=lambda i: -fused[i])
    else:
        order = [int(i) for i in np.argsort(-fused, kind="stable")[:top_k]]
    picked = _blocks(view, [int(others[i]) for i in order])
    return Reading(_in_time_order(recent + picked), lines, [b.record.frame_id for b in picked])


def _blocks(view: MemoryView, ids: Iterable[int]) -> list[Block]:
    """The view's blocks of frames `ids` (in that order), skipping frames it cannot read."""
    by_id = view.by_id
    return [by_id[i] for i in map(int, ids) if i in by_id]


def _away(showings: Sequence[Showing], t: float, index: int) -> float:
    """Seconds from time `t` to showing `index` (0 within it)."""
    showing = showings[index]
    return max(showing.first - t, t - showing.last, 0.0)


def _lines(items: Sequence[TimelineItem], near: Sequence[float] = ()) -> list[str]:
    """The items' timeline lines, each once, ordered by first showing; `near`: times the question names."""
    unique = {(item.kind, item.name): item for item in items}
    ordered = sorted(unique.values(), key=lambda item: (item.first, item.kind, item.name))
    return [timeline_line(item, near) for item in ordered]


def _shown_near(item: TimelineItem, times: Sequence[float], slack: float) -> bool:
    return any(s.first - slack <= t <= s.last + slack for s in item.showings for t in times)


def _ids(blocks: Sequence[Block]) -> list[int]:
    return sorted(b.record.frame_id for b in blocks)


def _in_time_order(blocks: Sequence[Block]) -> list[Block]:
    unique = {b.record.frame_id: b for b in blocks}
    return sorted(unique.values(), key=lambda b: b.record.frame_id)
