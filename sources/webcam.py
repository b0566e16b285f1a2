"""A local webcam (V4L2) as a live source, read through OpenCV in a capture thread.

A webcam produces frames at its own rate whether or not they are read, and the driver queues what
is not, so it is drained by `CaptureThread` into a latest-frame slot like an RTSP camera.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path

import cv2

from sources.base import SourceState
from sources.capture import CaptureSource, CaptureThread, Picture, run_in_own_thread
from sources.frame import SourceError

DeviceOpener = Callable[[int | str], cv2.VideoCapture]

_DEVICE_PATH = re.compile(r"^/dev/video(\d+)$")


def open_v4l2(device: int | str) -> cv2.VideoCapture:
    """Open a webcam by index or /dev/videoN path with OpenCV's V4L2 backend."""
    return cv2.VideoCapture(device, cv2.CAP_V4L2)


class WebcamSource(CaptureSource):
    """Frames from the webcam `device`: an index (0 for /dev/video0) or a /dev/videoN path.

    width, height, fps: what to ask the camera for (it may pick the nearest mode it has).
    open_device: how to open the device; None opens the V4L2 device node with OpenCV, and the
    node must exist.
    The source fails with the reason when the camera cannot be opened or stops delivering frames.
    """

    def __init__(
        self,
        device: int | str,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        open_device: DeviceOpener | None = None,
    ) -> None:
        self.device = device
        self.path = device_path(device)
        super().__init__(f"webcam {self.path}")
        if open_device is None:
            if sys.platform.startswith("linux") and not self.path.exists():
                raise SourceError(
                    f"There is no webcam at {self.path}; list the cameras with 'ls /dev/video*' "
                    "(in a container, pass the device through)."
                )
            open_device = open_v4l2
        self.open_device = open_device
        self.requested = {cv2.CAP_PROP_FRAME_WIDTH: width, cv2.CAP_PROP_FRAME_HEIGHT: height, cv2.CAP_PROP_FPS: fps}

    async def _supervise(self) -> None:
        try:
            reader = await run_in_own_thread(self._open)
        except SourceError as error:
            self.set_state(SourceState.FAILED, str(error))
            return
        capture = CaptureThread(reader, self.slot, self.name).start()
        try:
            while True:
                await asyncio.sleep(0.1)
                if capture.last_frame_at is not None and self.state == SourceState.CONNECTING:
                    self.set_state(SourceState.LIVE)
                if capture.finished:
                    break
        finally:
            capture.stop()
        reason = f"reading failed: {capture.error}" if capture.error else "the camera stopped delivering frames"
        self.set_state(SourceState.FAILED, reason)

    def failure(self) -> SourceError:
        return SourceError(
            f"{self.name} failed ({self.reason}); check that the camera is connected, "
            "not used by another program, and readable by this user (group 'video')."
        )

    def _open(self) -> _OpenCVReader:
        capture = self.open_device(self.device)
        if not capture.isOpened():
            capture.release()
            raise SourceError("the device cannot be opened")
        for prop, value in self.requested.items():
            if value is not None:
                capture.set(prop, value)
        return _OpenCVReader(capture)


class _OpenCVReader:
    """Reads an opened OpenCV capture; conversion to BGR happens in OpenCV's read."""

    def __init__(self, capture: cv2.VideoCapture) -> None:
        self._capture = capture

    def read(self) -> Picture | None:
        ok, pixels = self._capture.read()
        if not ok:
            return None
        return lambda: pixels

    def close(self) -> None:
        self._capture.release()


def device_path(device: int | str) -> Path:
    """/dev/videoN for an index or a path; SourceError for anything else."""
    if isinstance(device, int):
        if device < 0:
            raise SourceError(f"Webcam index {device} is negative; use 0 for /dev/video0.")
        return Path(f"/dev/video{device}")
    if _DEVICE_PATH.match(device):
        return Path(device)
    raise SourceError(f"'{device}' is not a webcam; pass an index such as 0 or a path such as /dev/video0.")
