"""One thread for the model's answer-side passes: answers decoded together, prefills between steps.

Every question works on its own fork of a stream's cache, so the questions of one or several streams
can share forward passes. The `ModelScheduler` runs in steps. At each step boundary, in this order:

1. every waiting **ingest** pass (a frame's prefill, a standing question's check) runs, in the order
   they came, on the ingest thread itself while the scheduler waits (the ingest thread's torch thread
   pool does the work, not a second pool competing with it): ingest is bounded by the streams' frame
   rate, so it cannot starve answers, and a frame never waits longer than one step;
2. waiting **answer** passes that are not reads, in the order they came, up to `max_step_tokens` tokens
   in all (at least one): a chunk of a long question's prefill (its timeline lines and the question,
   split into chunks of at most `max_step_tokens`), an option's score, a question's query summary;
3. one **decode** step: one token for every decoding row (at most `max_rows`), over a `BatchedCache`
   that holds each row's context left-aligned with its own length, attention mask and positions.
   Waiting **reads** (a question's last chunk, whose logits give its first token), up to
   `max_step_tokens` tokens, those that came while the passes above ran included, go in the same
   forward pass: the rows' and the reads' new tokens are packed into one sequence
   (`streamer.adapters.packed`), so the weights are read once for all of them, and a question's first
   token waits for no decode step of its own. A question whose first token is chosen joins at the next
   boundary; a finished or cancelled row leaves at once.

A step's tokens are chosen in this thread, every row's from its own logits with its answer's repetition
controls, in a few operations for all the rows (`pick_tokens`), and handed to the thread that asked,
which turns them into text.
Everything else that runs the model (evaluation tools, the embedded describer's setup) takes the
adapter's `forward_lock` directly; the scheduler takes it for every pass too, so hooks that read a
pass's activations never see another's.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from memory.kv_cache import StreamingCache

if TYPE_CHECKING:
    from streamer.adapters.base import ModelAdapter

T = TypeVar("T")

# Generation controls of a free answer: its own tokens' logits divided by this (transformers' repetition
# penalty), and no three-token sequence twice.
REPETITION_PENALTY = 1.3
NO_REPEAT_NGRAM = 3

_thread = threading.local()


@contextmanager
def ingest_passes() -> Iterator[None]:
    """Model passes this thread asks for inside the block are ingest's: they go before answer work."""
    previous = getattr(_thread, "ingest", False)
    _thread.ingest = True
    try:
        yield
    finally:
        _thread.ingest = previous


class TokenPicker:
    """Greedy choice of an answer's next token; with `controls`, the answer's own tokens are penalised
    (transformers' repetition penalty: a logit divided by `REPETITION_PENALTY`, or multiplied when negative)
    and no `NO_REPEAT_NGRAM`-token sequence repeats. Keeps the ids it chose."""

    def __init__(self, controls: bool = True) -> None:
        self.ids: list[int] = []
        self.controls = controls

    def pick(self, logits: torch.Tensor) -> int:
        """The next token for `logits` (vocab,), recorded as chosen."""
        return pick_tokens([self], logits[None])[0]

    def banned(self) -> list[int]:
        """The tokens that would repeat one of the answer's `NO_REPEAT_NGRAM`-token sequences."""
        ids, size = self.ids, NO_REPEAT_NGRAM
        if not self.controls or len(ids) < size:
            return []
        prefix = ids[len(ids) + 1 - size :]
        starts = range(len(ids) + 1 - size)
        return [ids[start + size - 1] for start in starts if ids[start : start + size - 1] == prefix]


def pick_tokens(pickers: Sequence[TokenPicker], logits: torch.Tensor) -> list[int]:
    """Each picker's next token from its row of `logits` (rows, vocab), the controls of all rows applied
    together (a decode step's rows in a few operations rather than a few each), recorded as chosen."""
    rows: list[int] = []
    ids: list[int] = []
    for row, picker in enumerate(pickers):
        if picker.controls:
            rows.extend([row] * len(picker.ids))
            ids.extend(picker.ids)
    if ids:
        logits = logits.clone()
        at = (torch.tensor(rows, device=logits.device), torch.tensor(ids, device=logits.device))
        chosen = logits[at]
        logits[at] = torch.where(chosen < 0, chosen * REPETITION_PENALTY, chosen / REPETITION_PENALTY)
        bans = [(row, token) for row, picker in enumerate(pickers) for token in picker.banned()]
        if bans:
            logits[tuple(torch.tensor(column, device=logits.device) for column in zip(*bans, strict=True))] = -math.inf
    tokens: list[int] = torch.argmax(logits, dim=-1).tolist()
    for picker, token in zip(pickers, tokens, strict=True):
        picker.ids.append(token)
    return tokens


@dataclass(frozen=True)
class SchedulerLimits:
    """max_rows: answers decoded in one step (more wait to join); max_step_tokens: the longest prefill
    chunk run between two decode steps (a longer prefill is split); hold_s: how long a decode step waits
    for the first pass of a question being prepared (`ModelScheduler.preparing`)."""

    max_rows: int = 16
    max_step_tokens: int = 128
    hold_s: float = 0.1


@dataclass
class SchedulerStats:
    """Counters since start: passes run, the seconds they waited for their turn and ran; decode steps, the
    rows they decoded (mean batch = rows / steps) and their seconds; rows decoding and passes waiting now;
    the decode batch's size (slots x tokens, its memory) now."""

    passes: int = 0
    pass_wait_s: float = 0.0
    pass_s: float = 0.0
    steps: int = 0
    step_rows: int = 0
    step_s: float = 0.0
    decoding: int = 0
    waiting: int = 0
    max_batch: int = 0
    step_reads: int = 0  # question reads that went through the model in a decode step's pass
    resizes: int = 0  # times the decode batch was made smaller
    batch_slots: int = 0  # the decode batch's rows of room now, and the tokens each holds
    batch_tokens: int = 0


class DecodeRow:
    """One answer being decoded with others; iterate for its tokens (after the first, which its own thread
    chose). The iteration ends at a stop token or when `remaining` tokens were given; `close()` leaves
    the batch early (cancelled, or the answer's text is complete)."""

    def __init__(
        self, cache: StreamingCache, picker: TokenPicker, token: int, remaining: int, is_stop: Callable[[int], bool]
    ) -> None:
        self.cache = cache
        self.picker = picker
        self.token = token  # fed at the next step
        self.remaining = remaining
        self.is_stop = is_stop
        self.tokens: queue.SimpleQueue[int | BaseException | None] = queue.SimpleQueue()
        self.closed = False
        self.slot = -1

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self.tokens.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True

    def finish(self, item: BaseException | None = None) -> None:
        self.closed = True
        self.tokens.put(item)


class _BatchLayer(CacheLayerMixin):
    """One layer of a `BatchedCache`: writes each row's new key at that row's own length."""

    is_croppable = False
    is_sliding = False

    def __init__(self, batch: BatchedCache, index: int) -> None:
        super().__init__()
        self._batch = weakref.ref(batch)  # weak, or the batch and its keys and values would form a cycle
        self.index = index
        self.is_initialized = True

    @property
    def batch(self) -> BatchedCache:
        batch = self._batch()
        assert batch is not None, "a cache layer outlived its cache"
        return batch

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch
        rows, at = batch.row_index, batch.write_at  # (rows, 1), (rows, queries)
        keys, values = batch.keys[self.index], batch.values[self.index]
        keys[rows, :, at, :] = key_states.transpose(1, 2)
        values[rows, :, at, :] = value_states.transpose(1, 2)
        span = batch.span
        return keys[: batch.rows, :, :span, :], values[: batch.rows, :, :span, :]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.batch.span, 0

    def get_seq_length(self) -> int:
        return self.batch.span - 1

    def get_max_length(self) -> int:
        return -1


class BatchedCache(Cache):
    """The contexts of the decoding rows, one per slot, left-aligned: slot i holds its row's tokens
    [0, lengths[i]) and zeros after them; a decode step writes row i's new token at lengths[i] and masks
    every key past it. Slots [0, rows) are in use; a row that leaves is replaced by the last one."""

    def __init__(self, like: StreamingCache, slots: int, tokens: int) -> None:
        self.stream_layers = [_BatchLayer(self, i) for i in range(like.num_layers)]
        super().__init__(layers=list(self.stream_layers))
        sample = like.keys(0)
        _, heads, _, dim = sample.shape
        self.keys = [
            torch.zeros(slots, heads, tokens, dim, dtype=sample.dtype, device=sample.device) for _ in self.stream_layers
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.lengths: list[int] = []
        self.queries = 1
        self.row_index = torch.zeros(0, dtype=torch.long)
        self.write_at = torch.zeros(0, dtype=torch.long)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def slots(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def span(self) -> int:
        """Keys a pass reads: the longest row plus its new tokens."""
        return max(self.lengths) + self.queries

    def fits(self, length: int) -> bool:
        return self.rows < self.slots and length < self.capacity

    def resized(self, slots: int, tokens: int) -> BatchedCache:
        """A batch of `slots` slots of `tokens` tokens holding the same rows (larger, or smaller when the
        rows still fit)."""
        if slots < self.rows or tokens <= max(self.lengths, default=0):
            raise ValueError(f"{self.rows} rows of up to {max(self.lengths, default=0)} tokens do not fit")
        fresh = BatchedCache.__new__(BatchedCache)
        fresh.stream_layers = [_BatchLayer(fresh, i) for i in range(len(self.stream_layers))]
        Cache.__init__(fresh, layers=list(fresh.stream_layers))
        fresh.keys, fresh.values = [], []
        for keys, values in zip(self.keys, self.values, strict=True):
            shape = (slots, keys.shape[1], tokens, keys.shape[3])
            grown_keys = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            grown_values = torch.zeros_like(grown_keys)
            width = min(tokens, keys.shape[2])
            grown_keys[: self.rows, :, :width] = keys[: self.rows, :, :width]
            grown_values[: self.rows, :, :width] = values[: self.rows, :, :width]
            fresh.keys.append(grown_keys)
            fresh.values.append(grown_values)
        fresh.lengths = list(self.lengths)
        fresh.queries, fresh.row_index, fresh.write_at = self.queries, self.row_index, self.write_at
        return fresh

    def add(self, cache: StreamingCache) -> int:
        """Copy `cache`'s tokens into the next free slot; returns the slot."""
        slot, length = self.rows, cache.length
        for layer in range(len(self.stream_layers)):
            self.keys[layer][slot, :, :length] = cache.keys(layer)[0]
            self.values[layer][slot, :, :length] = cache.values(layer)[0]
            self.keys[layer][slot, :, length:] = 0
            self.values[layer][slot, :, length:] = 0
        self.lengths.append(length)
        return slot

    def drop(self, slot: int) -> int | None:
        """Free `slot`; the last row moves into it. Returns the slot that moved (None: none did)."""
        last = self.rows - 1
        if slot != last:
            length = self.lengths[last]
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :length] = keys[last, :, :length]
                values[slot, :, :length] = values[last, :, :length]
                keys[slot, :, length:] = 0
                values[slot, :, length:] = 0
            self.lengths[slot] = length
        self.lengths.pop()
        return last if slot != last else None

    def prepare(self, queries: int = 1) -> torch.Tensor:
        """Set where the next pass writes: `queries` tokens per row after the row's own tokens. Returns the
        (rows, 1, queries, span) additive attention mask: query j of row i sees its tokens and its first j."""
        device = self.keys[0].device
        lengths = torch.tensor(self.lengths, dtype=torch.long, device=device)
        self.queries = queries
        self.row_index = torch.arange(self.rows, device=device)[:, None]
        self.write_at = lengths[:, None] + torch.arange(queries, device=device)[None, :]
        span = self.span
        visible = torch.arange(span, device=device)[None, None, :] <= self.write_at[:, :, None]
        dtype = self.keys[0].dtype
        mask = torch.zeros(self.rows, queries, span, dtype=dtype, device=device)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[:, None]

    def advance(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]


Read = tuple[torch.Tensor, StreamingCache]  # (embeds, cache): read embeds after cache, logits of the last


class _Pass:
    def __init__(self, run: Callable[[], Any], ingest: bool, tokens: int, read: Read | None) -> None:
        self.run = run
        self.ingest = ingest
        self.tokens = tokens
        self.read = read
        self.queued = time.perf_counter()
        self.future: Future[Any] = Future()
        # An ingest pass runs on its own thread when the scheduler gives it the turn (so the ingest thread's
        # torch thread pool does the work, as it does for the describer, rather than a second pool
        # competing with it for the cores).
        self.turn = threading.Event()
        self.done = threading.Event()


def _read(item: _Pass) -> Read:
    assert item.read is not None
    return item.read


class ModelScheduler:
    """Runs the answer-side model passes of one adapter on one thread (see the module docstring)."""

    def __init__(self, adapter: ModelAdapter, limits: SchedulerLimits | None = None) -> None:
        self.adapter = adapter
        self.limits = limits or SchedulerLimits()
        self.stats = SchedulerStats()
        self._lock = threading.Condition()
        self._ingest: deque[_Pass] = deque()
        self._answers: deque[_Pass] = deque()
        self._joining: deque[DecodeRow] = deque()
        self._rows: list[DecodeRow] = []
        self._batch: BatchedCache | None = None
        self._closed = False
        self._coming: set[object] = set()  # questions being prepared whose first pass has not come yet
        self._thread = threading.Thread(target=self._loop, name="model-scheduler", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once closed, or in a forked child (where the thread does not exist)."""
        return not self._closed and self._thread.is_alive()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[[], T], tokens: int = 1, read: Read | None = None) -> T:
        """Run `fn` (one model pass over `tokens` tokens) on the scheduler's thread at the next boundary and
        return its result; an ingest pass when the calling thread is inside `ingest_passes()`. A pass that
        is a `read` (`fn` appends the embeds to the cache and returns the next token's logits) is run in
        the next decode step's pass instead (`ModelAdapter.packed_logits`), with the same result."""
        if self.on_thread():
            with self.adapter.forward_lock:
                return fn()
        item = _Pass(fn, getattr(_thread, "ingest", False), tokens, read)
        with self._lock:
            if self._closed:
                raise RuntimeError("the model scheduler is closed")
            self._coming.discard(getattr(_thread, "coming", None))
            (self._ingest if item.ingest else self._answers).append(item)
            self.stats.waiting += 1
            self._lock.notify()
        if item.ingest:
            item.turn.wait()
            if item.future.done():  # closed meanwhile
                item.future.result()
            try:
                with self.adapter.forward_lock:
                    return fn()
            finally:
                item.done.set()
        result: T = item.future.result()
        return result

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Around a question's preparation (choosing its frames, assembling its context): until its first
        pass comes, the scheduler holds each decode step up to `limits.hold_s` for it."""
        token = object()
        with self._lock:
            self._coming.add(token)
        _thread.coming = token
        try:
            yield
        finally:
            with self._lock:
                self._coming.discard(token)

    def decode(self, cache: StreamingCache, picker: TokenPicker, token: int, remaining: int) -> DecodeRow:
        """Decode on from `token` (already chosen, not yet in `cache`) with the others, up to `remaining`
        more tokens; `cache` must stay open until the row ends."""
        row = DecodeRow(cache, picker, token, remaining, self.adapter.is_stop)
        if remaining <= 0:
            row.finish()
            return row
        with self._lock:
            if self._closed:
                raise RuntimeError("the model scheduler is closed")
            self._joining.append(row)
            self._lock.notify()
        return row

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if not self.on_thread():
            self._thread.join(timeout=30)

    # The scheduler's thread.

    def _loop(self) -> None:
        with torch.inference_mode():
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not (self._closed or self._ingest or self._answers or self._joining or self._rows):
                    self._lock.wait()
                if self._coming and self._rows and not (self._ingest or self._answers or self._closed):
                    # A question is being prepared: its read joins the next decode step if it comes in
                    # time, so its first token does not wait behind a whole step.
                    self._lock.wait(self.limits.hold_s)
                if self._closed:
                    break
                ingest = list(self._ingest)
                self._ingest.clear()
                passes = self._take_answers(reads=False)
            # Ingest's passes first, then the answer passes that are not reads, each on its own.
            for item in ingest:
                self._give_turn(item)
            for item in passes:
                self._run(item)
            with self._lock:
                # Reads go with the decode step, those that came while the passes above ran included.
                reads = self._take_answers(reads=True)
                joining = list(self._joining)
                self._joining.clear()
            self._step(joining, reads)
        self._end_all(RuntimeError("the model scheduler closed"))

    def _take_answers(self, reads: bool) -> list[_Pass]:
        """The waiting answer passes that are reads (`reads`), or those that are not, in the order they came,
        up to `max_step_tokens` tokens in all (at least one). Holds `_lock`."""
        budget = self.limits.max_step_tokens
        taken: list[_Pass] = []
        kept: deque[_Pass] = deque()
        full = False
        for item in self._answers:
            if full or (item.read is not None) != reads:
                kept.append(item)
            elif not taken or item.tokens <= budget:
                taken.append(item)
                budget -= item.tokens
            else:
                full = True
                kept.append(item)
        self._answers = kept
        self.stats.waiting -= len(taken)
        return taken

    def _give_turn(self, item: _Pass) -> None:
        """Let an ingest pass run on its own thread, and wait until it has."""
        started = time.perf_counter()
        stats = self.stats
        stats.passes += 1
        stats.pass_wait_s += started - item.queued
        with self._lock:
            stats.waiting -= 1
        item.turn.set()
        item.done.wait()
        stats.pass_s += time.perf_counter() - started

    def _run(self, item: _Pass) -> None:
        """Run one answer pass; its result or error to its thread."""
        started = time.perf_counter()
        stats = self.stats
        stats.passes += 1
        stats.pass_wait_s += started - item.queued
        try:
            with self.adapter.forward_lock:
                result = item.run()
        except BaseException as error:  # handed to the thread that asked
            item.future.set_exception(error)
        else:
            item.future.set_result(result)
        stats.pass_s += time.perf_counter() - started

    def _step(self, joining: list[DecodeRow], reads: list[_Pass]) -> None:
        """Join `joining` (rows past `max_rows` wait for a later step), drop closed rows, decode one token
        for every row, with `reads` in the same pass."""
        self._leave([row for row in self._rows if row.closed])
        waiting = []
        for row in joining:
            if row.closed:
                row.finish()
            elif len(self._rows) < self.limits.max_rows:
                self._join(row)
            else:
                waiting.append(row)
        if waiting:
            with self._lock:
                self._joining.extendleft(reversed(waiting))
        if not (self._rows or reads):
            return
        try:
            self._decode(reads)
        except BaseException as error:  # handed to every thread that asked, and every row leaves with it
            for item in reads:
                if not item.future.done():
                    item.future.set_exception(error)
            if self._rows:
                self._leave(list(self._rows), error)

    def _join(self, row: DecodeRow) -> None:
        length = row.cache.length
        batch = self._batch
        if batch is None:
            batch = BatchedCache(row.cache, min(4, self.limits.max_rows), length + 64 + row.remaining)
        elif not batch.fits(length + row.remaining + 1):
            slots = batch.slots * 2 if batch.rows >= batch.slots else batch.slots
            tokens = max(batch.capacity, length + row.remaining + 64)
            batch = batch.resized(min(slots, self.limits.max_rows), tokens)
        row.slot = batch.add(row.cache)
        self._batch = batch
        self._rows.append(row)
        self._count_rows()

    def _count_rows(self) -> None:
        stats, batch = self.stats, self._batch
        stats.decoding = len(self._rows)
        stats.batch_slots, stats.batch_tokens = (0, 0) if batch is None else (batch.slots, batch.capacity)

    def _leave(self, rows: list[DecodeRow], error: BaseException | None = None) -> None:
        batch = self._batch
        for row in sorted(rows, key=lambda r: r.slot, reverse=True):
            assert batch is not None
            moved = batch.drop(row.slot)
            self._rows.remove(row)
            if moved is not None:
                for other in self._rows:
                    if other.slot == moved:
                        other.slot = row.slot
            row.finish(error)
        if not self._rows:
            self._batch = None
        else:
            self._fit()
        self._count_rows()

    def _fit(self) -> None:
        """Shrink the batch when its rows use a quarter of its slots, or half of its tokens, or less: it grows
        to the most rows and the longest context that joined, and under steady questions it never
        empties, so without this it would hold a burst's or one long context's memory for good."""
        batch = self._batch
        assert batch is not None
        slots = batch.slots
        while slots > 4 and batch.rows <= slots // 4:
            slots //= 2
        need = max(batch.lengths[row.slot] + row.remaining for row in self._rows) + 1
        tokens = need + 64 if need + 64 <= batch.capacity // 2 else batch.capacity
        if (slots, tokens) != (batch.slots, batch.capacity):
            self._batch = batch.resized(slots, tokens)
            self.stats.resizes += 1

    def _decode(self, reads: list[_Pass]) -> None:
        """One pass: a decode step for every row (if any) and `reads` packed with it
        (`ModelAdapter.packed_logits`); each read's logits to its thread."""
        batch = self._batch
        ordered = sorted(self._rows, key=lambda r: r.slot)
        tokens = [row.token for row in ordered]
        started = time.perf_counter()
        stats = self.stats
        stats.passes += len(reads)
        stats.pass_wait_s += sum(started - item.queued for item in reads)
        found: list[torch.Tensor] = []
        with self.adapter.forward_lock:
            if reads or self.adapter.packs_passes:
                logits, found = self.adapter.packed_logits(tokens, batch, [_read(item) for item in reads])
            else:
                assert batch is not None
                logits = self.adapter.batch_next_token_logits(tokens, batch)
        for item, result in zip(reads, found, strict=True):
            item.future.set_result(result)
        elapsed = time.perf_counter() - started
        if not ordered:
            stats.pass_s += elapsed
            return
        assert batch is not None
        batch.advance()
        stats.step_s += elapsed
        stats.steps += 1
        stats.step_rows += len(ordered)
        stats.step_reads += len(reads)
        stats.max_batch = max(stats.max_batch, len(ordered))
        done = [row for row in ordered if row.closed]
        going = [index for index, row in enumerate(ordered) if not row.closed]
        picked = pick_tokens([ordered[index].picker for index in going], logits[going]) if going else []
        for index, token in zip(going, picked, strict=True):
            row = ordered[index]
            row.remaining -= 1
            row.tokens.put(token)
            row.token = token
            if row.is_stop(token) or row.remaining <= 0:
                done.append(row)
        if done:
            self._leave(done)

    def _end_all(self, error: BaseException) -> None:
        with self._lock:
            pending = [*self._ingest, *self._answers]
            self._ingest.clear()
            self._answers.clear()
            joining = list(self._joining)
            self._joining.clear()
        for item in pending:
            item.future.set_exception(error)
            item.turn.set()
        for row in joining:
            row.finish(error)
        if self._rows:
            self._leave(list(self._rows), error)


def attach_scheduler(adapter: ModelAdapter, limits: SchedulerLimits) -> ModelScheduler:
    """The adapter's scheduler, started on first use; a second engine on the same adapter shares it (its
    limits are the latest engine's)."""
    scheduler = adapter.scheduler
    if scheduler is None or not scheduler.alive:
        scheduler = adapter.scheduler = ModelScheduler(adapter, limits)
    else:
        scheduler.limits = limits
    return scheduler
