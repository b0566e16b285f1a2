"""SyntheticSource: patterns, the drawn frame number, real-time pacing and dropping, the simulated clock, the track."""

from __future__ import annotations

import asyncio
import itertools
import time
from fractions import Fraction

import cv2
import numpy as np
import pytest

from sources.base import SourceState
from sources.frame import Frame, SourceEnded, SourceError
from sources.synthetic import PATTERNS, SyntheticSource, SyntheticTrack, read_frame_number, render


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_move_and_carry_their_frame_number(pattern: str) -> None:
    first, later = render(pattern, 3, 15.0, 320, 240), render(pattern, 40, 15.0, 320, 240)
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    below_barcode = slice(20, 200)
    assert np.abs(first[below_barcode].astype(int) - later[below_barcode]).mean() > 5, "the picture moves"
    for number in (0, 1, 3, 40, 1234, 65535):
        assert read_frame_number(render(pattern, number, 15.0, 320, 240)) == number


def test_frame_number_survives_lossy_compression() -> None:
    pixels = render("checkers", 51234, 15.0, 320, 240)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 15])
    assert ok
    assert read_frame_number(cv2.imdecode(encoded, cv2.IMREAD_COLOR)) == 51234


def test_simulated_clock_delivers_every_frame_at_once_until_the_duration() -> None:
    async def read_all(source: SyntheticSource) -> list[Frame]:
        frames = []
        with pytest.raises(SourceEnded):
            while True:
                frames.append(await source.recv())
        return frames

    source = SyntheticSource("bars", width=160, height=120, fps=30.0, realtime=False, duration_s=3.0)
    started = time.monotonic()
    frames = asyncio.run(read_all(source))
    assert time.monotonic() - started < 2.0, "a simulated clock does not wait for the wall clock"
    assert len(frames) == 90
    assert [frame.stream_time for frame in frames] == [n / 30.0 for n in range(90)]
    assert [read_frame_number(frame.pixels) for frame in frames] == list(range(90))
    assert source.state == SourceState.ENDED
    assert source.frames_dropped == 0 and source.frames_delivered == 90


def test_realtime_paces_frames_and_a_late_consumer_gets_the_frame_due_now() -> None:
    fps = 20.0

    async def scenario() -> None:
        source = SyntheticSource(fps=fps)
        started = time.monotonic()
        paced: list[tuple[float, Frame]] = []
        for _ in range(10):
            frame = await source.recv()
            paced.append((time.monotonic() - started, frame))
        numbers = [read_frame_number(frame.pixels) for _, frame in paced]
        assert numbers[0] == 0 and all(b > a for a, b in itertools.pairwise(numbers))
        for elapsed, frame in paced:
            assert frame.stream_time == read_frame_number(frame.pixels) / fps
            assert elapsed >= frame.stream_time - 0.005, "no frame is delivered before it is due"

        await asyncio.sleep(1.0)
        late = await source.recv()
        late_number = read_frame_number(late.pixels)
        assert late_number >= numbers[-1] + fps * 1.0 - 1, "the frame due now, not the next one in line"
        assert late_number <= (time.monotonic() - started) * fps + 1, "never ahead of the clock"
        assert source.frames_dropped == late_number + 1 - source.frames_delivered
        source.close()
        with pytest.raises(SourceEnded):
            await source.recv()

    asyncio.run(scenario())


def test_track_sends_frames_stamped_with_stream_time() -> None:
    async def scenario() -> None:
        track = SyntheticTrack(SyntheticSource(fps=30.0, realtime=False, duration_s=0.1))
        frames = [await track.recv() for _ in range(3)]
        assert [frame.pts for frame in frames] == [0, 3000, 6000]
        assert frames[0].time_base == Fraction(1, 90000)
        assert [read_frame_number(frame.to_ndarray(format="bgr24")) for frame in frames] == [0, 1, 2]

    asyncio.run(scenario())


def test_bad_settings_are_refused_in_one_sentence() -> None:
    with pytest.raises(SourceError, match="Unknown synthetic pattern 'plasma'; choose one of ball, bars, checkers"):
        SyntheticSource("plasma")
    with pytest.raises(SourceError, match="needs fps > 0"):
        SyntheticSource(fps=0)
    with pytest.raises(SourceError, match="at least 16x24 pixels"):
        SyntheticSource(width=8, height=8)
