"""The needle generator: real footage with a sign and a photo, decoded back with OpenCV."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.needles import (
    SIGN_WORDS,
    Needle,
    NeedleStream,
    Question,
    build_demo_stream,
    build_stream,
    plan_demo,
    plan_footage,
    render_photo,
    sign_board_box,
)

WIDTH, HEIGHT, FPS, DURATION = 640, 360, 10.0, 20.0
SIGN = Needle("sign", 6.0, 10.0, "ZEPHYR")
PHOTO = Needle("photo", 13.0, 16.0, "cat")
QUESTIONS = [
    Question("sign-word", 12.0, "What word was written on the sign?", "ZEPHYR"),
    Question("photo-animal", 18.0, "What animal was shown?", "cat"),
]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> NeedleStream:
    video = tmp_path_factory.mktemp("needles") / "short.mp4"
    return build_stream(video, [SIGN, PHOTO], QUESTIONS, duration=DURATION, fps=FPS, seed=1)


def _frame_at(video: Path, t: float) -> np.ndarray:
    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, round(t * FPS))
    ok, frame = capture.read()
    capture.release()
    assert ok, f"no frame at {t} s"
    return frame


def _mean_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def test_video_has_requested_duration_and_size(stream: NeedleStream) -> None:
    capture = cv2.VideoCapture(str(stream.video))
    assert capture.isOpened()
    frame_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert frame_count / FPS == pytest.approx(DURATION)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    capture.release()
    assert stream.duration == DURATION
    assert stream.footage[0].start == 0.0 and stream.footage[-1].end >= DURATION


def test_sign_is_a_white_board_unlike_the_footage(stream: NeedleStream) -> None:
    sign = _frame_at(stream.video, (SIGN.start + SIGN.end) / 2)
    x0, y0, x1, y1 = sign_board_box(WIDTH, HEIGHT)
    board = sign[y0:y1, x0:x1]
    white = (board > 200).all(axis=2).mean()
    assert white > 0.6
    assert 0.05 < (board < 60).all(axis=2).mean() < 0.4  # the letters
    for footage_time in (SIGN.start - 1.0, SIGN.end + 1.0):
        footage = _frame_at(stream.video, footage_time)
        assert _mean_difference(sign[y0:y1, x0:x1], footage[y0:y1, x0:x1]) > 60


def test_photo_fills_the_frame(stream: NeedleStream) -> None:
    shown = _frame_at(stream.video, (PHOTO.start + PHOTO.end) / 2)
    assert _mean_difference(shown, render_photo("cat", WIDTH, HEIGHT)) < 8
    assert _mean_difference(shown, _frame_at(stream.video, PHOTO.start - 1.0)) > 30


def test_questions_are_written_next_to_the_video(stream: NeedleStream) -> None:
    lines = stream.questions_path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": "sign-word", "t": 12.0, "question": "What word was written on the sign?", "answer": "ZEPHYR"},
        {"id": "photo-animal", "t": 18.0, "question": "What animal was shown?", "answer": "cat"},
    ]


def test_cache_is_reused(stream: NeedleStream) -> None:
    written = stream.video.stat().st_mtime_ns
    started = time.monotonic()
    again = build_stream(stream.video, [SIGN, PHOTO], QUESTIONS, duration=DURATION, fps=FPS, seed=1)
    assert time.monotonic() - started < 0.5
    assert again == stream
    assert stream.video.stat().st_mtime_ns == written


def test_cache_is_rebuilt_when_parameters_change(tmp_path: Path) -> None:
    video = tmp_path / "tiny.mp4"
    needle = Needle("sign", 1.0, 2.0, "QUARTZ")
    build_stream(video, [needle], [], duration=3.0, fps=FPS, seed=1)
    written = video.stat().st_mtime_ns
    build_stream(video, [needle], [], duration=3.0, fps=FPS, seed=2)
    assert video.stat().st_mtime_ns != written


def test_demo_plan_is_deterministic_and_asks_after_each_needle() -> None:
    assert plan_demo(3) == plan_demo(3)
    assert plan_footage(180.0, 3) == plan_footage(180.0, 3)
    words = {plan_demo(seed)[0][0].content for seed in range(8)}
    assert len(words) > 1 and words <= set(SIGN_WORDS)
    for seed in range(8):
        (sign, photo), (ask_word, ask_animal, ask_now) = plan_demo(seed)
        assert 35.0 <= sign.start <= 45.0 and 95.0 <= photo.start <= 105.0
        assert ask_word.t >= sign.end + 55.0 and ask_word.answer == sign.content
        assert ask_animal.t >= photo.end + 55.0 and ask_animal.answer == "cat"
        assert photo.end < ask_now.t < 180.0
        assert ask_now.options is not None and ask_now.answer in ask_now.options


def test_demo_stream_builds_once(tmp_path: Path) -> None:
    demo = build_demo_stream(tmp_path, seed=0)
    capture = cv2.VideoCapture(str(demo.video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 1800
    capture.release()
    assert demo.needles == plan_demo(0)[0]
    assert len(demo.questions_path.read_text().splitlines()) == 3

    written = demo.video.stat().st_mtime_ns
    assert build_demo_stream(tmp_path, seed=0) == demo
    assert demo.video.stat().st_mtime_ns == written
