"""What the engine's verbs return: plain data a caller in another thread, process or machine can hold.

`Engine.add_stream` and `Engine.status` give a `StreamStatus`, `Engine.push_frames` a `FrameInfo` per
frame, `Engine.frames` the newest `FrameInfo`s, and `Engine.ask` an `AnswerHandle`: iterate it for the
answer's text deltas, then `result()` gives the finished `streamer.query.Answer`. None of them holds a
tensor, a lock or a reference into a stream's memory.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from memory.records import FrameRecord
from streamer.query import Answer

_answer_ids = itertools.count(1)


@dataclass(frozen=True)
class FrameInfo:
    """One remembered frame as an operator sees it.

    t: stream time (s). tier: "clear" or "fuzzy". location: where its KV block is ("device", "host",
    "gone"). tokens: KV tokens its block holds. margin: curvature score above its threshold. detail:
    how it was encoded ("full" or "terse"). text: its description (or a line naming its image tokens).
    """

    sequence: int
    t: float
    tier: str
    location: str
    tokens: int
    margin: float
    detail: str
    text: str

    @classmethod
    def of(cls, record: FrameRecord) -> FrameInfo:
        return cls(
            record.sequence,
            record.stream_time,
            record.tier,
            record.location,
            record.tokens,
            record.margin,
            record.detail,
            record.text,
        )


@dataclass(frozen=True)
class StreamStatus:
    """A stream's memory and ingest counters at one moment.

    frames: frames the stream's memory has taken in (a record each while younger than
    `memory.compact_after_s`, wherever their KV is; frames_by_place counts those). as_of: the newest frame's stream
    time (0 before the first). frames_by_place: (tier, location) -> frames. ingest_ms_per_frame: mean
    milliseconds per ingested frame, by stage; ingest_ms_total: their sums over the `frames_timed`
    frames ingested since the stream was added. last_snapshot: stream time of the newest snapshot written
    (None: none yet, or snapshots off). snapshot_failures: snapshots that could not be written.
    """

    stream_id: str
    frames: int
    as_of: float
    resident_tokens: int
    budget_tokens: int
    host_tokens: int
    frames_by_place: dict[tuple[str, str], int] = field(default_factory=dict)
    ingest_ms_per_frame: dict[str, float] = field(default_factory=dict)
    ingest_ms_total: dict[str, float] = field(default_factory=dict)
    frames_timed: int = 0
    last_snapshot: float | None = None
    snapshot_failures: int = 0


class AnswerHandle:
    """A question being answered: its text deltas as an iterator, then the finished `Answer`.

    answer_id: unique within the process; `Engine.cancel(answer_id)` or `cancel()` stops the answer
    at its next token (the result then says `cancelled`). as_of: the stream time of the view of the memory
    the answer reads, known as soon as `Engine.ask` returns. The work runs in whichever thread iterates
    the handle (or calls `result()`); `cancel()` may come from any thread, as may setting the `cancel`
    event a caller passed to `Engine.ask`.
    """

    def __init__(
        self,
        stream_id: str,
        question: str,
        as_of: float,
        run: Callable[[threading.Event], Generator[str, None, Answer]],
        on_close: Callable[[AnswerHandle], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.answer_id = f"a{next(_answer_ids)}"
        self.stream_id = stream_id
        self.question = question
        self.as_of = as_of
        self._cancel = cancel or threading.Event()
        self._deltas = run(self._cancel)
        self._answer: Answer | None = None
        self._on_close = on_close

    def __iter__(self) -> Iterator[str]:
        if self._answer is not None:
            return
        try:
            self._answer = yield from self._deltas
        finally:
            self._close()

    def result(self, on_delta: Callable[[str], None] | None = None) -> Answer:
        """Run the answer to its end (passing the deltas not yet taken to `on_delta`); the `Answer`."""
        for delta in self:
            if on_delta is not None:
                on_delta(delta)
        if self._answer is None:
            raise RuntimeError(f"answer {self.answer_id} was closed before it finished")
        return self._answer

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def close(self) -> None:
        """Give up the answer without running it further; frees the view of the memory it holds."""
        self._deltas.close()
        self._close()

    def _close(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)
