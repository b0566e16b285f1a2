"""Answering a question from a memory snapshot: only the question and the answer are new tokens.

The snapshot's cache already holds the system prompt and every resident frame; the question is
prefilled after them, then tokens are generated greedily and streamed as text deltas.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import torch

from memory.kv_cache import StreamingCache, assemble
from memory.stream_memory import Block, MemorySnapshot
from streamer.adapters.base import ModelAdapter

_WORD = re.compile(r"[a-z0-9]+")
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


def drain(deltas: Generator[str, None, Answer], on_delta: Callable[[str], None] | None = None) -> Answer:
    """Run an answer generator to the end, passing each text delta to `on_delta`; the `Answer`."""
    while True:
        try:
            delta = next(deltas)
        except StopIteration as stop:
            answer: Answer = stop.value
            return answer
        if on_delta is not None:
            on_delta(delta)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def evidence_spans(answer: str, blocks: Sequence[Block], merge_gap: float = 2.0) -> list[list[float]]:
    """Time spans of the resident frames whose descriptions share content words with the answer.

    Frames closer than `merge_gap` seconds join one span [t0, t1].
    """
    words = content_words(answer)
    times = [b.record.stream_time for b in blocks if words & content_words(b.record.text)] if words else []
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


def reread_context(adapter: ModelAdapter, snapshot: MemorySnapshot, chosen: Sequence[Block]) -> StreamingCache:
    """A cache of `[sink | chosen blocks in time order]` where each block with token ids is read again.

    The sink's KV is reused; a block whose record has `token_ids` (the tokens it still holds) is
    prefilled after the blocks before it, as in one fresh pass over the chosen frames; a block without
    them (image tokens, pooled tokens) is appended from its cached KV.
    """
    rotate = adapter.rotate_keys
    cache = assemble([snapshot.cache.segment(0, snapshot.sink_tokens)], rotate, device=snapshot.cache.keys(0).device)
    ordered = sorted(chosen, key=lambda b: b.record.frame_id)
    # Runs of consecutive text blocks are prefilled in one pass each.
    for readable, run in groupby(ordered, key=lambda b: b.record.token_ids is not None):
        if readable:
            ids = [token for block in run for token in block.record.token_ids or ()]
            adapter.prefill(adapter.embed_ids(torch.tensor([ids], device=adapter.device)), cache)
        else:
            for block in run:
                cache.append(block.segment(snapshot.cache), rotate)
    return cache


def generate_answer(
    adapter: ModelAdapter,
    snapshot: MemorySnapshot,
    chosen: Sequence[Block],
    question: str,
    max_new_tokens: int = 48,
    max_question_tokens: int = 64,
    cancel: threading.Event | None = None,
    reread: bool = False,
) -> Generator[str, None, Answer]:
    """Yield text deltas of the answer; the generator's return value is the finished `Answer`.

    The context is the snapshot's sink plus the `chosen` blocks, from their cached KV or, with
    `reread`, read again (`reread_context`); the snapshot is closed at the end.
    """
    start = time.perf_counter()
    cache = reread_context(adapter, snapshot, chosen) if reread else snapshot.context(chosen, adapter.rotate_keys)
    embeds = adapter.question_embeds(question)
    if embeds.shape[1] > max_question_tokens:
        # keep the end: it carries the chat turn that opens the answer
        embeds = torch.cat([embeds[:, : max_question_tokens // 2], embeds[:, -max_question_tokens // 2 :]], 1)
    stream = TextStream(adapter)
    ttft_ms = 0.0
    cancelled = False
    try:
        logits = adapter.next_token_logits(embeds, cache)
        for step in range(max_new_tokens):
            token = int(torch.argmax(logits))
            if adapter.is_stop(token):
                break
            delta = stream.push(token)
            if step == 0:
                ttft_ms = (time.perf_counter() - start) * 1000
            if delta:
                yield delta
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            if step + 1 < max_new_tokens:
                logits = adapter.next_token_logits(adapter.token_embeds(token), cache)
    finally:
        cache.close()
        snapshot.close()
    latency_ms = (time.perf_counter() - start) * 1000
    text = stream.text.strip()
    return Answer(
        question=question,
        text=text,
        as_of=snapshot.as_of,
        ttft_ms=ttft_ms or latency_ms,
        latency_ms=latency_ms,
        evidence=evidence_spans(text, chosen),
        tokens=len(stream.ids),
        cancelled=cancelled,
    )
