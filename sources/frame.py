"""The unit every source produces, and the errors a source can raise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded picture.

    pixels: H x W x 3 uint8, BGR (OpenCV order).
    stream_time: seconds since the start of the stream (presentation time for files).
    capture_time: wall-clock time (time.time()) at which the frame was decoded or captured.
    sequence: index of this frame among the frames the source delivered, from 0.
    """

    pixels: np.ndarray
    stream_time: float
    capture_time: float
    sequence: int


class SourceError(Exception):
    """A source cannot be opened or read; the message is one sentence naming the source and the fix."""


class SourceEnded(Exception):
    """The source has no more frames (end of file, or the stream was closed)."""
