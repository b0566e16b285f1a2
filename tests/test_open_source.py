"""open_source: each kind of input picks its source, and each bad input is refused in one clear sentence."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path

import pytest

from sources.file import FileSource
from sources.frame import SourceError
from sources.open import open_source
from sources.rtsp import RtspSource
from sources.synthetic import SyntheticSource


def _refusal(url_or_path: str) -> str:
    with pytest.raises(SourceError) as caught:
        open_source(url_or_path)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message, message
    return message


def test_rtsp_urls_open_rtsp_sources_without_connecting() -> None:
    source = open_source("rtsp://user:pw@camera.local:8554/stream1")
    assert isinstance(source, RtspSource)
    assert source.name == "RTSP stream rtsp://user:***@camera.local:8554/stream1"
    assert source.status().frames_decoded == 0
    assert isinstance(open_source("RTSPS://camera.local/stream1"), RtspSource)


def test_synthetic_sources_take_the_pattern_and_clock() -> None:
    source = open_source("synthetic:checkers", fps=10.0, realtime=False)
    assert isinstance(source, SyntheticSource)
    assert source.pattern == "checkers" and source.fps == 10.0

    async def two_frames() -> list[float]:
        return [(await source.recv()).stream_time for _ in range(2)]

    assert asyncio.run(two_frames()) == [0.0, 0.1]
    assert isinstance(open_source("synthetic:"), SyntheticSource), "the default pattern"


def test_files_open_by_path_file_url_and_with_a_colon_in_the_name(bikes_clip: Path, tmp_path: Path) -> None:
    with_colon = tmp_path / "cam:1.mp4"
    shutil.copy(bikes_clip, with_colon)
    for text in (str(bikes_clip), f"file://{bikes_clip}", str(with_colon)):
        source = open_source(text, fps=1.0, realtime=False)
        assert isinstance(source, FileSource), text

        async def first_pixels(file_source: FileSource = source) -> tuple[int, ...]:
            return (await file_source.recv()).pixels.shape

        assert asyncio.run(first_pixels()) == (272, 640, 3)
        source.close()


def test_webcam_inputs_name_the_device() -> None:
    missing = next(n for n in itertools.count(90) if not Path(f"/dev/video{n}").exists())
    assert _refusal(f"webcam:{missing}") == (
        f"There is no webcam at /dev/video{missing}; list the cameras with 'ls /dev/video*' "
        "(in a container, pass the device through)."
    )
    assert f"/dev/video{missing}" in _refusal(f"/dev/video{missing}")
    assert "write webcam:0 for /dev/video0" in _refusal("webcam:front")
    assert "is not a webcam" in _refusal("/dev/videoX")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "No source was given"),
        ("   ", "No source was given"),
        ("rtsp://", "has no host"),
        ("rtsp://:554/stream", "has no host"),
        ("rtsp://camera:70000/stream", "invalid port"),
        ("ftp://example.com/video.mp4", "the scheme 'ftp' is not one of rtsp://HOST/PATH"),
        ("http://example.com/video.mp4", "the scheme 'http' is not one of"),
        ("synthetic:plasma", "choose one of ball, bars, checkers"),
        ("file://otherhost/video.mp4", "names a file on another host"),
        ("/no/such/video.mp4", "the file does not exist; check the path"),
    ],
)
def test_bad_inputs_are_refused_in_one_sentence(text: str, fragment: str) -> None:
    assert fragment in _refusal(text)


def test_a_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("these are not frames\n" * 100)
    message = _refusal(str(notes))
    assert str(notes) in message and "check that it is a video file" in message
