"""The simplest memory policy: an attention sink plus the most recent frames, under a token budget.

Layout of the resident cache: `[sink | frame blocks, oldest first]`, positions contiguous. When a new
frame does not fit, the oldest blocks leave and the rest move back by exact RoPE re-rotation, so the
model always sees a contiguous context that starts at position 0.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from memory.errors import BudgetError
from memory.kv_cache import KeyRotation, StreamingCache
from memory.records import FrameRecord, ResidentBlock


@dataclass(frozen=True)
class MemorySnapshot:
    """A consistent view for answering one question: a fork of the cache and the blocks in it."""

    cache: StreamingCache
    blocks: tuple[ResidentBlock, ...]
    sink_tokens: int
    as_of: float  # stream time of the newest frame in the snapshot

    def close(self) -> None:
        self.cache.close()

    def context(self, chosen: Sequence[ResidentBlock], rotate: KeyRotation) -> StreamingCache:
        """A cache of `[sink | chosen blocks]` at contiguous positions, for one question.

        Choosing every block returns the snapshot's own cache: nothing is copied or moved.
        """
        if len(chosen) == len(self.blocks):
            return self.cache
        spans = [(0, self.sink_tokens)] + [(b.start, b.end) for b in sorted(chosen, key=lambda b: b.start)]
        return self.cache.gather(spans, rotate)


class FifoMemory:
    """Sink plus the newest frames; every frame keeps its `FrameRecord` after its KV is dropped.

    budget_tokens: KV tokens allowed on the compute device, including `answer_reserve` tokens kept
    free for a question and its answer, so an answer in flight never pushes the total past it.
    evict_chunk: when a frame does not fit, free at least this many tokens at once, so the
    re-rotation of the remaining blocks is paid once per chunk rather than once per frame.
    """

    def __init__(
        self,
        num_layers: int,
        budget_tokens: int,
        rotate: KeyRotation,
        answer_reserve: int = 128,
        evict_chunk: int = 256,
    ) -> None:
        if budget_tokens <= answer_reserve:
            raise BudgetError(
                f"Token budget {budget_tokens} leaves no room beside the {answer_reserve} tokens "
                "reserved for answering; raise --budget."
            )
        self.cache = StreamingCache(num_layers)
        self.budget_tokens = budget_tokens
        self.answer_reserve = answer_reserve
        self.evict_chunk = evict_chunk
        self.rotate = rotate
        self.sink_tokens = 0
        self.records: list[FrameRecord] = []
        self.blocks: deque[ResidentBlock] = deque()
        self.evicted_tokens = 0
        self.lock = threading.RLock()

    @property
    def resident_tokens(self) -> int:
        return self.cache.length

    @property
    def frame_budget(self) -> int:
        """Tokens available to frame blocks."""
        return self.budget_tokens - self.answer_reserve - self.sink_tokens

    def seal_sink(self) -> None:
        """Mark everything in the cache so far as the sink (the system prompt); it is never evicted."""
        self.sink_tokens = self.cache.length
        if self.frame_budget <= 0:
            raise BudgetError(
                f"Token budget {self.budget_tokens} is smaller than the system prompt ({self.sink_tokens}) "
                f"plus the answer reserve ({self.answer_reserve}); raise --budget."
            )

    def make_room(self, new_tokens: int) -> list[FrameRecord]:
        """Evict the oldest blocks until `new_tokens` more fit in the budget; returns what left."""
        if new_tokens > self.frame_budget:
            raise BudgetError(
                f"A frame of {new_tokens} tokens cannot fit in a frame budget of {self.frame_budget}; raise --budget."
            )
        used = self.cache.length - self.sink_tokens
        if used + new_tokens <= self.frame_budget:
            return []
        target = max(0, min(self.frame_budget - new_tokens, self.frame_budget - self.evict_chunk))
        leaving: list[ResidentBlock] = []
        while self.blocks and used > target:
            block = self.blocks.popleft()
            leaving.append(block)
            used -= block.length
        count = sum(block.length for block in leaving)
        self.cache.remove(self.sink_tokens, count, self.rotate)
        self.blocks = deque(ResidentBlock(block.record, block.start - count, block.length) for block in self.blocks)
        for block in leaving:
            block.record.resident = False
        self.evicted_tokens += count
        return [block.record for block in leaving]

    def add(self, record: FrameRecord) -> ResidentBlock:
        """Register the block just prefilled at the end of the cache for `record`."""
        block = ResidentBlock(record, self.cache.length - record.tokens, record.tokens)
        self.records.append(record)
        self.blocks.append(block)
        return block

    def snapshot(self) -> MemorySnapshot:
        """A fork of the cache and the current blocks; ingest may continue while it is used."""
        with self.lock:
            as_of = self.blocks[-1].record.stream_time if self.blocks else 0.0
            return MemorySnapshot(self.cache.fork(), tuple(self.blocks), self.sink_tokens, as_of)

    def frames_between(self, start: float, end: float) -> Sequence[FrameRecord]:
        return [r for r in self.records if start <= r.stream_time <= end]
