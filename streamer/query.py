"""Answering a question from a view of a stream's memory: only the question and the answer are new tokens.

The view's cache already holds the system prompt and every resident frame; the question is
prefilled after them, then tokens are generated greedily and streamed as text deltas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import torch

from memory.kv_cache import StreamingCache, assemble
from memory.stream_memory import Block, MemoryView
from memory.words import words
from streamer.adapters.base import ModelAdapter
from streamer.clock import clock
from streamer.decoding import TokenPicker
from streamer.engine_config import ChoiceScoring
from streamer.grounding import (
    choices_named,
    colours_appeared,
    count_answer,
    on_screen,
    option_choice,
    texts_read,
    things_appeared,
    timeline_facts,
)
from streamer.intent import LETTERS, read_intent
from streamer.retrieval import Reading

TIMELINE_HEADER = "Events so far:\n"

_STOPWORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or that the this to was were what
    which who with word written sign shown shows seen see frame frames video screen there their they
    answer question time animal object objects scene text colour colours color colors now""".split()
)


@dataclass
class Answer:
    """A finished answer with its timing and the stream times of the frames that support it."""

    question: str
    text: str
    as_of: float
    ttft_ms: float
    latency_ms: float
    evidence: list[list[float]] = field(default_factory=list)
    tokens: int = 0
    cancelled: bool = False
    frames_read: list[int] = field(default_factory=list)  # frame ids of the blocks the question read
    lines_read: list[str] = field(default_factory=list)  # event timeline lines the question read


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if len(w) > 2 and w not in _STOPWORDS}


def evidence_spans(
    answer: str, blocks: Sequence[Block], merge_gap: float = 2.0, by_words: bool = True
) -> list[list[float]]:
    """Time spans of the frames read whose descriptions share content words with the answer; of every
    frame read when `by_words` is False (image frames carry no description to match).

    Frames closer than `merge_gap` seconds join one span [t0, t1].
    """
    if by_words:
        words = content_words(answer)
        times = [b.record.stream_time for b in blocks if words & content_words(b.record.text)] if words else []
    else:
        times = sorted(b.record.stream_time for b in blocks)
    spans: list[list[float]] = []
    for t in times:
        if spans and t - spans[-1][1] <= merge_gap:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return spans


class TextStream:
    """Turns generated token ids into text deltas, holding back incomplete multi-byte characters."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.adapter.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    @property
    def text(self) -> str:
        return self.adapter.decode(self.ids)


def reread_context(adapter: ModelAdapter, view: MemoryView, chosen: Sequence[Block]) -> StreamingCache:
    """A cache of `[sink | chosen blocks in time order]` where each block with token ids is read again.

    The sink's KV is reused; a block whose record has `token_ids` (the tokens it still holds) is
    prefilled after the blocks before it, as in one fresh pass over the chosen frames; a block without
    them (image tokens, pooled tokens) is appended from its cached KV.
    """
    rotate = adapter.rotate_keys
    cache = assemble([view.cache.segment(0, view.sink_tokens)], rotate, device=view.cache.keys(0).device)
    ordered = sorted(chosen, key=lambda b: b.record.frame_id)
    # Runs of consecutive text blocks are prefilled in one pass each.
    for readable, run in groupby(ordered, key=lambda b: b.record.token_ids is not None):
        if readable:
            ids = [token for block in run for token in block.record.token_ids or ()]
            adapter.prefill(adapter.embed_ids(torch.tensor([ids], device=adapter.device)), cache)
        else:
            for block in run:
                cache.append(block.segment(view.cache), rotate)
    return cache


def option_scores(
    adapter: ModelAdapter,
    context: ModelContext,
    options: Sequence[str],
    scoring: str,
    lettered: bool = True,
) -> list[float]:
    """One score per option, higher is likelier, from the answer's first-token `logits` after the question.

    "letter": the logit of the option's letter (as the answer's first token, with or without a leading
    space); otherwise the mean per-token log-likelihood of "<letter>. <option>" as the answer (of the
    option alone when not `lettered`: candidates that the question does not list).
    """
    scores = []
    for index, option in enumerate(options):
        letter = LETTERS[index]
        if scoring == "letter" and lettered:
            firsts = {int(adapter.ids(variant)[0, 0]) for variant in (letter, " " + letter)}
            scores.append(max(float(context.logits[i]) for i in firsts))
        else:
            ids = adapter.ids(f"{letter}. {option}" if lettered else option)[0].tolist()
            scores.append(adapter.continuation_log_likelihood(context.logits, ids, context.cache) / max(1, len(ids)))
    return scores


def _likeliest(
    adapter: ModelAdapter,
    context: ModelContext,
    options: Sequence[str],
    among: Sequence[int],
    scoring: str,
    lettered: bool = True,
) -> int:
    """The index in `options` of the likeliest of the options `among` (no model pass when only one is left)."""
    if len(among) == 1:
        return among[0]
    scores = option_scores(adapter, context, options, scoring, lettered)
    return max(among, key=lambda index: scores[index])


def grounded_open_answer(
    adapter: ModelAdapter,
    context: ModelContext,
    question: str,
    reading: Reading,
    texts: Sequence[str],
    slack: float = 3.0,
) -> str | None:
    """An open question's answer taken from what it read, or None for the language model to write:
    a count from the timeline; one of the alternatives the question offers ("X or Y?"); the colour, or the
    things, that appeared at a named time; or the text the question's frames read, with the time it was read."""
    intent = read_intent(question)
    facts = timeline_facts(texts)
    if intent.count:
        counted = count_answer(intent, facts)
        if counted is not None:
            return counted
    choices = choices_named(question)
    if choices:
        among, _ = option_choice(question, intent, choices, texts, adapter.embed_sentences, slack)
        return choices[_likeliest(adapter, context, choices, among, "text", lettered=False)]
    colours = colours_appeared(question, intent, facts, slack)
    if colours:
        return colours[_likeliest(adapter, context, colours, range(len(colours)), "text", lettered=False)]
    things = things_appeared(question, intent, facts, slack)
    if things:
        return ", ".join(things)
    if intent.now and not (intent.text or intent.count or intent.order):
        shown = on_screen([(b.record.stream_time, b.record.text) for b in reading.blocks])
        if shown is not None:
            return f"{shown[1]} (at {clock(shown[0])})"
    if intent.text:
        by_id = {b.record.frame_id: b for b in reading.blocks}
        focus = [by_id[frame_id].record.text for frame_id in reading.focus if frame_id in by_id]
        read = texts_read([*focus, *reading.lines]) or texts_read(texts)
        if read:
            # The text of the frame nearest the named time, or the most relevant one.
            chosen = read[0]
            when = [b.record.stream_time for b in reading.blocks if f'"{chosen}"' in b.record.text]
            return f'"{chosen}"' + (f" (at {clock(when[0])})" if when else "")
    return None


def subject_texts(question: str, reading: Reading) -> list[str]:
    """What an answer is checked against: for a question about a named time or the newest or first showing
    of something, the descriptions of the frames read for it (not the recent window, whose frames show
    something else) and the timeline lines; otherwise every description read and the lines."""
    intent = read_intent(question)
    blocks = reading.blocks
    if (intent.times or intent.recency is not None) and reading.focus:
        wanted = set(reading.focus)
        blocks = [b for b in blocks if b.record.frame_id in wanted]
    return [b.record.text for b in blocks] + list(reading.lines)


class ModelContext:
    """The model's side of one answer, `[sink | chosen blocks | timeline lines | question]` and the first
    answer token's logits, built the first time a step needs them: an answer that what was read decides
    (a supported option, a count, a text read) is given without any model pass, so its TTFT is the choice
    of frames and the grounding alone."""

    def __init__(self, build: Callable[[], tuple[StreamingCache, torch.Tensor]]) -> None:
        self._build = build
        self._built: tuple[StreamingCache, torch.Tensor] | None = None

    def _get(self) -> tuple[StreamingCache, torch.Tensor]:
        if self._built is None:
            self._built = self._build()
        return self._built

    @property
    def cache(self) -> StreamingCache:
        return self._get()[0]

    @property
    def logits(self) -> torch.Tensor:
        return self._get()[1]

    def close(self) -> None:
        if self._built is not None:
            self._built[0].close()


def answer_context(
    adapter: ModelAdapter, view: MemoryView, reading: Reading, reread: bool
) -> tuple[StreamingCache, torch.Tensor | None]:
    """`[sink | chosen blocks]` for one question, blocks from their cached KV or, with `reread`, read again
    (`reread_context`); and the embeds of its timeline lines (None without lines), to be read after them
    in the same pass as the question."""
    blocks = reading.blocks
    cache = reread_context(adapter, view, blocks) if reread else view.context(blocks, adapter.rotate_keys)
    if not reading.lines:
        return cache, None
    return cache, adapter.embed_text(TIMELINE_HEADER + "".join(line + "\n" for line in reading.lines))


def generate_answer(
    adapter: ModelAdapter,
    view: MemoryView,
    reading: Reading,
    question: str,
    options: Sequence[str] | None = None,
    max_new_tokens: int = 48,
    max_question_tokens: int = 64,
    cancel: threading.Event | None = None,
    reread: bool = False,
    choice_scoring: ChoiceScoring = "grounded",
    controls: bool = True,
    grounded: bool = True,
    anchor_seconds: float = 3.0,
    started: float | None = None,
) -> Generator[str, None, Answer]:
    """Yield text deltas of the answer; the generator's return value is the finished `Answer`.

    The context is `answer_context`, then `question` as given (a multiple-choice question lists its options
    in it, e.g. with `streamer.intent.options_prompt`); the view is closed at the end. With `options`, the answer is
    the chosen option, "<letter>. <option>", in one delta, so it cannot name two options: with
    `choice_scoring` "grounded", the options the read texts support best (`streamer.grounding`), and among
    those the likeliest letter; "letter" or "text", the likeliest letter or option text alone; "generate",
    free text like an open question. With `grounded`, an open question that the read texts answer (a
    count, one of the alternatives it offers, written text) is answered from them (`grounded_open_answer`).
    Otherwise tokens are generated greedily, one line at most, with the answer's own repeated tokens
    penalised and no three-token sequence repeated (`TokenPicker`: the rules of transformers' repetition
    penalty and no-repeat n-gram processors), so an answer cannot loop; `controls` False generates
    without the penalties and the one-line stop. TTFT and latency count from `started`
    (`time.perf_counter()` when the question was taken, before its frames were chosen).
    """
    start = time.perf_counter() if started is None else started

    def read() -> tuple[StreamingCache, torch.Tensor]:
        cache, lines = answer_context(adapter, view, reading, reread)
        embeds = adapter.question_embeds(question)
        limit = max_question_tokens * (4 if options else 1)
        if embeds.shape[1] > limit:
            # keep the end: it carries the chat turn that opens the answer
            embeds = torch.cat([embeds[:, : limit // 2], embeds[:, -limit // 2 :]], 1)
        if lines is not None:  # one pass for the lines and the question
            embeds = torch.cat([lines, embeds], 1)
        return cache, adapter.next_token_logits(embeds, cache)

    context = ModelContext(read)
    stream = TextStream(adapter)
    ttft_ms = 0.0
    cancelled = False
    texts = subject_texts(question, reading)
    try:
        fixed: str | None = None
        if options and choice_scoring != "generate":
            among: Sequence[int] = range(len(options))
            if choice_scoring == "grounded":
                intent = read_intent(question)
                among, _ = option_choice(question, intent, options, texts, adapter.embed_sentences, anchor_seconds)
            best = _likeliest(adapter, context, options, among, "text" if choice_scoring == "text" else "letter")
            fixed = f"{LETTERS[best]}. {options[best]}"
        elif grounded and not options:
            fixed = grounded_open_answer(adapter, context, question, reading, texts, anchor_seconds)
        if fixed is not None:
            text = fixed
            ttft_ms = (time.perf_counter() - start) * 1000
            yield text
        else:
            ttft_ms, cancelled = yield from _generate(
                adapter, context.logits, context.cache, stream, max_new_tokens, cancel, start, controls
            )
            text = stream.text.strip()
            if controls:
                text = text.split("\n")[0].strip()
    finally:
        context.close()
        view.close()
    latency_ms = (time.perf_counter() - start) * 1000
    return Answer(
        question=question,
        text=text,
        as_of=view.as_of,
        ttft_ms=ttft_ms or latency_ms,
        latency_ms=latency_ms,
        evidence=evidence_spans(text, reading.blocks, by_words=adapter.describes_frames),
        tokens=len(stream.ids),
        cancelled=cancelled,
        frames_read=[block.record.frame_id for block in reading.blocks],
        lines_read=list(reading.lines),
    )


def _generate(
    adapter: ModelAdapter,
    logits: torch.Tensor,
    cache: StreamingCache,
    stream: TextStream,
    max_new_tokens: int,
    cancel: threading.Event | None,
    start: float,
    controls: bool = True,
) -> Generator[str, None, tuple[float, bool]]:
    """Greedy decoding into `stream`, yielding text deltas; returns (TTFT ms, cancelled).

    With `controls`: repeats penalised (the answer's own tokens, not the question's context, so an
    answer may still copy what a frame read), one line at most."""
    ttft_ms = 0.0
    tokens = answer_tokens(adapter, logits, cache, TokenPicker(controls), max_new_tokens)
    try:
        for step, token in enumerate(tokens):
            if adapter.is_stop(token):
                break
            delta = stream.push(token)
            if step == 0:
                ttft_ms = (time.perf_counter() - start) * 1000
            if controls and "\n" in delta and stream.text.strip():
                # One line: what follows a line break is a second answer, not more of this one.
                kept = delta.split("\n")[0]
                if kept:
                    yield kept
                break
            if delta:
                yield delta
            if cancel is not None and cancel.is_set():
                return ttft_ms, True
    finally:
        tokens.close()
    return ttft_ms, False


def answer_tokens(
    adapter: ModelAdapter, logits: torch.Tensor, cache: StreamingCache, picker: TokenPicker, max_new_tokens: int
) -> Generator[int, None, None]:
    """An answer's tokens, the first from `logits` (the question's), the rest fed back through `cache`:
    decoded with the other answers by the adapter's scheduler when it has one, else pass by pass here.
    The tokens stop after a stop token or `max_new_tokens`; closing the generator ends the decoding."""
    token = picker.pick(logits)
    yield token
    remaining = max_new_tokens - 1
    if adapter.is_stop(token) or remaining <= 0:
        return
    scheduler = adapter.scheduler
    if scheduler is None:
        for _ in range(remaining):
            token = picker.pick(adapter.next_token_logits(adapter.token_embeds(token), cache))
            yield token
            if adapter.is_stop(token):
                return
        return
    row = scheduler.decode(cache, picker, token, remaining)
    try:
        yield from row
    finally:
        row.close()
