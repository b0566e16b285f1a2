"""The engine core: streams, their memories, frame ingest and questions. Knows nothing of sockets.

Every front end (the replay CLI, the server, evaluation) drives this same object through a few verbs
that take and return plain data (`streamer.engine_data`): `add_stream`, `remove_stream`, `push_frames`,
`ask` (an `AnswerHandle` of text deltas, then the `Answer`), `cancel`, `status` and `frames`. Live sources
reach `push_frames` through the engine's own ingest scheduler (`Engine.scheduler`). A stream's memory is
written only by its `append` verb, under its own lock, and an answer works on a view of it
(`StreamMemory.view`), so frames keep arriving while a question is being answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from memory.curvature import CurvatureDecision
from memory.errors import BudgetError, SnapshotError
from memory.kv_cache import assemble
from memory.records import FrameRecord
from memory.snapshot import SnapshotStore, remove_stale_partials, set_aside
from memory.stream_memory import MemorySettings, MemoryView, StreamMemory
from sources.frame import Frame
from streamer.adapters.base import FrameTokens, ModelAdapter
from streamer.batching import IngestScheduler
from streamer.decoding import SchedulerLimits, attach_scheduler, ingest_passes
from streamer.engine_config import EngineConfig as EngineConfig
from streamer.engine_data import AnswerHandle, FrameInfo, StreamStatus
from streamer.heap import HeapTrimmer
from streamer.query import Answer, generate_answer
from streamer.retrieval import Reading, Selection, select_reading
from streamer.watches import EventListener, Watches, WatchEvent, WatchInfo, WatchSpec

log = logging.getLogger(__name__)
# Seconds between the last restored frame and the first frame after a restart, on the stream's clock.
RESTART_GAP_S = 1.0
# Stream seconds before a snapshot that failed to write is tried again.
SNAPSHOT_RETRY_S = 10.0


@dataclass
class IngestStats:
    """Running totals of where ingest time goes, in milliseconds."""

    frames: int = 0
    totals_ms: dict[str, float] = field(default_factory=dict)

    def add(self, timings_ms: dict[str, float]) -> None:
        self.frames += 1
        for name, ms in timings_ms.items():
            self.totals_ms[name] = self.totals_ms.get(name, 0.0) + ms

    def mean_ms(self) -> dict[str, float]:
        return {name: total / max(1, self.frames) for name, total in self.totals_ms.items()}


@dataclass
class Stream:
    """One stream's memory and counters."""

    stream_id: str
    memory: StreamMemory
    stats: IngestStats = field(default_factory=IngestStats)
    snapshots: SnapshotStore | None = None  # None when snapshots are off
    last_snapshot: float | None = None
    snapshot_failures: int = 0  # snapshots that could not be written (full disk, too many open files)
    # Added to the stream time of every frame pushed: after a restore the source starts again at 0,
    # and the memory's clock must go on from its last restored frame (records stay in time order,
    # and snapshots stay due every snapshot_every_s).
    time_offset: float = 0.0

    def on_clock(self, frame: Frame) -> Frame:
        """`frame` on this stream's clock (the same frame when nothing was restored)."""
        if not self.time_offset:
            return frame
        return dataclasses.replace(frame, stream_time=frame.stream_time + self.time_offset)


class UnknownStream(KeyError):
    pass


def _detail_of(decision: CurvatureDecision | None) -> str:
    """How a frame is encoded: tersely when its memory's policy called it fuzzy, else in full."""
    return "terse" if decision is not None and decision.tier == "fuzzy" else "full"


class Engine:
    """Streams sharing one loaded model adapter.

    The verbs (`add_stream`, `remove_stream`, `push_frames`, `ask`, `cancel`, `status`, `frames`) take and
    return plain data. `memory(stream_id)` hands out a stream's memory itself, for tools in the same
    process (evaluation, benchmarks, tests) that inspect what it holds.
    """

    def __init__(self, adapter: ModelAdapter, config: EngineConfig | None = None) -> None:
        self.adapter = adapter
        self.config = config or EngineConfig()
        self._streams: dict[str, Stream] = {}
        self._answers: weakref.WeakValueDictionary[str, AnswerHandle] = weakref.WeakValueDictionary()
        self._scheduler: IngestScheduler | None = None
        self._watches = Watches()
        self.heap = HeapTrimmer(self.config.memory.heap_trim_every_s)
        answer = self.config.answer
        if answer.batched:
            attach_scheduler(adapter, SchedulerLimits(answer.max_rows, answer.max_step_tokens, answer.hold_s))

    # Streams.

    def add_stream(self, stream_id: str) -> StreamStatus:
        """Create a stream with an empty memory whose sink (the system prompt) is already prefilled, or
        with the memory of its snapshot file when snapshots are on and one exists."""
        if stream_id in self._streams:
            raise ValueError(f"stream '{stream_id}' already exists")
        memory = StreamMemory(self.adapter.num_layers, self.adapter.rotate_keys, self.memory_settings())
        with ingest_passes():
            self.adapter.prefill(self.adapter.system_embeds(), memory.cache)
        memory.seal_sink()
        stream = Stream(stream_id, memory)
        self._restore(stream)
        self._streams[stream_id] = stream
        return self.status(stream_id)

    def memory_settings(self) -> MemorySettings:
        """The settings every new stream's memory is built with, from the engine's config."""
        config = self.config
        return MemorySettings(
            config.memory.budget_tokens,
            answer_reserve=config.answer_reserve,
            evict_chunk=config.memory.evict_chunk,
            host_budget_tokens=config.memory.host_budget_tokens,
            policy=config.memory.policy,
            curvature=config.memory.curvature,
            window_seconds=config.memory.window_seconds,
            compression=config.memory.compression,
            compress_ratio=config.memory.compress_ratio,
            internal_weight=config.retrieval.internal_weight,
            text_weight=config.retrieval.text_weight,
            compact_after_s=config.memory.compact_after_s,
            # On a GPU the retrieval index scans its vectors there, beside the model.
            index_device=str(self.adapter.device) if self.adapter.device.type == "cuda" else None,
        )

    def _restore(self, stream: Stream) -> None:
        """Load the stream's snapshot file into its fresh memory, if snapshots are on and there is one."""
        stream_id, memory = stream.stream_id, stream.memory
        path = self.snapshot_path(stream_id)
        if path is None:
            return
        stream.snapshots = SnapshotStore(path)
        for stale in remove_stale_partials(path):
            log.info("%s: removed %s, left by a writer that was stopped", stream_id, stale)
        if not path.exists():
            return
        try:
            stream.snapshots.load(memory)
        except SnapshotError as error:
            # One bad file must not keep the stream (or a server) from starting: keep it aside.
            reason = str(error).split(";")[0]
            try:
                aside = set_aside(path)
            except OSError as refused:
                cause = refused.strerror or refused.__class__.__name__
                raise SnapshotError(
                    f"{reason}, and it cannot be moved aside ({cause.lower()}); delete it and add the stream again."
                ) from None
            log.warning("%s: %s; moved it to %s and started the stream empty.", stream_id, reason, aside.name)
        if memory.records:
            stream.last_snapshot = memory.records[-1].stream_time
            stream.time_offset = stream.last_snapshot + RESTART_GAP_S
        log.info("%s: restored %d frames from %s", stream_id, len(memory.records), path)

    def check_budget(self, fps: float) -> None:
        """Raise BudgetError when the budget cannot hold the sink, the answer reserve and the short-term
        window at `fps` frames per second (estimated from the adapter's typical frame size)."""
        config, memory = self.config, self.config.memory
        sink = int(self.adapter.system_embeds().shape[1])
        window = int(memory.window_seconds * fps * self.adapter.typical_frame_tokens)
        needed = sink + config.answer_reserve + window
        if memory.budget_tokens < needed:
            raise BudgetError(
                f"Token budget {memory.budget_tokens} is smaller than the system prompt ({sink}), the answer "
                f"reserve ({config.answer_reserve}) and {memory.window_seconds:g} s of recent frames at {fps:g} fps "
                f"(about {window}); raise --budget to at least {needed}."
            )

    def remove_stream(self, stream_id: str, keep_snapshot: bool = False, leave_snapshot: bool = False) -> bool:
        """Forget the stream; False when there is none. With snapshots on, `keep_snapshot` writes its memory
        to its snapshot file first (a shutdown: the next start restores it); otherwise the file is deleted
        (the stream was removed: a new stream of the same name starts empty). A snapshot that cannot be
        written or deleted is logged, and the stream is removed all the same. `leave_snapshot` neither
        writes nor deletes the file (another engine has taken the stream over and writes it now)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        store = None if leave_snapshot else stream.snapshots
        try:
            if store is not None and keep_snapshot:
                self.save_snapshot(stream_id)
            elif store is not None:
                store.remove()
        except OSError as error:  # a full disk must not keep a server from stopping
            log.error("%s: snapshot %s failed: %s", stream_id, store.path if store else None, error)
        self._streams.pop(stream_id, None)
        self._watches.remove_stream(stream_id)
        return True

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._streams

    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def status(self, stream_id: str) -> StreamStatus:
        """The stream's memory and ingest counters now. Reads without the memory's lock (counters the memory
        keeps as frames move, no pass over its records), so it never waits out a prefill."""
        stream = self._stream(stream_id)
        memory = stream.memory
        records = memory.records
        newest = records[-1:]
        return StreamStatus(
            stream_id,
            frames=memory.frame_count,
            as_of=newest[0].stream_time if newest else 0.0,
            resident_tokens=memory.resident_tokens,
            budget_tokens=memory.budget_tokens,
            host_tokens=memory.host_tokens,
            frames_by_place=dict(memory.places),
            ingest_ms_per_frame=stream.stats.mean_ms(),
            ingest_ms_total=dict(stream.stats.totals_ms),
            frames_timed=stream.stats.frames,
            last_snapshot=stream.last_snapshot,
            snapshot_failures=stream.snapshot_failures,
        )

    def frames(self, stream_id: str, last: int | None = None) -> list[FrameInfo]:
        """The stream's remembered frames, oldest first; the newest `last` of them when given."""
        records = self._stream(stream_id).memory.records
        return [FrameInfo.of(record) for record in (records[-last:] if last else records[:])]

    def memory(self, stream_id: str) -> StreamMemory:
        """The stream's memory itself, for in-process inspection (evaluation, benchmarks, tests)."""
        return self._stream(stream_id).memory

    def _stream(self, stream_id: str) -> Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise UnknownStream(stream_id) from None

    # Frames.

    def scheduler(self, executor: Executor | None = None) -> IngestScheduler:
        """The ingest scheduler that feeds this engine's live streams (`streamer.batching`), made on first use.

        executor: where encoding runs; replaces the scheduler's while no stream is attached to it.
        """
        if self._scheduler is None:
            self._scheduler = IngestScheduler(self, executor, self.adapter.frame_batch)
        elif not self._scheduler.streams:
            self._scheduler.executor = executor
        return self._scheduler

    def push_frame(self, stream_id: str, frame: Frame, detail: str | None = None) -> FrameInfo:
        """`push_frames` for one frame."""
        return self.push_frames([(stream_id, frame)], detail)[0]

    def push_frames(self, items: Sequence[tuple[str, Frame]], detail: str | None = None) -> list[FrameInfo]:
        """Encode (stream id, frame) pairs as one batch and append each frame to its own stream's memory,
        in the order given; a stream's frames must come in its frame order (its policy scores them so).

        Three steps, each calling down only: the adapter's cheap `look` at every frame, the tier its stream's
        memory policy gives it from the look's features (the curvature policy: clear frames are described
        in full, fuzzy ones tersely), then the adapter's `encode` at that detail. `detail` forces the encoding.
        """
        with ingest_passes():
            infos = self._push_frames(items, detail)
        self.heap.maybe_trim()
        return infos

    def _push_frames(self, items: Sequence[tuple[str, Frame]], detail: str | None) -> list[FrameInfo]:
        streams = [self._stream(stream_id) for stream_id, _ in items]
        frames = [stream.on_clock(frame) for (_, frame), stream in zip(items, streams, strict=True)]
        looks = self.adapter.look(frames)
        decisions = [
            stream.memory.decide(look.features, frame.stream_time)
            for stream, frame, look in zip(streams, frames, looks, strict=True)
        ]
        details = [
            detail or self._detail(stream.stream_id, frame, decision)
            for stream, frame, decision in zip(streams, frames, decisions, strict=True)
        ]
        encoded = self.adapter.encode(frames, looks, details)
        return [
            FrameInfo.of(self._store(stream, frame, tokens, decision))
            for stream, frame, tokens, decision in zip(streams, frames, encoded, decisions, strict=True)
        ]

    def _detail(self, stream_id: str, frame: Frame, decision: CurvatureDecision | None) -> str:
        """The policy's detail for the frame, except that a frame a watch is due to check is described in full
        (a check is a look: see `streamer.watches`), as is a new picture on a stream with watches."""
        detail = _detail_of(decision)
        step = decision.velocity if decision is not None else 0.0
        if detail == "terse" and self._watches.wants_look(stream_id, frame.stream_time, step):
            return "full"
        return detail

    def _store(
        self, stream: Stream, frame: Frame, tokens: FrameTokens, decision: CurvatureDecision | None
    ) -> FrameRecord:
        """Append one encoded frame to its stream's memory."""
        record = FrameRecord(
            frame.sequence,
            frame.stream_time,
            tokens.text,
            tokens.length,
            tokens.detail,
            text_vector=tokens.text_vector,
            token_ids=tokens.token_ids,
            items=list(tokens.items),
        )
        if decision is not None:
            record.tier, record.score, record.threshold = decision.tier, decision.score, decision.threshold
        started = time.perf_counter()
        evicted = stream.memory.append(
            record,
            lambda cache: self.adapter.prefill(tokens.embeds, cache, summarize=True, positions=tokens.positions),
        )
        timings = dict(tokens.timings_ms)
        timings["prefill"] = (time.perf_counter() - started) * 1000
        stream.stats.add(timings)
        confidence = dict(zip(tokens.items, tokens.confidence, strict=True)) if tokens.confidence else None
        self._watches.check(stream.stream_id, record, stream.memory, self.adapter, confidence)
        self._snapshot_if_due(stream, frame.stream_time)
        if evicted:
            log.debug(
                "%s: %d frames left the device, up to t=%.1fs", stream.stream_id, len(evicted), evicted[-1].stream_time
            )
        return record

    # Watches (standing questions, `streamer.watches`).

    def add_watch(self, stream_id: str, spec: WatchSpec, watch_id: str | None = None) -> WatchInfo:
        """Start checking `spec` on the stream from its next frame; it lives until removed (or its stream is)."""
        self._stream(stream_id)
        return self._watches.add(stream_id, spec, watch_id)

    def remove_watch(self, watch_id: str) -> bool:
        """Stop a watch; False when there is none of that id."""
        return self._watches.remove(watch_id)

    def watches(self, stream_id: str | None = None) -> list[WatchInfo]:
        """The watches of one stream, or of all."""
        return self._watches.of_stream(stream_id)

    def watch_events(self, since: int = 0) -> list[tuple[int, WatchEvent]]:
        """Recent watch events (the newest `streamer.watches.EVENTS_KEPT`) numbered in order, after number `since`."""
        return self._watches.events(since)

    def on_watch_event(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener(event)` for every new watch event, from the ingest thread; returns the unsubscriber."""
        return self._watches.subscribe(listener)

    # Snapshots.

    def snapshot_path(self, stream_id: str) -> Path | None:
        directory = self.config.snapshot.dir
        return directory / f"{stream_id}.memory.pt" if directory is not None else None

    def save_snapshot(self, stream_id: str) -> Path | None:
        """Bring the stream's snapshot up to date now (atomically: `memory.snapshot`); None without a
        snapshot_dir."""
        stream = self._stream(stream_id)
        store = stream.snapshots
        if store is None:
            return None
        size = store.save(stream.memory)
        records = stream.memory.records
        stream.last_snapshot = records[-1].stream_time if records else None
        log.info("%s: snapshot of %d frames brought up to date in %s (%.1f MB written)", stream_id, len(records),
                 store.path, size / 1e6)  # fmt: skip
        return store.path

    def close(self) -> None:
        """Snapshot every stream (when snapshots are on); call on shutdown."""
        for stream_id in list(self._streams):
            self.save_snapshot(stream_id)

    def _snapshot_if_due(self, stream: Stream, stream_time: float) -> None:
        if self.config.snapshot.dir is None:
            return
        every = self.config.snapshot.every_s
        if stream.last_snapshot is None or stream_time - stream.last_snapshot >= every:
            try:
                self.save_snapshot(stream.stream_id)
            except OSError as error:
                # Ingest goes on; the snapshot is tried again SNAPSHOT_RETRY_S of stream time later.
                stream.snapshot_failures += 1
                stream.last_snapshot = stream_time - every + min(every, SNAPSHOT_RETRY_S)
                log.error("%s: snapshot failed (%s); ingest goes on, retrying in %.0f s", stream.stream_id, error,
                          min(every, SNAPSHOT_RETRY_S))  # fmt: skip

    # Questions.

    def ask(
        self,
        stream_id: str,
        question: str,
        options: Sequence[str] | None = None,
        since: float = 0.0,
        cancel: threading.Event | None = None,
    ) -> AnswerHandle:
        """Start answering `question` about the stream as it is now; iterate the handle for the text deltas.

        The view of the memory the answer reads is taken here (the handle's `as_of`); choosing its frames and
        generating run in the thread that iterates the handle, while frames keep arriving.
        options: the choices of a multiple-choice question, which `question` lists (`streamer.intent.options_prompt`);
        the answer is the best-scoring one.
        since: the question reads no frame older than this stream time, and no showing of the event timeline
        that began earlier. Blocks are chosen (retrieval, recent window, named times) among the frames from
        `since` on, so a question limited to the last minute still gets its best frames from that minute;
        their KV was computed in the stream's full context, as with any streaming cache.
        cancel: an event that stops the answer when set, besides `Engine.cancel` and the handle's `cancel()`.
        """
        started = time.perf_counter()  # TTFT counts the choice of frames too
        view = self._stream(stream_id).memory.view()

        def run(stop: threading.Event) -> Generator[str, None, Answer]:
            return self._answer(view, question, options or (), since, stop, started)

        def closed(handle: AnswerHandle) -> None:
            view.close()
            self._answers.pop(handle.answer_id, None)
            self.heap.maybe_trim()  # the answer's cache fork was the largest thing it allocated

        handle = AnswerHandle(stream_id, question, view.as_of, run, closed, cancel)
        self._answers[handle.answer_id] = handle
        return handle

    def cancel(self, answer_id: str) -> bool:
        """Stop an answer in flight at its next token; False when there is no such answer (it has ended)."""
        handle = self._answers.get(answer_id)
        if handle is not None:
            handle.cancel()
        return handle is not None

    def _answer(
        self,
        view: MemoryView,
        question: str,
        options: Sequence[str],
        since: float,
        cancel: threading.Event,
        started: float,
    ) -> Generator[str, None, Answer]:
        candidates = view.since(since) if since > 0 else view
        scheduler = self.adapter.scheduler
        with scheduler.preparing() if scheduler is not None else contextlib.nullcontext():
            reading = self.choose(candidates, question, options)
            config = self.config
            return (
                yield from generate_answer(
                    self.adapter,
                    view,
                    reading,
                    question,
                    options=options or None,
                    max_new_tokens=config.answer.max_new_tokens,
                    max_question_tokens=config.answer.max_question_tokens,
                    cancel=cancel,
                    reread=config.answer.source == "text",
                    choice_scoring=config.answer.choice_scoring,
                    controls=config.answer.controls,
                    grounded=config.answer.grounded,
                    anchor_seconds=config.retrieval.anchor_seconds,
                    started=started,
                )
            )

    def choose(self, view: MemoryView, question: str, options: Sequence[str] = ()) -> Reading:
        """What a question reads, blocks and timeline lines: see `streamer.retrieval.select_reading`."""
        config = self.config
        scores = None
        if config.retrieval.top_k and view.index is not None:
            adapter = self.adapter
            query = None
            if config.retrieval.internal_weight:
                sink = assemble([view.cache.segment(0, view.sink_tokens)], adapter.rotate_keys)
                embeds = adapter.question_embeds(question)[:, : config.answer.max_question_tokens]
                query = adapter.query_summary(embeds, sink)
            scores = view.index.scores(query, adapter.question_vector(question), upto=view.frames)
        selection = Selection(
            config.retrieval.top_k,
            config.memory.window_seconds,
            config.retrieval.anchor_seconds,
            config.retrieval.lexical_weight,
            config.retrieval.coverage,
            config.retrieval.read_intent,
        )
        return select_reading(view, question, scores, selection, options)
