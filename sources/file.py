"""A video file played as a live stream: sampled by presentation time, paced or simulated.

With `realtime=True` frames arrive when their presentation time comes due on the wall clock, as
from a camera. With `realtime=False` they arrive as fast as the consumer asks and `stream_time`
is the presentation time, a simulated clock, so a replay gives the same frames every run.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

# FFmpeg's own complaints ("moov atom not found") would precede our one-sentence errors.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

from sources.base import SourceBase, SourceState
from sources.frame import Frame, SourceEnded, SourceError

# Presentation times within this many seconds of a sampling instant count as reaching it, so
# rounding in container time bases (e.g. 0.0999 s for 0.1 s) does not skip a sample.
_PTS_TOLERANCE = 1e-3


class FileSource(SourceBase):
    """Plays the video at `path`, delivering one frame per 1/fps seconds of presentation time.

    fps=None delivers every frame. Frames between sampling instants are grabbed, not converted,
    so sampling a 25 fps file at 1 fps costs little more than demuxing it.
    """

    def __init__(self, path: str | Path, fps: float | None = 1.0, realtime: bool = False, speed: float = 1.0) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.path = Path(path)
        super().__init__(f"file {self.path.name}")
        self.fps = fps
        self.realtime = realtime
        self.speed = speed  # realtime: stream seconds played per wall second
        self._capture = _open_capture(self.path)
        self.native_fps: float = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
        self._frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        # Opening only reads the header; a file that is not a video can still open with no frames.
        if not self._capture.grab():
            self._capture.release()
            raise SourceError(
                f"Cannot read video '{self.path}': it contains no decodable frames; "
                "check that it is a video file and not truncated."
            )
        self._has_grabbed_frame = True
        self._first_pts: float | None = None
        self._next_sample = 0.0
        self._duration: float | None = None
        self._wall_start: float | None = None
        self._closed = False
        # Serialises OpenCV calls between the decoding thread and close().
        self._capture_lock = threading.Lock()
        self._recv_lock = asyncio.Lock()
        self.set_state(SourceState.LIVE)

    @property
    def duration(self) -> float:
        """Length of the video in seconds, from the frame count, else from the last frame's pts."""
        if self._duration is None:
            if self._frame_count > 0 and self.native_fps > 0:
                self._duration = self._frame_count / self.native_fps
            else:
                self._duration = _duration_by_pts(self.path)
        return self._duration

    async def recv(self) -> Frame:
        """Return the next sampled frame; raise SourceEnded after the last one or after close()."""
        async with self._recv_lock:
            sampled = await asyncio.to_thread(self._decode_next_sample)
            if sampled is None:
                self.set_state(SourceState.ENDED)
                raise SourceEnded(f"End of video '{self.path}'.")
            pixels, stream_time = sampled
            if self.realtime:
                await self._wait_until_due(stream_time)
            frame = Frame(
                pixels=pixels,
                stream_time=stream_time,
                capture_time=time.time(),
                sequence=self.frames_delivered,
            )
            return self.delivered(frame)

    def close(self) -> None:
        """Release the file; later recv() calls raise SourceEnded."""
        with self._capture_lock:
            self._closed = True
            self._capture.release()
        self.set_state(SourceState.ENDED)

    async def _wait_until_due(self, stream_time: float) -> None:
        # A consumer that falls behind gets the next frame at once; a file never drops frames.
        now = time.monotonic()
        if self._wall_start is None:
            self._wall_start = now - stream_time / self.speed
        delay = self._wall_start + stream_time / self.speed - now
        if delay > 0:
            await asyncio.sleep(delay)

    def _decode_next_sample(self) -> tuple[np.ndarray, float] | None:
        """Grab frames until one reaches the next sampling instant; return its pixels and time."""
        with self._capture_lock:
            while not self._closed:
                if self._has_grabbed_frame:
                    self._has_grabbed_frame = False
                elif not self._capture.grab():
                    return None
                self.frames_decoded += 1
                pts = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if self._first_pts is None:
                    self._first_pts = pts
                stream_time = pts - self._first_pts
                if stream_time + _PTS_TOLERANCE < self._next_sample:
                    continue
                ok, pixels = self._capture.retrieve()
                if not ok:
                    return None
                if self.fps is not None:
                    instant = math.floor((stream_time + _PTS_TOLERANCE) * self.fps)
                    self._next_sample = (instant + 1) / self.fps
                return pixels, stream_time
            return None


def _open_capture(path: Path) -> cv2.VideoCapture:
    """Open `path` with OpenCV, or raise SourceError saying what is wrong with it."""
    if not path.exists():
        reason = "the file does not exist; check the path"
    elif path.is_dir():
        reason = "it is a directory; pass the path of a video file"
    elif not os.access(path, os.R_OK):
        reason = "permission denied; make the file readable by this user"
    else:
        capture = cv2.VideoCapture(str(path))
        if capture.isOpened():
            return capture
        capture.release()
        reason = "OpenCV cannot decode it; check that it is a video file (e.g. mp4, mkv, avi)"
    raise SourceError(f"Cannot read video '{path}': {reason}.")


def _duration_by_pts(path: Path) -> float:
    """Scan the whole file for its presentation times; used when the header has no frame count."""
    capture = cv2.VideoCapture(str(path))
    times: list[float] = []
    try:
        while capture.grab():
            times.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    finally:
        capture.release()
    if not times:
        return 0.0
    last_interval = times[-1] - times[-2] if len(times) > 1 else 0.0
    return times[-1] - times[0] + last_interval
