"""The engine core: streams, their memories, frame ingest and questions. Knows nothing of sockets.

Every front end (the replay CLI, later the server and a Ray actor) drives this same object:
`add_stream`, `push_frame`, `ask`. Ingest and answering touch a stream's memory only under its lock,
and an answer works on a snapshot, so frames keep arriving while a question is being answered.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from memory.curvature import CurvatureDecision, CurvatureScorer
from memory.errors import BudgetError, SnapshotError
from memory.events import since_time
from memory.index import BlockIndex
from memory.kv_cache import assemble
from memory.policy import make_policy
from memory.records import FrameRecord
from memory.snapshot import load_snapshot, remove_stale_partials, save_snapshot, set_aside
from memory.stream_memory import Block, MemorySnapshot, StreamMemory
from sources.frame import Frame
from streamer.adapters.base import FrameTokens, ModelAdapter
from streamer.engine_config import EngineConfig as EngineConfig
from streamer.query import Answer, generate_answer
from streamer.retrieval import Reading, Selection, select_reading

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
    scorer: CurvatureScorer | None = None
    stats: IngestStats = field(default_factory=IngestStats)
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


class Engine:
    """Streams sharing one loaded model adapter."""

    def __init__(self, adapter: ModelAdapter, config: EngineConfig | None = None) -> None:
        self.adapter = adapter
        self.config = config or EngineConfig()
        self.streams: dict[str, Stream] = {}

    def add_stream(self, stream_id: str) -> Stream:
        """Create a stream with an empty memory whose sink (the system prompt) is already prefilled."""
        if stream_id in self.streams:
            raise ValueError(f"stream '{stream_id}' already exists")
        config = self.config
        memory = StreamMemory(
            self.adapter.num_layers,
            config.budget_tokens,
            self.adapter.rotate_keys,
            answer_reserve=config.answer_reserve,
            evict_chunk=config.evict_chunk,
            host_budget_tokens=config.host_budget_tokens,
            index=BlockIndex(config.internal_weight, config.text_weight),
            policy=make_policy(config.policy),
            window_seconds=config.window_seconds,
            compress_method=config.compression,
            compress_ratio=config.compress_ratio,
        )
        self.adapter.prefill(self.adapter.system_embeds(), memory.cache)
        memory.seal_sink()
        scorer = CurvatureScorer(config.curvature) if config.policy == "curvature" else None
        stream = Stream(stream_id, memory, scorer)
        path = self.snapshot_path(stream_id)
        if path is not None:
            for stale in remove_stale_partials(path):
                log.info("%s: removed %s, left by a writer that was stopped", stream_id, stale)
        if path is not None and path.exists():
            try:
                load_snapshot(memory, path)
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
        self.streams[stream_id] = stream
        return stream

    def check_budget(self, fps: float) -> None:
        """Raise BudgetError when the budget cannot hold the sink, the answer reserve and the short-term
        window at `fps` frames per second (estimated from the adapter's typical frame size)."""
        config = self.config
        sink = int(self.adapter.system_embeds().shape[1])
        window = int(config.window_seconds * fps * self.adapter.typical_frame_tokens)
        needed = sink + config.answer_reserve + window
        if config.budget_tokens < needed:
            raise BudgetError(
                f"Token budget {config.budget_tokens} is smaller than the system prompt ({sink}), the answer "
                f"reserve ({config.answer_reserve}) and {config.window_seconds:g} s of recent frames at {fps:g} fps "
                f"(about {window}); raise --budget to at least {needed}."
            )

    def remove_stream(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)

    def stream(self, stream_id: str) -> Stream:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise UnknownStream(stream_id) from None

    def push_frame(self, stream_id: str, frame: Frame, detail: str | None = None) -> FrameRecord:
        """Encode one frame and prefill its tokens into the stream's cache, once.

        The frame's tier comes from the curvature scorer when the policy has one (clear frames are
        described in full, fuzzy ones tersely); `detail` forces the encoding instead.
        """
        return self.push_frames([(stream_id, frame)], detail)[0]

    def push_frames(self, items: Sequence[tuple[str, Frame]], detail: str | None = None) -> list[FrameRecord]:
        """`push_frame` for several (stream id, frame) pairs, encoded as one batch by the adapter.

        Each frame is prefilled into its own stream's cache, in the order given; a stream's frames
        must come in its frame order, since its curvature scorer sees them in that order.
        """
        streams = [self.stream(stream_id) for stream_id, _ in items]
        items = [(stream_id, stream.on_clock(frame)) for (stream_id, frame), stream in zip(items, streams, strict=True)]
        decisions: list[CurvatureDecision | None] = [None] * len(items)

        def chooser(index: int) -> Callable[[np.ndarray | None], str]:
            scorer, stream_time = streams[index].scorer, items[index][1].stream_time

            def choose_detail(features: np.ndarray | None) -> str:
                if scorer is not None and features is not None:
                    decisions[index] = scorer.score(features, stream_time)
                if detail is not None:
                    return detail
                decision = decisions[index]
                return "terse" if decision is not None and decision.tier == "fuzzy" else "full"

            return choose_detail

        frames = [frame for _, frame in items]
        encoded = self.adapter.frame_tokens_batch(frames, [chooser(index) for index in range(len(items))])
        return [
            self._store(stream, frame, tokens, decision)
            for stream, frame, tokens, decision in zip(streams, frames, encoded, decisions, strict=True)
        ]

    def _store(
        self, stream: Stream, frame: Frame, tokens: FrameTokens, decision: CurvatureDecision | None
    ) -> FrameRecord:
        """Prefill one encoded frame into its stream's cache and record it."""
        memory = stream.memory
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
        with memory.lock:
            started = time.perf_counter()
            evicted = memory.make_room(tokens.length, frame.stream_time)
            record.key_summary = self.adapter.prefill(
                tokens.embeds, memory.cache, summarize=True, positions=tokens.positions
            )
            memory.add(record)
            timings = dict(tokens.timings_ms)
            timings["prefill"] = (time.perf_counter() - started) * 1000
        stream.stats.add(timings)
        self._snapshot_if_due(stream, frame.stream_time)
        if evicted:
            log.debug(
                "%s: %d frames left the device, up to t=%.1fs", stream.stream_id, len(evicted), evicted[-1].stream_time
            )
        return record

    def snapshot_path(self, stream_id: str) -> Path | None:
        directory = self.config.snapshot_dir
        return directory / f"{stream_id}.memory.pt" if directory is not None else None

    def save_snapshot(self, stream_id: str) -> Path | None:
        """Write the stream's memory to its snapshot file now (atomically); None without a snapshot_dir."""
        path = self.snapshot_path(stream_id)
        if path is not None:
            stream = self.stream(stream_id)
            size = save_snapshot(stream.memory, path)
            records = stream.memory.records
            stream.last_snapshot = records[-1].stream_time if records else None
            log.info("%s: snapshot of %d frames written to %s (%.1f MB)", stream_id, len(records), path, size / 1e6)
        return path

    def close(self) -> None:
        """Snapshot every stream (when snapshots are on); call on shutdown."""
        for stream_id in list(self.streams):
            self.save_snapshot(stream_id)

    def _snapshot_if_due(self, stream: Stream, stream_time: float) -> None:
        if self.config.snapshot_dir is None:
            return
        every = self.config.snapshot_every_s
        if stream.last_snapshot is None or stream_time - stream.last_snapshot >= every:
            try:
                self.save_snapshot(stream.stream_id)
            except OSError as error:
                # Ingest goes on; the snapshot is tried again SNAPSHOT_RETRY_S of stream time later.
                stream.snapshot_failures += 1
                stream.last_snapshot = stream_time - every + min(every, SNAPSHOT_RETRY_S)
                log.error("%s: snapshot failed (%s); ingest goes on, retrying in %.0f s", stream.stream_id, error,
                          min(every, SNAPSHOT_RETRY_S))  # fmt: skip

    def ask(
        self,
        stream_id: str,
        question: str,
        cancel: threading.Event | None = None,
        on_snapshot: Callable[[float], None] | None = None,
        since: float = 0.0,
        options: Sequence[str] | None = None,
    ) -> Generator[str, None, Answer]:
        """Stream the answer's text deltas; the generator returns the finished `Answer`.

        options: the choices of a multiple-choice question, which `question` lists (`streamer.intent.options_prompt`);
        the answer is the best-scoring one.
        on_snapshot: called with the snapshot's stream time (the answer's `as_of`) as soon as the
        memory snapshot the answer reads is taken, before retrieval and generation.
        since: the question reads no frame older than this stream time, and no showing of the event timeline
        that began earlier. Blocks are chosen (retrieval, recent window, named times) among the frames from
        `since` on, so a question limited to the last
        minute still gets its best frames from that minute; their KV was computed in the stream's full
        context, as with any streaming cache.
        """
        started = time.perf_counter()  # TTFT counts the choice of frames too
        snapshot = self.stream(stream_id).memory.snapshot()
        try:
            if on_snapshot is not None:
                on_snapshot(snapshot.as_of)
            candidates = snapshot
            if since > 0:
                candidates = dataclasses.replace(
                    snapshot,
                    blocks=tuple(b for b in snapshot.blocks if b.record.stream_time >= since),
                    offloaded=tuple(b for b in snapshot.offloaded if b.record.stream_time >= since),
                    timeline=since_time(snapshot.timeline, since),
                )
            reading = self.choose(stream_id, candidates, question, options or ())
        except BaseException:
            snapshot.close()
            raise
        config = self.config
        return (
            yield from generate_answer(
                self.adapter,
                snapshot,
                reading,
                question,
                options=options,
                max_new_tokens=config.max_new_tokens,
                max_question_tokens=config.max_question_tokens,
                cancel=cancel,
                reread=self.rereads,
                choice_scoring=config.choice_scoring,
                controls=config.answer_controls,
                grounded=config.grounded_answers,
                anchor_seconds=config.anchor_seconds,
                started=started,
            )
        )

    @property
    def rereads(self) -> bool:
        """Whether questions re-read their chosen frames' tokens rather than reuse the frames' cached KV."""
        return self.config.answer_from == "text"

    def first_token_logits(self, stream_id: str, question: str) -> torch.Tensor:
        """(vocab,) logits of the first answer token when the question reads every resident block.

        This is the quantity the exactness invariant is stated on: with nothing evicted it equals
        a plain forward pass over `[system | all frames | question]`.
        """
        snapshot = self.stream(stream_id).memory.snapshot()
        try:
            cache = snapshot.context(snapshot.blocks, self.adapter.rotate_keys)
            return self.adapter.next_token_logits(self.adapter.question_embeds(question), cache)
        finally:
            snapshot.close()

    def choose_blocks(self, stream_id: str, snapshot: MemorySnapshot, question: str) -> list[Block]:
        """The blocks a question reads: see `streamer.retrieval.select_reading`."""
        return self.choose(stream_id, snapshot, question).blocks

    def choose(self, stream_id: str, snapshot: MemorySnapshot, question: str, options: Sequence[str] = ()) -> Reading:
        """What a question reads, blocks and timeline lines: see `streamer.retrieval.select_reading`."""
        config = self.config
        scores = None
        if config.retrieval_top_k:
            adapter = self.adapter
            query = None
            if config.internal_weight:
                sink = assemble([snapshot.cache.segment(0, snapshot.sink_tokens)], adapter.rotate_keys)
                embeds = adapter.question_embeds(question)[:, : config.max_question_tokens]
                query = adapter.query_summary(embeds, sink)
            index = self.stream(stream_id).memory.index
            scores = index.scores(query, adapter.question_vector(question), upto=snapshot.frames)
        selection = Selection(
            config.retrieval_top_k,
            config.window_seconds,
            config.anchor_seconds,
            config.lexical_weight,
            config.coverage,
            config.read_intent,
        )
        return select_reading(snapshot, question, scores, selection, options)
