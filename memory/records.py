"""What the memory remembers about every frame, whether or not its KV is still resident."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameRecord:
    """A frame's small, permanent record.

    tokens: how many KV tokens the frame's block holds (or held).
    detail: "full" or "terse" description.
    resident: whether its KV block is in the compute-device cache now.
    text_vector: unit-length embedding of `text` for retrieval by question, if the model has one.
    """

    sequence: int
    stream_time: float
    text: str
    tokens: int
    detail: str = "full"
    resident: bool = True
    text_vector: np.ndarray | None = None


@dataclass(frozen=True)
class ResidentBlock:
    """A frame's KV block inside the resident cache: tokens [start, start + length)."""

    record: FrameRecord
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length
