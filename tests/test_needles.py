"""The needle generator: real footage with signs, photos and shapes, decoded back with OpenCV; long
suite plans checked against answers worked out from the plan alone; rendered needles described by
the real embedded vision models."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.clock import clock
from streamer.errors import UserError
from streamer.evaluation.needles import (
    CLIP_SCENES,
    CLIP_SUBJECTS,
    PHOTO_SEEN,
    SIGN_WORDS,
    FootageSegment,
    Needle,
    NeedleStream,
    Question,
    build_demo_stream,
    build_stream,
    build_suite,
    plan_demo,
    plan_footage,
    plan_suite,
    render_photo,
    sign_board_box,
)
from streamer.funnel import mentions
from streamer.replay import load_questions

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


@pytest.mark.slow
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


# --- long suites: plans, answers by construction, rendering ----------------------------------

SUITE_TEMPLATES = {
    "sign-word", "sign-number", "photo", "shape-colour", "first", "count", "now", "recent-sign", "recent-photo",
}  # fmt: skip


def _showing_at(needles: list[Needle], at: str) -> Needle:
    """The one needle whose middle is at clock time `at`, as questions name them."""
    found = [n for n in needles if clock((n.start + n.end) / 2) == at]
    assert len(found) == 1, f"{len(found)} needles shown at {at}"
    return found[0]


def _needles_described(needles: list[Needle], descriptor: str) -> list[Needle]:
    for prefix, kind in (("the sign saying ", "sign"), ("the photo of the ", "photo"), ("the ", "shape")):
        if descriptor.startswith(prefix):
            return [n for n in needles if n.kind == kind and n.content == descriptor.removeprefix(prefix)]
    raise AssertionError(f"unknown descriptor {descriptor!r}")


def _expected(question: Question, needles: list[Needle], footage: list[FootageSegment]) -> tuple[str, str | None]:
    """The open answer and, for choice questions, the option text, worked out from the plan alone;
    also checks the question is asked after what it asks about."""
    text = question.question
    shown = re.fullmatch(r"What (word|number|was|colour) .* (?:shown|drawn) at ([\d:]+)\?", text)
    if shown:
        needle = _showing_at(needles, shown.group(2))
        assert question.t >= needle.end
        kind = shown.group(1)
        answer = {
            "word": needle.content,
            "number": needle.content.split()[-1],
            "was": needle.content,
            "colour": needle.content.split()[0],
        }[kind]
        assert needle.kind == {"word": "sign", "number": "sign", "was": "photo", "colour": "shape"}[kind]
        return answer, answer
    first = re.fullmatch(r"Which was shown first: (.+) or (.+)\?", text)
    if first:
        pair = [_needles_described(needles, descriptor) for descriptor in first.groups()]
        assert all(len(found) == 1 for found in pair), "compared needles must each be shown once"
        assert question.t >= max(found[0].end for found in pair)
        index = 0 if pair[0][0].start < pair[1][0].start else 1
        return pair[index][0].content, first.group(index + 1)
    recent = re.fullmatch(r"What (did the most recent sign say|was in the most recent photo)\?", text)
    if recent:
        kind = "sign" if "sign" in recent.group(1) else "photo"
        before = [n for n in needles if n.kind == kind and n.start < question.t]
        assert before and before[-1].end <= question.t, "asked after the showing, before the next of its kind"
        return before[-1].content, before[-1].content
    count = re.fullmatch(r"How many times was (.+) shown\?", text)
    if count:
        found = _needles_described(needles, count.group(1))
        assert len(found) >= 2 and question.t >= found[-1].end
        return str(len(found)), str(len(found))
    assert text == "What is on screen right now?"
    assert not any(n.start <= question.t < n.end for n in needles)
    clip = next(s.clip for s in footage if s.start <= question.t < s.end)
    return CLIP_SUBJECTS[clip], CLIP_SCENES[clip]


@pytest.mark.parametrize(("duration", "seed"), [(600.0, 0), (900.0, 1), (1800.0, 2), (7200.0, 3)])
def test_suite_answers_follow_from_the_plan(duration: float, seed: int) -> None:
    needles, questions = plan_suite(duration, seed)
    footage = plan_footage(duration, seed)

    for question in questions:
        assert 0 < question.t <= duration - 1.0
        open_answer, option = _expected(question, needles, footage)
        if question.options is None:
            assert question.answer == open_answer, question
        else:
            assert question.answer is not None and len(question.answer) == 1
            assert question.options[ord(question.answer) - 65] == option, question
            assert len(set(question.options)) == len(question.options)
    assert len({q.id for q in questions}) == len(questions)
    assert questions == sorted(questions, key=lambda q: q.t)


def test_suite_plan_is_seeded() -> None:
    assert plan_suite(900.0, 4) == plan_suite(900.0, 4)
    assert plan_suite(900.0, 4) != plan_suite(900.0, 5)


def test_two_hour_suite_spreads_needles_and_uses_every_template() -> None:
    duration = 7200.0
    needles, questions = plan_suite(duration, 7)

    assert len(needles) == 119  # one per minute, the last half minute left for questions
    assert all(0 < a.end < b.start for a, b in itertools.pairwise(needles))
    assert needles[-1].end < duration
    assert {n.kind for n in needles} == {"sign", "photo", "shape"}
    assert {q.id.rsplit("-", 1)[0] for q in questions} == SUITE_TEMPLATES
    repeated = [content for content, times in Counter(n.content for n in needles).items() if times > 1]
    assert repeated, "some needles are shown several times"
    with_options = sum(q.options is not None for q in questions)
    assert 0.3 < with_options / len(questions) < 0.7
    asked_at = {q: re.search(r"(?:shown|drawn) at ([\d:]+)\?$", q.question) for q in questions}
    delays = sorted(q.t - _showing_at(needles, at.group(1)).end for q, at in asked_at.items() if at)
    assert delays[0] < 60.0 < 1800.0 < delays[-1], "recall is asked both soon and long after"


def test_delayed_questions_come_between_their_bounds_and_carry_what_shows_them() -> None:
    needles, questions = plan_suite(1200.0, 1, spacing_s=60.0, min_delay_s=120.0, max_delay_s=1200.0)
    timed = [(q, re.search(r"(?:shown|drawn) at ([\d:]+)\?$", q.question)) for q in questions]
    delays = [q.t - _showing_at(needles, at.group(1)).end for q, at in timed if at]
    assert len(delays) >= 10 and all(120.0 <= delay <= 1200.0 for delay in delays)
    assert all(q.seen for q in questions), "every question says what shows its answer"
    assert questions == sorted(questions, key=lambda q: q.t)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_choice_share_picks_the_form(share: float) -> None:
    _, questions = plan_suite(900.0, 2, choice_share=share)
    assert all((q.options is not None) is bool(share) for q in questions)


@pytest.mark.parametrize(
    ("duration", "spacing", "shown", "reason"),
    [(200.0, 60.0, 4.0, "holds 2 needles"), (600.0, 5.0, 4.0, "do not fit"), (600.0, 60.0, 0.5, "do not fit")],
)
def test_a_suite_that_cannot_fit_is_refused(duration: float, spacing: float, shown: float, reason: str) -> None:
    with pytest.raises(UserError, match=reason):
        plan_suite(duration, 0, spacing_s=spacing, shown_s=shown)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> NeedleStream:
    # 90 s, a needle every 10 s: seed 16 shows word and number signs, photos and a shape.
    return build_suite(tmp_path_factory.mktemp("suite"), 90.0, 16, spacing_s=10.0, shown_s=3.0)


@pytest.mark.slow
def test_suite_video_is_written_at_a_low_frame_rate_with_its_questions(suite: NeedleStream) -> None:
    capture = cv2.VideoCapture(str(suite.video))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(2.0)
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 180
    capture.release()
    lines = [json.loads(line) for line in suite.questions_path.read_text().splitlines()]
    assert lines == [q.to_json() for q in plan_suite(90.0, 16, spacing_s=10.0, shown_s=3.0)[1]]
    assert load_questions(suite.questions_path)  # the replay reads it

    written = suite.video.stat().st_mtime_ns
    again = build_suite(suite.video.parent, 90.0, 16, spacing_s=10.0, shown_s=3.0)
    assert again == suite and suite.video.stat().st_mtime_ns == written


@pytest.mark.slow
def test_rendered_needles_are_seen_by_the_embedded_describer(suite: NeedleStream) -> None:
    from streamer.vision import FrameDescriber

    kinds = {(n.kind, any(c.isdigit() for c in n.content)) for n in suite.needles}
    assert kinds == {("sign", False), ("sign", True), ("photo", False), ("shape", False)}, "pick a covering seed"
    describer = FrameDescriber()
    capture = cv2.VideoCapture(str(suite.video))
    try:
        for needle in suite.needles:
            capture.set(cv2.CAP_PROP_POS_FRAMES, round((needle.start + needle.end) / 2 * 2.0))
            ok, frame = capture.read()
            assert ok
            seen = describer.describe(frame)
            if needle.kind == "sign":
                read = " ".join(seen.text).upper().split()
                assert all(word in read for word in needle.content.split()), (needle, seen.text)
            elif needle.kind == "photo":
                # The funnel's evidence for a photo is what the describer calls it.
                assert mentions(seen.render(), PHOTO_SEEN[needle.content]), (needle, seen.render())
            else:
                assert needle.content.split()[0] in seen.colours, (needle, seen.colours)
    finally:
        capture.release()
