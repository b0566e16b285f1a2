"""One stream's memory: a resident KV cache under a token budget, a host tier behind it, and records.

Layout of the resident cache: `[sink | frame blocks, oldest first]`, positions contiguous from 0.
When a new frame does not fit, a budget policy (`memory.policy`) decides which blocks are compressed
in place and which leave the device: their keys and values move to host memory (pinned on CUDA),
and the cache is rebuilt with every remaining block moved by exact RoPE re-rotation. The host tier
has its own token cap; past it the policy's least valuable host blocks are dropped. A frame keeps its
`FrameRecord` (time, description, retrieval vectors) whatever happens to its KV, so a question
about it can still be routed, and a host block can come back for a question that needs it, until the
record is older than `compact_after_s`: then the frame leaves the frame level altogether (record, index
entries, host block), and what it showed lives on in the event timeline, so a stream's memory stays
bounded however long it runs. Frame ids keep counting; `first_id` is the oldest frame still held.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from memory.compression import compress_block
from memory.curvature import CurvatureConfig, CurvatureDecision
from memory.errors import BudgetError
from memory.events import EventTimeline, TimelineItem, since_time
from memory.frame_table import FrameTable
from memory.index import BlockIndex
from memory.kv_cache import KeyRotation, KVStore, StreamingCache, assemble
from memory.policy import EvictionPlan, make_policy
from memory.records import FrameRecord, Location, OffloadedBlock, ResidentBlock
from memory.settings import CompressionMethod, MemoryPolicyName

Block = ResidentBlock | OffloadedBlock
# Compaction waits until at least this many frames are past their age (and an eighth of those held).
COMPACT_MIN_FRAMES = 64


@dataclass(frozen=True)
class MemoryView:
    """A consistent view for answering one question: a fork of the resident cache, the blocks in it,
    and the host blocks, as of the newest frame."""

    cache: StreamingCache
    blocks: tuple[ResidentBlock, ...]
    offloaded: tuple[OffloadedBlock, ...]
    sink_tokens: int
    as_of: float
    frames: int  # frame ids given when the view was taken (records and index entries are [first, frames))
    table: FrameTable  # the memory's per-frame facts as of the view; entries past `frames` came later
    by_id: dict[int, Block]  # `blocks` and `offloaded` by frame id
    timeline: tuple[TimelineItem, ...] = ()  # the event timeline as of the view, by first showing
    index: BlockIndex | None = None  # the memory's retrieval index as of the view; entries past `frames` came later
    first: int = 0  # the oldest frame id the memory held (older records were compacted away)

    def close(self) -> None:
        self.cache.close()

    def since(self, start: float) -> MemoryView:
        """This view without the frames, and the timeline's showings, older than stream time `start`."""
        blocks = tuple(b for b in self.blocks if b.record.stream_time >= start)
        offloaded = tuple(b for b in self.offloaded if b.record.stream_time >= start)
        by_id: dict[int, Block] = {b.record.frame_id: b for b in offloaded}
        by_id.update((b.record.frame_id, b) for b in blocks)
        return replace(self, blocks=blocks, offloaded=offloaded, timeline=since_time(self.timeline, start), by_id=by_id)

    @cached_property
    def ids(self) -> np.ndarray:
        """The frame ids of `by_id`, ascending (time order)."""
        return np.sort(np.fromiter(self.by_id, dtype=np.int64, count=len(self.by_id)))

    def context(self, chosen: Sequence[Block], rotate: KeyRotation) -> StreamingCache:
        """A cache of `[sink | chosen blocks in time order]` at contiguous positions, for one question.

        Choosing exactly the resident blocks returns the view's own cache: nothing is copied.
        """
        if len(chosen) == len(self.blocks) and all(isinstance(b, ResidentBlock) for b in chosen):
            return self.cache
        ordered = sorted(chosen, key=lambda b: b.record.frame_id)
        segments = [self.cache.segment(0, self.sink_tokens)] + [b.segment(self.cache) for b in ordered]
        return assemble(segments, rotate, device=self.cache.keys(0).device)


@dataclass(frozen=True)
class MemorySettings:
    """How one stream's memory is sized and which policy gives way.

    budget_tokens: KV tokens allowed on the compute device, including `answer_reserve` tokens kept
    free for a question and its answer.
    evict_chunk: when a frame does not fit, free at least this many tokens at once, so the
    re-rotation of the remaining blocks is paid once per chunk rather than once per frame.
    host_budget_tokens: KV tokens kept in host memory; 0 drops evicted blocks at once.
    policy: the budget policy's name (`memory.policy.make_policy`); curvature: its scorer's settings.
    window_seconds: the short-term window, which the policy leaves alone while anything else can give way.
    compression, compress_ratio: how a demoted frame's KV block is compressed, and the share it keeps.
    internal_weight, text_weight: the retrieval index's weights (`memory.index.BlockIndex`).
    compact_after_s: stream seconds a frame stays at the frame level; older frames are compacted away in
    chunks of an eighth of what is held (0: never).
    index_device: the torch device (a GPU) the retrieval index's vectors live on; None: faiss on the CPU.
    """

    budget_tokens: int
    answer_reserve: int = 128
    evict_chunk: int = 256
    host_budget_tokens: int = 0
    policy: MemoryPolicyName = "fifo"
    curvature: CurvatureConfig | None = None
    window_seconds: float = 0.0
    compression: CompressionMethod = "value_norm"
    compress_ratio: float = 0.5
    internal_weight: float = 0.0
    text_weight: float = 1.0
    compact_after_s: float = 0.0
    index_device: str | None = None


class StreamMemory:
    """Sink plus the newest frames on the device, older frames on the host, a record for every frame.

    The one way in for a frame is `append`, which makes room, has the caller prefill the frame's tokens
    and registers the frame, all under the memory's own lock; `view()` is the way out for a question,
    and `state_dict` / `load_state_dict` for a snapshot file (`memory.snapshot`).
    """

    @property
    def cache(self) -> StreamingCache:
        """The resident KV: a copy of its store has room for the budget and one chunk past it (or, if more,
        for what the append that made the copy needs and 256 tokens), not twice what it held."""
        return self._cache

    @cache.setter
    def cache(self, cache: StreamingCache) -> None:
        cache.most_tokens = self.budget_tokens + self.evict_chunk
        self._cache = cache

    def __init__(self, num_layers: int, rotate: KeyRotation, settings: MemorySettings) -> None:
        if settings.budget_tokens <= settings.answer_reserve:
            raise BudgetError(
                f"Token budget {settings.budget_tokens} leaves no room beside the {settings.answer_reserve} tokens "
                "reserved for answering; raise --budget."
            )
        self.settings = settings
        self.budget_tokens = settings.budget_tokens
        self.answer_reserve = settings.answer_reserve
        self.evict_chunk = settings.evict_chunk
        self.cache = StreamingCache(num_layers)
        self.host_budget_tokens = settings.host_budget_tokens
        self.rotate = rotate
        self.index = BlockIndex(settings.internal_weight, settings.text_weight, settings.index_device)
        self.table = FrameTable()
        self.policy = make_policy(settings.policy, settings.curvature)
        self.policy.content_vector = self.content_vector
        self.window_seconds = settings.window_seconds
        self.compress_method = settings.compression
        self.compress_ratio = settings.compress_ratio
        self.sink_tokens = 0
        self.records: list[FrameRecord] = []  # frames first_id, first_id + 1, ...
        self.first_id = 0
        # How many records are in each (tier, location), kept as frames move: status reads it without a
        # pass over every record.
        self.places: dict[tuple[str, str], int] = {}
        self.timeline = EventTimeline()
        self.blocks: deque[ResidentBlock] = deque()
        self.offloaded: dict[int, OffloadedBlock] = {}
        # The host blocks by the policy's drop order (fixed per record), smallest first: the next to go.
        self.drop_queue: list[tuple[tuple[float, ...], int]] = []
        self.host_tokens = 0
        self.evicted_tokens = 0
        self.dropped_tokens = 0
        self.compressed_tokens = 0
        self.lock = threading.RLock()
        # Held for a whole `append` (one frame at a time; a snapshot of the state waits for the frame); while
        # the frame's prefill runs, `lock` is free and `_before_frame` is the resident cache's (store, length)
        # before it, which is what a view taken meanwhile reads.
        self.appending = threading.RLock()
        self._before_frame: tuple[KVStore | None, int] | None = None

    @property
    def resident_tokens(self) -> int:
        return self.cache.length

    @property
    def frame_budget(self) -> int:
        """Tokens available to frame blocks on the device."""
        return self.budget_tokens - self.answer_reserve - self.sink_tokens

    def seal_sink(self) -> None:
        """Mark everything in the cache so far as the sink (the system prompt); it is never evicted."""
        self.sink_tokens = self.cache.length
        if self.frame_budget <= 0:
            raise BudgetError(
                f"Token budget {self.budget_tokens} is smaller than the system prompt ({self.sink_tokens}) "
                f"plus the answer reserve ({self.answer_reserve}); raise --budget."
            )

    def _make_room(self, new_tokens: int, now: float | None = None) -> list[FrameRecord]:
        """Apply the policy until `new_tokens` more fit in the budget; returns the records that left the device.

        now: stream time of the frame about to be added; frames within `window_seconds` of it are the
        short-term window, which the policy leaves alone while anything else can give way.
        """
        if new_tokens > self.frame_budget:
            raise BudgetError(
                f"A frame of {new_tokens} tokens cannot fit in a frame budget of {self.frame_budget}; raise --budget."
            )
        used = self.cache.length - self.sink_tokens
        if used + new_tokens <= self.frame_budget:
            return []
        target = max(0, min(self.frame_budget - new_tokens, self.frame_budget - self.evict_chunk))
        if now is None:
            now = self.records[-1].stream_time if self.records else 0.0
        host = self.host_budget_tokens > 0
        plan = self.policy.plan(list(self.blocks), used - target, now - self.window_seconds, self.compress_ratio, host)
        return self._apply(plan)

    def _apply(self, plan: EvictionPlan) -> list[FrameRecord]:
        """Compress and evict as planned, then rebuild the resident cache at contiguous positions."""
        evicting = {b.record.frame_id for b in plan.evict}
        compressing = {b.record.frame_id for b in plan.compress}
        segments = [self.cache.segment(0, self.sink_tokens)]
        kept: deque[ResidentBlock] = deque()
        at = self.sink_tokens
        for block in self.blocks:
            record = block.record
            if record.frame_id in evicting:
                self._offload(block)
                self.evicted_tokens += block.length
                continue
            segment = block.segment(self.cache)
            if record.frame_id in compressing:
                segment, survivors = compress_block(segment, self.compress_method, self.compress_ratio, self.rotate)
                record.tokens, record.compressed = segment.length, True
                self._move(record, tier="fuzzy")
                ids = record.token_ids
                record.token_ids = [ids[i] for i in survivors] if ids is not None and survivors is not None else None
                self.compressed_tokens += block.length - segment.length
            segments.append(segment)
            kept.append(ResidentBlock(record, at, segment.length))
            at += segment.length
        self.cache = assemble(segments, self.rotate, device=self.cache.keys(0).device)
        self.blocks = kept
        return [b.record for b in plan.evict]

    def _offload(self, block: ResidentBlock) -> None:
        record = block.record
        if self.host_budget_tokens < block.length:
            self._move(record, location="gone")
            self.dropped_tokens += block.length
            return
        segment = self.cache.segment(block.start, block.end)
        keys = [_to_host(k) for k in segment.keys]
        values = [_to_host(v) for v in segment.values]
        self.offloaded[record.frame_id] = OffloadedBlock(record, keys, values, block.start)
        heapq.heappush(self.drop_queue, (self.policy.drop_order(record), record.frame_id))
        self._move(record, location="host")
        self.host_tokens += block.length
        while self.host_tokens > self.host_budget_tokens:
            _, frame_id = heapq.heappop(self.drop_queue)
            victim = self.offloaded.pop(frame_id)
            self._move(victim.record, location="gone")
            self.host_tokens -= victim.length
            self.dropped_tokens += victim.length

    def _move(self, record: FrameRecord, tier: str | None = None, location: Location | None = None) -> None:
        """Change a record's tier or location, keeping `places` counted."""
        self._count(record, -1)
        record.tier = tier or record.tier
        record.location = location or record.location
        self._count(record, 1)

    def _count(self, record: FrameRecord, change: int) -> None:
        place = (record.tier, record.location)
        count = self.places.get(place, 0) + change
        if count:
            self.places[place] = count
        else:
            self.places.pop(place, None)

    def decide(self, features: np.ndarray | None, stream_time: float) -> CurvatureDecision | None:
        """The tier the policy gives a frame about to be encoded (None: no opinion); frames in stream order."""
        with self.lock:
            return self.policy.decide(features, stream_time)

    def append(self, record: FrameRecord, prefill: Callable[[StreamingCache], np.ndarray | None]) -> list[FrameRecord]:
        """Add one frame: make room for its `record.tokens`, have `prefill(cache)` write its tokens at the end of
        the resident cache (returning the block's key summary, or None), register and index it. A question's
        view sees the frame entirely or not at all, and does not wait for its prefill: one taken while the
        prefill runs is the memory as it was before the frame (room already made). Returns the records
        that left the device to make room."""
        with self.appending:
            with self.lock:
                evicted = self._make_room(record.tokens, record.stream_time)
                before = self.cache.length
                self._before_frame = (self.cache.store, before)
            try:
                summary = prefill(self.cache)
            except BaseException:
                with self.lock:
                    self._before_frame = None
                raise
            with self.lock:
                self._before_frame = None
                written = self.cache.length - before
                if written != record.tokens:
                    raise ValueError(f"the frame's prefill wrote {written} tokens, its record says {record.tokens}")
                record.key_summary = summary
                self._add(record)
                self._compact(record.stream_time)
        return evicted

    @property
    def frame_count(self) -> int:
        """Frames added so far (the next frame's id), compacted ones included."""
        return self.first_id + len(self.records)

    def record(self, frame_id: int) -> FrameRecord:
        """The record of frame `frame_id` (IndexError once compacted away)."""
        at = frame_id - self.first_id
        if at < 0:
            raise IndexError(f"frame {frame_id} was compacted away")
        return self.records[at]

    def _compact(self, now: float) -> None:
        """Take the frames older than `compact_after_s` off the frame level once they are an eighth of what
        is held (so the copying is paid once per many frames): their blocks leave the device and the host,
        their records, index entries and table rows go; the timeline keeps their showings."""
        age = self.settings.compact_after_s
        if not age:
            return
        cut = self.table.count_before(now - age)
        if cut - self.first_id < max(COMPACT_MIN_FRAMES, len(self.records) // 8):
            return
        resident = [b for b in self.blocks if b.record.frame_id < cut]
        if resident:
            self._apply(EvictionPlan(evict=resident))
        for record in self.records[: cut - self.first_id]:
            block = self.offloaded.pop(record.frame_id, None)
            if block is not None:
                self.host_tokens -= block.length
                self.dropped_tokens += block.length
            self._count(record, -1)
        self.drop_queue = [entry for entry in self.drop_queue if entry[1] >= cut]
        heapq.heapify(self.drop_queue)
        del self.records[: cut - self.first_id]
        self.first_id = cut
        self.index.compact(cut)
        self.table.compact(cut)
        self.timeline.forget_frames(cut)

    def _add(self, record: FrameRecord) -> ResidentBlock:
        """Register the block just prefilled at the end of the cache for `record`, and index it."""
        self._register(record)
        block = ResidentBlock(record, self.cache.length - record.tokens, record.tokens)
        self.blocks.append(block)
        self.policy.observe(record)
        return block

    def _register(self, record: FrameRecord, observe: bool = True) -> None:
        """Give `record` the next frame id and add it to the records, the indexes and (`observe`) the timeline."""
        record.frame_id = self.index.add(record.key_summary, record.text_vector)
        reads_text = any(kind == "text" for kind, _ in record.items)
        table_id = self.table.add(record.stream_time, record.text, reads_text)
        assert record.frame_id == table_id == self.frame_count, "records and indexes must stay aligned"
        record.key_summary = None  # the index holds it, in half precision
        self.records.append(record)
        self._count(record, 1)
        if observe:
            self.timeline.observe(record.frame_id, record.stream_time, record.items, record.detail == "full")

    def content_vector(self, record: FrameRecord) -> np.ndarray | None:
        """What a frame shows, as one vector: its description's text embedding, else its key summary."""
        if record.text_vector is not None:
            return record.text_vector
        return self.index.key_summary(record.frame_id) if record.frame_id >= 0 else None

    def view(self) -> MemoryView:
        """A fork of the cache and the current blocks; ingest may continue while it is used."""
        with self.lock:
            as_of = self.records[-1].stream_time if self.records else 0.0
            by_id: dict[int, Block] = dict(self.offloaded)
            by_id.update((b.record.frame_id, b) for b in self.blocks)
            before = self._before_frame
            # During a frame's prefill, the tokens before it: the prefill writes only after them, and a
            # cache that does not own the store's tail copies before it appends.
            cache = StreamingCache(self.cache.num_layers, *before) if before is not None else self.cache.fork()
            return MemoryView(
                cache,
                tuple(self.blocks),
                tuple(self.offloaded.values()),
                self.sink_tokens,
                as_of,
                self.frame_count,
                self.table.frozen(),
                by_id,
                tuple(self.timeline.view(as_of)),
                self.index.frozen(),
                self.first_id,
            )

    def state_dict(self, exclude: Container[int] = frozenset()) -> dict[str, Any]:
        """Everything needed to rebuild this memory, as tensors, numbers and strings (`memory.snapshot`
        writes it to files). Not included: the curvature scorer's window (a restored stream warms up
        again) and the retrieval index itself (rebuilt from the records' text vectors and the key
        summaries, stored as one float16 array). The event timeline is included: compacted frames' records
        are gone, so it cannot be rebuilt from them.

        exclude: frames whose record, key summary and host block are left out (a snapshot already holds
        them); "frames" still counts every frame id given, "first" is the oldest held, and "host" lists every
        frame on the host. With nothing excluded the records are every record held, in frame id order.
        """
        with self.appending, self.lock:
            length = self.cache.length
            layers = range(self.cache.num_layers)
            records = [r for r in self.records if r.frame_id not in exclude]
            return {
                "version": STATE_VERSION,
                "sink_tokens": self.sink_tokens,
                "keys": [self.cache.keys(layer)[..., :length, :].clone() for layer in layers],
                "values": [self.cache.values(layer)[..., :length, :].clone() for layer in layers],
                "blocks": [[b.record.frame_id, b.start, b.length] for b in self.blocks],
                "offloaded": [
                    {"frame_id": b.record.frame_id, "keys": b.keys, "values": b.values, "position": b.position}
                    for b in self.offloaded.values()
                    if b.record.frame_id not in exclude
                ],
                "host": list(self.offloaded),
                "frames": self.frame_count,
                "first": self.first_id,
                "timeline": self.timeline.state(),
                "records": [_record_state(r) for r in records],
                "key_summaries": _tensor(self.index.key_summaries([r.frame_id for r in records])),
                "counters": [self.host_tokens, self.evicted_tokens, self.dropped_tokens, self.compressed_tokens],
                "policy": self.policy.state(),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this memory's contents (a fresh memory, sink sealed) with `state_dict()`'s.

        Raises ValueError, saying why in a few words, for a state of another format, model or prompt.
        """
        if not isinstance(state, dict) or state.get("version") not in (1, 2, 3, STATE_VERSION):
            raise ValueError("has an unknown format")
        if any(name not in state for name in _STATE_FIELDS):
            raise ValueError("has an unknown format")
        records = state["records"]
        first = int(state.get("first", 0))
        if first + len(records) != state.get("frames", first + len(records)) or any(
            saved.get("frame_id", frame_id) != frame_id for frame_id, saved in enumerate(records, first)
        ):
            raise ValueError("is missing frames")
        keys: list[torch.Tensor] = state["keys"]
        if len(keys) != self.cache.num_layers or int(state["sink_tokens"]) != self.sink_tokens:
            raise ValueError("was made with a different model or prompt")
        device, dtype = self.cache.keys(0).device, self.cache.keys(0).dtype
        length = int(keys[0].shape[-2])
        store = KVStore.allocate([k.to(device, dtype) for k in keys], length + 256)
        for layer, (k, v) in enumerate(zip(keys, state["values"], strict=True)):
            store.keys[layer][..., :length, :] = k.to(device, dtype)
            store.values[layer][..., :length, :] = v.to(device, dtype)
        store.written = length
        with self.appending, self.lock:
            self.cache = StreamingCache(len(keys), store, length)
            self.records = []
            self.first_id = first
            self.places = {}
            saved_timeline = state.get("timeline")
            if saved_timeline is None:  # before version 4: rebuilt from the records
                self.timeline = EventTimeline(self.timeline.rejoin_s)
            else:
                self.timeline = EventTimeline.from_state(saved_timeline)
            self.index = type(self.index)(self.index.internal_weight, self.index.text_weight, self.index.device)
            self.index.first = self.index.count = first
            self.table = FrameTable()
            self.table.first = first
            summaries = state.get("key_summaries")
            for at, saved in enumerate(state["records"]):
                record = _record_from(saved)
                if summaries is not None:
                    record.key_summary = summaries[at].float().numpy()
                self._register(record, observe=saved_timeline is None)
            self.blocks.clear()
            for frame_id, start, block_length in state["blocks"]:
                self.blocks.append(ResidentBlock(self.record(frame_id), start, block_length))
            self.offloaded = {
                item["frame_id"]: OffloadedBlock(
                    self.record(item["frame_id"]), item["keys"], item["values"], item["position"]
                )
                for item in state["offloaded"]
            }
            self.host_tokens, self.evicted_tokens, self.dropped_tokens, self.compressed_tokens = state["counters"]
            self.policy.restore(state["policy"])
            self.drop_queue = [(self.policy.drop_order(b.record), frame_id) for frame_id, b in self.offloaded.items()]
            heapq.heapify(self.drop_queue)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy of `t`; pinned when it comes from CUDA so it can come back asynchronously."""
    if t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host
    return t.clone()


# 1: key summaries inside the records; 2: no "host" and "frames"; 3: no "first" and "timeline" (all still read)
STATE_VERSION = 4
# What every version holds besides its number (2 adds "key_summaries", 3 "host" and "frames", 4 "first" and
# "timeline").
_STATE_FIELDS = ("sink_tokens", "keys", "values", "blocks", "offloaded", "records", "counters", "policy")
_VECTORS = ("text_vector", "key_summary")


def _record_state(record: FrameRecord) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for item in fields(record):
        value = getattr(record, item.name)
        state[item.name] = _tensor(value) if item.name in _VECTORS else value
    return state


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


def _record_from(state: dict[str, Any]) -> FrameRecord:
    values = dict(state)
    for name in _VECTORS:
        if values.get(name) is not None:
            values[name] = values[name].numpy()
    return FrameRecord(**values)
