"""Budget policies: what leaves the device when a new frame does not fit.

A policy only decides; `StreamMemory` carries the decision out (compress blocks in place, move
blocks to the host tier or drop them) and rebuilds the resident cache once per decision.

- `FifoPolicy`: the newest frames stay, the oldest go (a sliding window).
- `UniformPolicy`: the long-term frames kept are evenly spaced in time; when they do not fit, the
  spacing doubles (every 2nd, then every 4th frame...), like sampling N frames from a video.
- `TieredPolicy`: the curvature memory. The short-term window is touched only when nothing else is
  left. With a host tier, the oldest clear frames are demoted (their KV compressed), then the oldest
  blocks move to the host. Without one, what leaves is gone, so frames with a rare description word
  (a sign's word, an object few frames had) are demoted and dropped only after all others, and
  within each group the least informative go first (`least_informative_first`). With every frame
  clear (policy "equal") it is retrieval without curvature.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from memory.compression import compressed_length
from memory.curvature import CurvatureConfig, CurvatureDecision, CurvatureScorer
from memory.records import FrameRecord, ResidentBlock
from memory.settings import POLICIES
from memory.words import words

_TIME = re.compile(r"\[[0-9:.]+\]")
# Field names every description repeats ("scene: ...; objects: ...").
_FIELD_NAMES = frozenset({"scene", "objects", "text", "colours"})


@dataclass
class EvictionPlan:
    """Blocks to compress in place and blocks to take off the device."""

    compress: list[ResidentBlock] = field(default_factory=list)
    evict: list[ResidentBlock] = field(default_factory=list)


def text_vector(record: FrameRecord) -> np.ndarray | None:
    return record.text_vector


class MemoryPolicy(ABC):
    name: ClassVar[str]
    # What a frame shows, as one vector (a memory sets this to read key summaries from its index too).
    content_vector: Callable[[FrameRecord], np.ndarray | None] = staticmethod(text_vector)

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
        """Sort key for the host tier when it is full: the smallest goes first. Default: oldest first.
        Fixed for a record once its block is on the host (the memory keeps the host blocks in this order)."""
        return (record.frame_id,)

    def decide(self, features: np.ndarray | None, stream_time: float) -> CurvatureDecision | None:
        """The tier of a frame about to be encoded, from its cheap features, in stream order; None: no
        opinion (the frame is encoded in full and stays clear until the budget demotes it)."""
        return None

    def observe(self, record: FrameRecord) -> None:  # noqa: B027 (most policies need nothing)
        """Told of every frame the memory adds, in stream order."""

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
            if len(chosen) == len(long_term) or self.stride > max(b.record.frame_id for b in long_term):
                # Nothing left to thin but frame 0 and the window: they give way too, oldest first.
                rest = [b for b in blocks if b.record.frame_id not in chosen]
                return EvictionPlan(evict=evict + _take(rest, free - freed))
            self.stride *= 2
        return EvictionPlan(evict=evict)


# A description word is rare when at most this many frames of the stream had it (8 s of a sign at 1 fps)...
RARE_MOST_FRAMES = 8
# ...and at most this share of the stream's frames (early in a stream every word is in few frames).
RARE_MOST_SHARE = 0.1


class TieredPolicy(MemoryPolicy):
    """The clear/fuzzy memory; `name` says whether the tiers came from curvature or not.

    scorer: decides each new frame's tier from its features (policy "curvature"); None: every frame
    starts clear ("equal"). Its sliding window is not part of `state()`: a restored stream warms up again.
    """

    def __init__(self, name: str = "curvature", scorer: CurvatureScorer | None = None) -> None:
        self.name = name  # type: ignore[misc]
        self.scorer = scorer
        # How many frames of the stream so far had each description word, and how many frames there were.
        self.word_frames: Counter[str] = Counter()
        self.frames = 0

    def observe(self, record: FrameRecord) -> None:
        self.word_frames.update(description_words(record.text))
        self.frames += 1

    def decide(self, features: np.ndarray | None, stream_time: float) -> CurvatureDecision | None:
        if self.scorer is None or features is None:
            return None
        return self.scorer.score(features, stream_time)

    def state(self) -> dict[str, int]:
        # "" is never a description word (those have 3+ letters): it holds the frame count.
        return {**self.word_frames, "": self.frames}

    def restore(self, state: dict[str, int]) -> None:
        counts = dict(state)
        self.frames = int(counts.pop("", 0))
        self.word_frames = Counter({word: int(count) for word, count in counts.items()})

    def plan(
        self, blocks: Sequence[ResidentBlock], free: int, window_start: float, compress_ratio: float, host: bool
    ) -> EvictionPlan:
        long_term = [b for b in blocks if b.record.stream_time < window_start]
        steps = _Steps(free, compress_ratio)
        if host:
            # Demote the oldest clear frames, then move the oldest to the host, where they stay retrievable.
            steps.compress(long_term)
            steps.evict(long_term)
        else:
            # Dropping loses a frame for good, so frames are taken in order of their rarest description
            # word: frames whose words many frames had go first, a frame with a word few frames had (a
            # sign's word, a rare object) is demoted and dropped only after all more common ones.
            levels: dict[int, list[ResidentBlock]] = {}
            for block in long_term:
                levels.setdefault(self.rarity(block.record), []).append(block)
            for level in sorted(levels, reverse=True):
                steps.compress(levels[level])
                steps.evict(least_informative_first(levels[level], self.content_vector))
        if not steps.done:
            steps.evict(b for b in blocks if b.record.stream_time >= window_start)
        return steps.plan

    def rare_limit(self) -> int:
        """The most frames a word may have been in and still be rare, at this point of the stream."""
        return max(1, min(RARE_MOST_FRAMES, int(RARE_MOST_SHARE * self.frames)))

    def rarity(self, record: FrameRecord) -> int:
        """How many frames had the frame's rarest word; rare_limit() + 1 when it has no rare word."""
        return min([self.word_frames[w] for w in description_words(record.text)] + [self.rare_limit() + 1])

    def drop_order(self, record: FrameRecord) -> tuple[float, ...]:
        return (record.margin, record.frame_id)


class _Steps:
    """An eviction plan built step by step until it frees `free` tokens."""

    def __init__(self, free: int, compress_ratio: float) -> None:
        self.free = free
        self.ratio = compress_ratio
        self.freed = 0
        self.plan = EvictionPlan()
        self.compressing: set[int] = set()

    @property
    def done(self) -> bool:
        return self.freed >= self.free

    def compress(self, blocks: Iterable[ResidentBlock]) -> None:
        """Demote the clear, uncompressed `blocks`, in the order given, while more must be freed."""
        for block in blocks:
            if self.done:
                return
            if block.record.tier == "clear" and not block.record.compressed:
                kept = compressed_length(block.length, self.ratio)
                if kept < block.length:
                    self.plan.compress.append(block)
                    self.compressing.add(block.record.frame_id)
                    self.freed += block.length - kept

    def evict(self, blocks: Iterable[ResidentBlock]) -> None:
        """Take `blocks` off the device, in the order given, while more must be freed.

        A lazy order is not started when nothing more must be freed, and is stopped as soon as enough is.
        """
        if self.done:
            return
        for block in blocks:
            frame_id = block.record.frame_id
            if frame_id in self.compressing:
                # It frees what it would have held after its planned compression, which is dropped.
                self.compressing.discard(frame_id)
                self.plan.compress = [b for b in self.plan.compress if b.record.frame_id != frame_id]
                self.freed += compressed_length(block.length, self.ratio)
            else:
                self.freed += block.length
            self.plan.evict.append(block)
            if self.done:
                return


_BUILDERS: dict[str, Callable[[CurvatureConfig], MemoryPolicy]] = {
    "curvature": lambda curvature: TieredPolicy("curvature", CurvatureScorer(curvature)),
    "equal": lambda _: TieredPolicy("equal"),
    "uniform": lambda _: UniformPolicy(),
    "fifo": lambda _: FifoPolicy(),
}
assert set(_BUILDERS) == set(POLICIES), "every policy name has a builder"


def make_policy(name: str, curvature: CurvatureConfig | None = None) -> MemoryPolicy:
    """The policy called `name` (one of POLICIES); `curvature` configures the curvature policy's scorer."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"Unknown memory policy {name!r}: use one of {', '.join(POLICIES)}.")
    return builder(curvature or CurvatureConfig())


def least_informative_first(
    blocks: Sequence[ResidentBlock], content_vector: Callable[[FrameRecord], np.ndarray | None] = text_vector
) -> Iterator[ResidentBlock]:
    """`blocks` in the order they should leave, least informative first.

    Fuzzy frames go before clear ones. Within a tier, a frame is worth what the memory would lose with
    it: first the words of its description that no other frame in the set has (a sign's word, a rare
    object), then how unlike the others it is (its highest cosine similarity to another frame by
    `content_vector`, by default the description's text embedding). Both are recomputed as frames
    leave, so of two duplicates one goes and the other then counts as unique and stays. Remaining ties
    go by curvature margin (lowest first), then age (oldest first). Lazy: a caller that stops early pays
    only for the frames it took.
    """
    vectors = [_unit(content_vector(b.record)) for b in blocks]
    if len({v.shape for v in vectors}) > 1:
        vectors = [np.zeros(1, dtype=np.float32) for _ in blocks]
    similarity = np.stack(vectors) @ np.stack(vectors).T if vectors else np.zeros((0, 0))
    np.fill_diagonal(similarity, -np.inf)
    words = [description_words(b.record.text) for b in blocks]
    holders: Counter[str] = Counter(w for frame_words in words for w in frame_words)
    remaining = list(range(len(blocks)))
    while remaining:
        redundancy = similarity[np.ix_(remaining, remaining)].max(axis=1) if len(remaining) > 1 else np.zeros(1)
        keys = []
        for j, similar in zip(remaining, redundancy, strict=True):
            record = blocks[j].record
            unique = sum(holders[w] == 1 for w in words[j])
            keys.append((record.tier == "clear", unique, -round(float(similar), 3), record.margin, record.frame_id))
        chosen = remaining.pop(keys.index(min(keys)))
        holders.subtract(words[chosen])
        yield blocks[chosen]


def description_words(text: str) -> set[str]:
    """The words of a frame's description that carry content: lower case, 3+ letters, no time stamp."""
    return {w for w in words(_TIME.sub(" ", text)) if len(w) > 2 and w not in _FIELD_NAMES}


def _unit(vector: np.ndarray | None) -> np.ndarray:
    """`vector` flattened to unit length; a zero vector of one element for None."""
    if vector is None:
        return np.zeros(1, dtype=np.float32)
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    return flat / max(1e-9, float(np.linalg.norm(flat)))


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
