"""StreamingBench (THUNLP-MT, arXiv 2411.03628): reading its files and scoring by its rule.

Two files are read. The real-time CSV (`Real_Time_Visual_Understanding.csv`) has one row per question:
`question_id, task_type, question, time_stamp, answer, options` (options as a Python list literal of
"A. ..." strings), and the video of question `<prefix>_<n>_<k>` is `<video_dir>/sample_<n>/video.mp4`.
The streaming JSON is a list of `{video_path, questions: [{task_type, question, time_stamp, answer,
options, ...}]}`, the form the benchmark's own incremental evaluator reads. Time stamps are MM:SS or
HH:MM:SS.

Every question is multiple choice, sent with the benchmark's prompt ("... Respond with only the
letter (A, B, C, or D) ... The best option is:"). Scoring follows the benchmark's script: strip
the known answer prefixes ("The best answer is", ...), take the first capital A-D anywhere in what
is left (so "Answer: B" reads as A, as it does there), and compare with the key. Accuracy is micro:
per task, per category and over all questions.

The leaderboard's main setting gives the model the 60 s before each question ("last_60s"); the
"all context" variant gives it everything from the start ("all"). The reader records the policy the
caller names on every event, and the report states it.
"""

from __future__ import annotations

import ast
import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from streamer.errors import UserError
from streamer.evaluation.benchmarks.common import (
    CONTEXT_POLICIES,
    BenchmarkEvent,
    BenchmarkReport,
    BenchmarkSession,
    ContextPolicy,
    all_events,
    field_of,
    group_sessions,
    load_json,
    parse_time_stamp,
    records,
    resolve_video,
    string_list_field,
    task_scores,
    unanswered,
)

BENCHMARK = "StreamingBench"

REAL_TIME = "Real-Time Visual Understanding"
OMNI_SOURCE = "Omni-Source Understanding"
CONTEXTUAL = "Contextual Understanding"
UNCATEGORISED = "Uncategorised"

TASK_CATEGORIES = {
    **dict.fromkeys(
        ("Object Perception", "Causal Reasoning", "Clips Summarize", "Attribute Perception", "Event Understanding",
         "Text-Rich Understanding", "Prospective Reasoning", "Spatial Understanding", "Action Perception",
         "Counting"),
        REAL_TIME,
    ),
    **dict.fromkeys(
        ("Emotion Recognition", "Scene Understanding", "Source Discrimination", "Multimodal Alignment"), OMNI_SOURCE
    ),
    **dict.fromkeys(
        ("Misleading Context Understanding", "Anomaly Context Understanding", "Sequential Question Answering",
         "Proactive Output"),
        CONTEXTUAL,
    ),
}  # fmt: skip

PROMPT = (
    "You are an advanced video question-answering AI assistant. You have been provided with some frames "
    "from the video and a multiple-choice question related to the video. Your task is to carefully analyze "
    "the video and provide the best answer to question, choosing from the four options provided. Respond "
    "with only the letter (A, B, C, or D) of the correct option.\n\nQuestion: {question}\n\nOptions:\n{options}"
    "\n\nThe best option is:"
)

# Removed from a response before the letter is looked for, in this order, as the benchmark does.
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)
_LETTER = re.compile(r"[ABCD]")
_CSV_COLUMNS = ("question_id", "task_type", "question", "time_stamp", "answer", "options")


def read_real_time_csv(path: Path, video_dir: Path, *, context: ContextPolicy) -> list[BenchmarkSession]:
    """Sessions from the real-time CSV; videos are `<video_dir>/sample_<n>/video.mp4`."""
    _check_context(context)
    return group_sessions(BENCHMARK, path, _csv_events(Path(path), Path(video_dir), context))


def read_streaming_json(path: Path, video_dir: Path | None = None, *, context: ContextPolicy) -> list[BenchmarkSession]:
    """Sessions from the streaming JSON; a relative `video_path` is taken from `video_dir`, by default
    the JSON file's folder."""
    _check_context(context)
    path = Path(path)
    base = Path(video_dir) if video_dir is not None else path.parent
    return group_sessions(BENCHMARK, path, _json_events(path, base, context))


def prompt_for(question: str, options: Sequence[str]) -> str:
    """The benchmark's prompt; options that are not yet lettered get "A. ", "B. ", ... as it does."""
    if not options[0].startswith("A."):
        options = [f"{chr(65 + index)}. {option}" for index, option in enumerate(options)]
    return PROMPT.format(question=question, options="\n".join(options))


def extract_letter(response: str) -> str:
    """The option letter the benchmark reads in `response`, or "" when there is none."""
    text = response.strip()
    for prefix in ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    found = _LETTER.search(text)
    return found.group(0) if found else ""


def score(sessions: Sequence[BenchmarkSession], answers: Mapping[str, str]) -> BenchmarkReport:
    """Micro accuracy per task, per category and overall; a missing answer counts as wrong."""
    events = all_events(sessions)
    correct = {event.id: extract_letter(answers.get(event.id, "")) == event.answer for event in events}
    tasks = task_scores(events, correct, order=list(TASK_CATEGORIES))
    overall = {"overall accuracy (micro over all questions)": _micro(events, correct)}
    for category in (REAL_TIME, OMNI_SOURCE, CONTEXTUAL, UNCATEGORISED):
        found = [event for event in events if event.category == category]
        if found:
            overall[f"{category} accuracy (micro over its questions)"] = _micro(found, correct)
    policies = sorted({event.context for event in events})
    return BenchmarkReport(
        benchmark=BENCHMARK,
        tasks=tasks,
        overall=overall,
        unanswered=unanswered(events, answers),
        notes={
            "context": ", ".join(policies),
            "rule": "first capital A-D after removing the answer prefixes, equal to the key",
        },
    )


def _micro(events: Sequence[BenchmarkEvent], correct: Mapping[str, bool]) -> float:
    return sum(1 for event in events if correct[event.id]) / len(events)


def _check_context(context: str) -> None:
    if context not in CONTEXT_POLICIES:
        raise UserError(f"Unknown context policy '{context}'; use one of {', '.join(CONTEXT_POLICIES)}.")


def _csv_events(path: Path, video_dir: Path, context: ContextPolicy) -> Iterator[tuple[Path, BenchmarkEvent]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise UserError(f"Cannot read the StreamingBench file '{path}': it does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"Cannot read the StreamingBench file '{path}': {exc.__class__.__name__}.") from None
    for number, row in enumerate(rows, start=1):
        question_id = row.get("question_id") or ""
        where = f"{path}, row {number}" + (f" (question_id {question_id})" if question_id else "")
        for column in _CSV_COLUMNS:
            if not row.get(column):
                needed = ", ".join(_CSV_COLUMNS)
                raise UserError(f"{where}: missing field '{column}'; the CSV needs the columns {needed}.")
        parts = question_id.split("_")
        if len(parts) < 3:
            raise UserError(f"{where}: field 'question_id' should look like real_sample_<n>_<k>.")
        video = resolve_video(str(Path(f"sample_{parts[-2]}") / "video.mp4"), video_dir, where)
        options = _options_literal(row["options"], where)
        yield video, _event(question_id, row, options, context, where)


def _json_events(path: Path, base: Path, context: ContextPolicy) -> Iterator[tuple[Path, BenchmarkEvent]]:
    for index, record in enumerate(records(load_json(path, BENCHMARK), path, BENCHMARK)):
        where = f"{path}, record {index}"
        video = resolve_video(field_of(record, "video_path", str, where), base, where)
        questions = field_of(record, "questions", list, where)
        for number, question in enumerate(questions):
            inner = f"{where}, question {number}"
            if not isinstance(question, dict):
                raise UserError(f"{inner}: expected a JSON object, found {type(question).__name__}.")
            question_id = str(question.get("question_id", f"{video.stem}/{number}"))
            options = string_list_field(question, "options", inner)
            yield video, _event(question_id, question, options, context, inner)


def _event(
    question_id: str, record: Mapping[str, Any], options: tuple[str, ...], context: ContextPolicy, where: str
) -> BenchmarkEvent:
    task = field_of(record, "task_type", str, where)
    text = field_of(record, "question", str, where)
    t_query = parse_time_stamp(field_of(record, "time_stamp", str, where), where)
    answer = field_of(record, "answer", str, where).strip()
    if len(answer) != 1 or answer not in "ABCDEFGH"[: len(options)]:
        raise UserError(f"{where}: field 'answer' is {answer!r}; give the letter of one of the {len(options)} options.")
    return BenchmarkEvent(
        id=question_id,
        t_query=t_query,
        kind="mcq",
        question=text,
        prompt=prompt_for(text, options),
        answer=answer,
        task=task,
        category=TASK_CATEGORIES.get(task, UNCATEGORISED),
        options=options,
        context=context,
    )


def _options_literal(text: str, where: str) -> tuple[str, ...]:
    """The options column: a Python list literal of strings, read without evaluating code."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise UserError(f"{where}: field 'options' must be a list of strings such as ['A. ...', 'B. ...'].")
    return tuple(value)
