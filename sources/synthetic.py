"""Generated video: moving patterns with the frame number and clock drawn in, live or simulated.

For demos and tests that need a source without a camera or a file. Each frame carries its number
twice: as text for people, and as a row of black and white blocks (16 bits, most significant
first) along the top edge that survives lossy codecs, so `read_frame_number` can tell which frame
arrived after it went through RTSP or WebRTC. `SyntheticTrack` serves the same frames as an aiortc
video track.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from fractions import Fraction

import av
import cv2
import numpy as np
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

from sources.base import SourceBase, SourceState
from sources.frame import Frame, SourceEnded, SourceError

FRAME_NUMBER_BITS = 16
_BARCODE_HEIGHT = 12
_RTP_CLOCK_RATE = 90000


def _ball(t: float, width: int, height: int) -> np.ndarray:
    pixels = np.full((height, width, 3), 40, np.uint8)
    # A Lissajous path: the ball visits the whole picture and does not repeat quickly.
    x = int((0.5 + 0.4 * math.sin(1.3 * t)) * width)
    y = int((0.5 + 0.35 * math.sin(2.1 * t + 0.5)) * height)
    cv2.circle(pixels, (x, y), max(4, min(width, height) // 10), (60, 200, 255), -1)
    return pixels


def _bars(t: float, width: int, height: int) -> np.ndarray:
    colours = np.array([[255, 255, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0], [255, 0, 255], [0, 0, 255]])
    shift = int(t * width / 4)
    columns = (np.arange(width) + shift) * len(colours) // width % len(colours)
    return np.broadcast_to(colours[columns].astype(np.uint8), (height, width, 3)).copy()


def _checkers(t: float, width: int, height: int) -> np.ndarray:
    cell = max(8, min(width, height) // 8)
    shift = int(t * cell)
    ys, xs = np.mgrid[0:height, 0:width]
    grey = np.where(((xs + shift) // cell + ys // cell) % 2 == 0, 30, 220).astype(np.uint8)
    return np.dstack([grey, grey, grey])


_PAINTERS: dict[str, Callable[[float, int, int], np.ndarray]] = {"ball": _ball, "bars": _bars, "checkers": _checkers}
PATTERNS = tuple(_PAINTERS)


def render(pattern: str, index: int, fps: float, width: int, height: int) -> np.ndarray:
    """Frame `index` of `pattern` (one of PATTERNS) as H x W x 3 uint8 BGR pixels."""
    t = index / fps
    pixels = _PAINTERS[pattern](t, width, height)
    _draw_frame_number(pixels, index)
    label = f"#{index} {int(t // 60):02d}:{t % 60:06.3f}"
    cv2.putText(pixels, label, (4, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return pixels


def _draw_frame_number(pixels: np.ndarray, index: int) -> None:
    block = pixels.shape[1] // FRAME_NUMBER_BITS
    for bit in range(FRAME_NUMBER_BITS):
        on = (index >> (FRAME_NUMBER_BITS - 1 - bit)) & 1
        pixels[:_BARCODE_HEIGHT, bit * block : (bit + 1) * block] = 255 if on else 0


def read_frame_number(pixels: np.ndarray) -> int:
    """The frame number drawn by `render` (modulo 2**16), read from the centre of each block."""
    block = pixels.shape[1] // FRAME_NUMBER_BITS
    row = pixels[_BARCODE_HEIGHT // 2]
    number = 0
    for bit in range(FRAME_NUMBER_BITS):
        centre = row[bit * block + block // 2]
        number = (number << 1) | int(centre.mean() > 127)
    return number


class SyntheticSource(SourceBase):
    """Frames of `pattern` at `fps`, `width` x `height`.

    realtime=True: frame n is due n/fps seconds after the first recv, as from a camera; a consumer
    that falls behind gets the frame due now, and the ones it missed count as dropped.
    realtime=False: every frame in order, as fast as asked, stream_time = n/fps (a simulated clock).
    duration_s: end the stream after this many seconds of stream time (None: never).
    """

    def __init__(
        self,
        pattern: str = "ball",
        width: int = 320,
        height: int = 240,
        fps: float = 15.0,
        realtime: bool = True,
        duration_s: float | None = None,
    ) -> None:
        if pattern not in PATTERNS:
            raise SourceError(f"Unknown synthetic pattern '{pattern}'; choose one of {', '.join(PATTERNS)}.")
        if fps <= 0 or width < FRAME_NUMBER_BITS or height < 2 * _BARCODE_HEIGHT:
            raise SourceError(
                f"Synthetic video needs fps > 0 and at least {FRAME_NUMBER_BITS}x{2 * _BARCODE_HEIGHT} pixels, "
                f"got {fps} fps at {width}x{height}."
            )
        super().__init__(f"synthetic {pattern}")
        self.pattern = pattern
        self.width = width
        self.height = height
        self.fps = fps
        self.realtime = realtime
        self.duration_s = duration_s
        self._next_index = 0
        self._started_at: float | None = None
        self._closed = False

    async def recv(self) -> Frame:
        """The next frame (realtime: the one due now); raises SourceEnded after duration_s or close()."""
        if self._closed:
            raise SourceEnded(f"{self.name} is closed.")
        index = await self._due_index() if self.realtime else self._next_index
        stream_time = index / self.fps
        if self.duration_s is not None and stream_time >= self.duration_s:
            self.set_state(SourceState.ENDED)
            raise SourceEnded(f"{self.name} ended after {self.duration_s:g} s.")
        self.frames_dropped += index - self._next_index
        self._next_index = index + 1
        pixels = render(self.pattern, index, self.fps, self.width, self.height)
        self.frames_decoded += 1
        self.set_state(SourceState.LIVE)
        frame = Frame(pixels=pixels, stream_time=stream_time, capture_time=time.time(), sequence=self.frames_delivered)
        return self.delivered(frame)

    def close(self) -> None:
        self._closed = True
        self.set_state(SourceState.ENDED)

    async def _due_index(self) -> int:
        """Wait for the next frame's time if it is still ahead; else the newest frame already due."""
        now = time.monotonic()
        if self._started_at is None:
            self._started_at = now
        due_at = self._started_at + self._next_index / self.fps
        if due_at > now:
            await asyncio.sleep(due_at - now)
            return self._next_index
        return max(self._next_index, math.floor((now - self._started_at) * self.fps))


class SyntheticTrack(VideoStreamTrack):
    """An aiortc video track sending a `SyntheticSource`'s frames, stamped with their stream time."""

    def __init__(self, source: SyntheticSource | None = None) -> None:
        super().__init__()
        self.source = source or SyntheticSource()

    async def recv(self) -> av.VideoFrame:
        try:
            frame = await self.source.recv()
        except SourceEnded:
            # aiortc's sender stops on MediaStreamError, the end of a track.
            self.stop()
            raise MediaStreamError from None
        video_frame = av.VideoFrame.from_ndarray(frame.pixels, format="bgr24")
        video_frame.pts = round(frame.stream_time * _RTP_CLOCK_RATE)
        video_frame.time_base = Fraction(1, _RTP_CLOCK_RATE)
        return video_frame

    def stop(self) -> None:
        super().stop()
        self.source.close()
