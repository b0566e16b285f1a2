"""What the memory remembers about every frame, and where each frame's KV block lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from memory.kv_cache import KVSegment, StreamingCache

Location = Literal["device", "host", "gone"]


@dataclass
class FrameRecord:
    """A frame's small, permanent record.

    frame_id: the frame's index in its memory's records (set when the memory adds it).
    tokens: how many KV tokens the frame's block holds (or held).
    detail: how the frame was encoded: "full" or "terse" (fewer, cheaper tokens).
    tier: "clear" or "fuzzy"; a clear frame becomes fuzzy when its KV block is compressed.
    score, threshold: the curvature decision that set the tier (0, 0 when nothing scored it).
    compressed: its KV block was compressed after it was encoded (a demotion).
    location: where its KV block is: the compute device's cache, host memory, or nowhere.
    text_vector: unit-length embedding of `text`, for retrieval by question, if the model has one.
    token_ids: the language model's token ids of the tokens its block holds (after a compression that
        keeps tokens, the kept ones), when the frame is text the model reads as is; None otherwise (image
        tokens, or tokens merged by pooling). A question can re-read these instead of reusing the block's KV.
    items: the salient things the frame showed, (kind, name) pairs, fed to the memory's event timeline.
    key_summary: (layers, kv_heads * head_dim) mean un-rotated key of the block, for retrieval; handed to
        the memory's index when the frame is added, which keeps it from then on (the record lets go of it:
        `memory.index.key_summary(frame_id)` reads it back).
    """

    sequence: int
    stream_time: float
    text: str
    tokens: int
    detail: str = "full"
    tier: str = "clear"
    score: float = 0.0
    threshold: float = 0.0
    compressed: bool = False
    location: Location = "device"
    text_vector: np.ndarray | None = None
    token_ids: list[int] | None = None
    items: list[tuple[str, str]] = field(default_factory=list)
    key_summary: np.ndarray | None = None
    frame_id: int = -1

    @property
    def resident(self) -> bool:
        return self.location == "device"

    @property
    def margin(self) -> float:
        """How far the curvature score rose above the threshold of its time: larger is more informative."""
        return self.score - self.threshold


@dataclass(frozen=True)
class ResidentBlock:
    """A frame's KV block inside the resident cache: tokens [start, start + length)."""

    record: FrameRecord
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length

    def segment(self, cache: StreamingCache) -> KVSegment:
        """Views of this block's keys and values in `cache` (a snapshot fork of the resident cache)."""
        return cache.segment(self.start, self.end)


@dataclass(frozen=True)
class OffloadedBlock:
    """A frame's KV block moved to host memory; its keys are rotated for position `position`."""

    record: FrameRecord
    keys: list[torch.Tensor] = field(repr=False)
    values: list[torch.Tensor] = field(repr=False)
    position: int

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2])

    def segment(self, cache: StreamingCache) -> KVSegment:
        return KVSegment(self.keys, self.values, self.position)
