"""WebcamSource: device naming and errors, and the capture path with a real OpenCV decoder standing in for V4L2.

No camera exists here, so the device itself is the one thing replaced: `open_device` hands the
source an OpenCV capture of the bikes clip, which decodes real frames as fast as it can, like a
camera that produces frames faster than anyone reads them.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import cv2
import pytest

from sources.base import SourceState
from sources.frame import SourceError
from sources.webcam import WebcamSource, device_path

BIKES_FRAMES = 250


def _missing_device_number() -> int:
    return next(n for n in itertools.count(90) if not Path(f"/dev/video{n}").exists())


def test_device_names() -> None:
    assert device_path(0) == Path("/dev/video0")
    assert device_path("/dev/video2") == Path("/dev/video2")
    with pytest.raises(SourceError, match="pass an index such as 0 or a path such as /dev/video0"):
        device_path("/dev/sda")
    with pytest.raises(SourceError, match="negative"):
        device_path(-1)


def test_missing_device_is_refused_in_one_sentence() -> None:
    number = _missing_device_number()
    for device in (number, f"/dev/video{number}"):
        with pytest.raises(SourceError) as caught:
            WebcamSource(device)
        message = str(caught.value)
        assert message.startswith(f"There is no webcam at /dev/video{number};") and message.endswith(".")


def test_capture_drains_the_device_and_delivers_the_newest_frame(bikes_clip: Path) -> None:
    async def scenario() -> None:
        source = WebcamSource(0, open_device=lambda _: cv2.VideoCapture(str(bikes_clip)))
        states: list[SourceState] = []
        source.on_state(lambda state, _: states.append(state))
        first = await asyncio.wait_for(source.recv(), 10)
        assert first.pixels.shape == (272, 640, 3)
        # The decoder runs ahead of a consumer that sleeps; what it decoded meanwhile is dropped.
        await asyncio.sleep(0.5)
        later = await asyncio.wait_for(source.recv(), 10)
        assert later.sequence == 1
        assert source.frames_dropped > 0
        with pytest.raises(SourceError, match=r"stopped delivering frames.*check that the camera is connected"):
            while True:
                await asyncio.wait_for(source.recv(), 10)
        assert states == [SourceState.LIVE, SourceState.FAILED]
        status = source.status()
        assert status.frames_decoded == BIKES_FRAMES
        assert status.frames_decoded == status.frames_delivered + status.frames_dropped

    asyncio.run(scenario())


def test_device_that_cannot_be_opened_fails_with_the_reason() -> None:
    async def scenario() -> None:
        source = WebcamSource(0, open_device=lambda _: cv2.VideoCapture())
        with pytest.raises(SourceError, match=r"webcam /dev/video0 failed \(the device cannot be opened\)"):
            await asyncio.wait_for(source.recv(), 10)
        assert source.state == SourceState.FAILED

    asyncio.run(scenario())
