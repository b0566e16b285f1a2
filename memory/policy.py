"""Budget policies: what leaves the device when a new frame does not fit.

A policy only decides; `StreamMemory` carries the decision out (compress blocks in place, move
blocks to the host tier or drop them) and rebuilds the resident cache once per decision.

- `FifoPolicy`: the newest frames stay, the oldest go (a sliding window).
- `UniformPolicy`: the long-term frames kept are evenly spaced in time; when they do not fit, the
  spacing doubles (every 2nd, then every 4th frame...), like sampling N frames from a video.
- `TieredPolicy`: the curvature memory. The short-term window is never touched. Older clear frames
  are demoted first (their KV is compressed), oldest first; then blocks leave the device: to the
  host tier oldest first when there is one, otherwise the least informative first (lowest curvature
  margin, i.e. fuzzy frames before clear ones). With every frame scored alike it is "retrieval
  without curvature": demote the oldest, then drop the oldest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from memory.compression import compressed_length
from memory.records import FrameRecord, ResidentBlock

POLICIES: tuple[str, ...] = ("curvature", "uniform", "fifo", "equal")


@dataclass
class EvictionPlan:
    """Blocks to compress in place and blocks to take off the device."""

    compress: list[ResidentBlock] = field(default_factory=list)
    evict: list[ResidentBlock] = field(default_factory=list)


class MemoryPolicy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def plan(
        self, blocks: Sequence[ResidentBlock], free: int, window_start: float, compress_ratio: float, host: bool
    ) -> EvictionPlan:
        """Free at least `free` tokens from `blocks` (oldest first).

        Blocks of frames at or after `window_start` (stream time) are the short-term window: touch them
        only if nothing else is left. `compress_ratio`: the share of a block's tokens compression keeps.
        `host`: evicted blocks go to a host tier (else they are dropped).
        """

    def drop_order(self, record: FrameRecord) -> tuple[float, ...]:
        """Sort key for the host tier when it is full: the smallest goes first. Default: oldest first."""
        return (record.frame_id,)

    def state(self) -> dict[str, int]:
        """What the policy remembers between decisions, for snapshots."""
        return {}

    def restore(self, state: dict[str, int]) -> None:  # noqa: B027 (most policies keep nothing)
        """Take back what `state()` returned."""


class FifoPolicy(MemoryPolicy):
    name = "fifo"

    def plan(
        self, blocks: Sequence[ResidentBlock], free: int, window_start: float, compress_ratio: float, host: bool
    ) -> EvictionPlan:
        return EvictionPlan(evict=_take(blocks, free))


class UniformPolicy(MemoryPolicy):
    name = "uniform"

    def __init__(self) -> None:
        self.stride = 1

    def state(self) -> dict[str, int]:
        return {"stride": self.stride}

    def restore(self, state: dict[str, int]) -> None:
        self.stride = int(state.get("stride", 1))

    def plan(
        self, blocks: Sequence[ResidentBlock], free: int, window_start: float, compress_ratio: float, host: bool
    ) -> EvictionPlan:
        long_term = [b for b in blocks if b.record.stream_time < window_start]
        evict: list[ResidentBlock] = []
        chosen: set[int] = set()
        freed = 0
        while freed < free:
            for block in long_term:
                if block.record.frame_id % self.stride and block.record.frame_id not in chosen:
                    evict.append(block)
                    chosen.add(block.record.frame_id)
                    freed += block.length
                    if freed >= free:
                        return EvictionPlan(evict=evict)
            if len(chosen) == len(long_term):
                # Nothing left but the window: it gives way too, oldest first.
                rest = [b for b in blocks if b.record.frame_id not in chosen]
                return EvictionPlan(evict=evict + _take(rest, free - freed))
            self.stride *= 2
        return EvictionPlan(evict=evict)


class TieredPolicy(MemoryPolicy):
    """The clear/fuzzy memory; `name` says whether the tiers came from curvature or not."""

    def __init__(self, name: str = "curvature") -> None:
        self.name = name  # type: ignore[misc]

    def plan(
        self, blocks: Sequence[ResidentBlock], free: int, window_start: float, compress_ratio: float, host: bool
    ) -> EvictionPlan:
        long_term = [b for b in blocks if b.record.stream_time < window_start]
        plan = EvictionPlan()
        freed = 0
        for block in long_term:
            if freed >= free:
                return plan
            if block.record.tier == "clear" and not block.record.compressed:
                kept = compressed_length(block.length, compress_ratio)
                if kept < block.length:
                    plan.compress.append(block)
                    freed += block.length - kept
        if freed >= free:
            return plan
        # An evicted block frees what it would have held after its planned compression.
        compressing = {b.record.frame_id for b in plan.compress}
        order = long_term if host else sorted(long_term, key=lambda b: self.drop_order(b.record))
        for block in order:
            plan.evict.append(block)
            held = block.length
            if block.record.frame_id in compressing:
                held = compressed_length(block.length, compress_ratio)
            freed += held
            if freed >= free:
                break
        evicted = {b.record.frame_id for b in plan.evict}
        plan.compress = [b for b in plan.compress if b.record.frame_id not in evicted]
        if freed < free:
            rest = [b for b in blocks if b.record.stream_time >= window_start]
            plan.evict += _take(rest, free - freed)
        return plan

    def drop_order(self, record: FrameRecord) -> tuple[float, ...]:
        return (record.margin, record.frame_id)


def make_policy(name: str) -> MemoryPolicy:
    """The policy called `name` (one of POLICIES)."""
    if name == "curvature":
        return TieredPolicy("curvature")
    if name == "equal":
        return TieredPolicy("equal")
    if name == "uniform":
        return UniformPolicy()
    if name == "fifo":
        return FifoPolicy()
    raise ValueError(f"Unknown memory policy {name!r}: use one of {', '.join(POLICIES)}.")


def _take(blocks: Sequence[ResidentBlock], free: int) -> list[ResidentBlock]:
    """The oldest blocks that together hold at least `free` tokens (all of them if they hold less)."""
    taken: list[ResidentBlock] = []
    freed = 0
    for block in blocks:
        if freed >= free:
            break
        taken.append(block)
        freed += block.length
    return taken
