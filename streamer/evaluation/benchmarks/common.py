"""The normalised form every streaming benchmark is read into, and what the readers and scorers share.

A benchmark file becomes a list of `BenchmarkSession`s, one per video, each holding the timestamped
`BenchmarkEvent`s asked about that video. An event carries the benchmark's own prompt, so the replay
sends exactly what the benchmark specifies, and its answer key in a form the benchmark's own scoring
rule reads (a letter, "Yes"/"No", a count or a reference text). Replay answers come back as a mapping
from event id to response text; each benchmark module scores them by its own rule into a
`BenchmarkReport`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamer.errors import UserError
from streamer.replay import ReplayQuestion

EventKind = Literal["mcq", "yesno", "count", "open"]
# "all": the model may use the video from 0 to t_query; "last_60s": only the minute before t_query
# (StreamingBench's leaderboard setting).
ContextPolicy = Literal["all", "last_60s"]
CONTEXT_POLICIES: tuple[ContextPolicy, ...] = ("all", "last_60s")

_TIME_STAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


@dataclass(frozen=True)
class BenchmarkEvent:
    """One question asked `t_query` seconds into a session's video.

    question: the question as the benchmark states it; prompt: the full text sent to the model in
    the benchmark's own format; options: as the benchmark lists them (empty unless kind is "mcq");
    answer: a letter (mcq), "Yes"/"No" (yesno), an integer (count) or a reference text (open).
    """

    id: str
    t_query: float
    kind: EventKind
    question: str
    prompt: str
    answer: str
    task: str
    category: str
    options: tuple[str, ...] = ()
    context: ContextPolicy = "all"

    @property
    def context_start(self) -> float:
        """The earliest stream time the model may use for this event under its context policy."""
        return max(0.0, self.t_query - 60.0) if self.context == "last_60s" else 0.0


@dataclass(frozen=True)
class BenchmarkSession:
    """One video and the events asked about it, in time order."""

    benchmark: str
    video: Path
    events: tuple[BenchmarkEvent, ...]


@dataclass(frozen=True)
class TaskScore:
    """A task's result: `correct` of `questions` right (for a judge: answers judged yes)."""

    task: str
    category: str
    questions: int
    correct: int
    accuracy: float
    mean_score: float | None = None


@dataclass
class BenchmarkReport:
    """A benchmark's numbers by its own rule. `overall` maps a label that says how each number was
    averaged to the number; `unanswered` lists event ids with no answer (scored as wrong)."""

    benchmark: str
    tasks: list[TaskScore]
    overall: dict[str, float]
    unanswered: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: one row per task, then the overall numbers and the notes; accuracies
        are fractions (0.5 = half right)."""
        indent = " " * (len(self.benchmark) + 2)
        rows = [f"{self.benchmark}: {'task':<34} {'category':<34} {'n':>5} {'accuracy':>8}"]
        for task in self.tasks:
            mean = f"  mean score {task.mean_score:.2f}" if task.mean_score is not None else ""
            rows.append(f"{indent}{task.task:<34} {task.category:<34} {task.questions:>5} {task.accuracy:>8.4f}{mean}")
        rows += [f"{label}: {value:.4f}" for label, value in self.overall.items()]
        rows += [f"{name}: {value}" for name, value in self.notes.items()]
        if self.unanswered:
            rows.append(f"unanswered (scored wrong): {len(self.unanswered)}")
        return "\n".join(rows)


def parse_time_stamp(text: str, where: str) -> float:
    """Seconds from "MM:SS" or "HH:MM:SS" (seconds may have a fraction); `where` names the record."""
    found = _TIME_STAMP.match(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise UserError(f"{where}: field 'time_stamp' is {text!r}, not a time; write it as MM:SS or HH:MM:SS.")
    hours, minutes, seconds = found.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def load_json(path: Path, what: str) -> Any:
    """The parsed JSON document at `path`, or a UserError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"Cannot read the {what} file '{path}': it does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the {what} file '{path}': {exc.__class__.__name__}; check the file.") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"The {what} file '{path}' is not valid JSON ({exc.msg}, line {exc.lineno}).") from None


def records(document: Any, path: Path, what: str) -> list[dict[str, Any]]:
    """`document` as a list of JSON objects, or a UserError naming the file and the bad record."""
    if not isinstance(document, list):
        raise UserError(f"The {what} file '{path}' must hold a JSON list of records, not {type(document).__name__}.")
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            raise UserError(f"{path}, record {index}: expected a JSON object, found {type(record).__name__}.")
    return document


def field_of(record: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`record[name]` checked against `kind` (bools are never numbers), or a UserError naming it."""
    if name not in record:
        raise UserError(f"{where}: missing field '{name}'.")
    value = record[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise UserError(f"{where}: field '{name}' has the wrong type ({type(value).__name__}).")
    return value


def seconds_field(record: Mapping[str, Any], name: str, where: str) -> float:
    """A non-negative, finite number of seconds from `record[name]`."""
    value = float(field_of(record, name, (int, float), where))
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{where}: field '{name}' is {value}, not a time; give seconds from the start (>= 0).")
    return value


def string_list_field(record: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    """A non-empty list of strings from `record[name]`."""
    value = field_of(record, name, list, where)
    if not value or not all(isinstance(item, str) for item in value):
        raise UserError(f"{where}: field '{name}' must be a non-empty list of strings.")
    return tuple(value)


def resolve_video(video: str, base: Path, where: str) -> Path:
    """`video` (absolute, or relative to `base`) as a path that must exist."""
    path = Path(video).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise UserError(f"{where}: the video '{path}' does not exist; check the video folder given with the file.")
    return path


def group_sessions(benchmark: str, path: Path, events: Iterable[tuple[Path, BenchmarkEvent]]) -> list[BenchmarkSession]:
    """One session per video, in order of first appearance, each with its events sorted by time;
    a UserError naming `path` when ids repeat or there are no events at all."""
    by_video: dict[Path, list[BenchmarkEvent]] = {}
    seen: set[str] = set()
    for video, event in events:
        if event.id in seen:
            raise UserError(f"{path}: two questions share the id '{event.id}'; ids must be unique.")
        seen.add(event.id)
        by_video.setdefault(video, []).append(event)
    if not by_video:
        raise UserError(f"The {benchmark} file '{path}' has no questions.")
    return [
        BenchmarkSession(benchmark, video, tuple(sorted(found, key=lambda event: event.t_query)))
        for video, found in by_video.items()
    ]


def replay_questions(session: BenchmarkSession) -> list[ReplayQuestion]:
    """The session's events as replay questions.

    The question text is the benchmark's full prompt (options already inside), and no answer key is
    attached: the replay's generic scorer does not know the benchmark's rule, the benchmark's own
    scorer reads the answers afterwards.
    """
    return [ReplayQuestion(event.id, event.t_query, event.prompt) for event in session.events]


def write_replay_questions(session: BenchmarkSession, path: Path) -> Path:
    """Write the session's questions as the JSONL file `streamer replay --questions` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for question in replay_questions(session):
            out.write(json.dumps({"id": question.id, "t": question.t, "question": question.question}) + "\n")
    return path


def read_answers(paths: Sequence[Path]) -> dict[str, str]:
    """Event id -> answer text from `streamer replay` results files (the summary line is skipped)."""
    answers: dict[str, str] = {}
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserError(
                f"Cannot read the results file '{path}': {exc.__class__.__name__}; check the path."
            ) from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
            if not isinstance(record, dict) or "summary" in record:
                continue
            where = f"{path}, line {number}"
            answers[str(field_of(record, "id", (str, int), where))] = field_of(record, "answer", str, where)
    return answers


def all_events(sessions: Iterable[BenchmarkSession]) -> list[BenchmarkEvent]:
    return [event for session in sessions for event in session.events]


def task_scores(
    events: Sequence[BenchmarkEvent], correct: Mapping[str, bool], order: Sequence[str] = ()
) -> list[TaskScore]:
    """Micro accuracy per task: tasks named in `order` first, in that order, then the rest by name."""
    by_task: dict[str, list[BenchmarkEvent]] = {}
    for event in events:
        by_task.setdefault(event.task, []).append(event)
    ranked = [task for task in order if task in by_task] + sorted(set(by_task) - set(order))
    scores = []
    for task in ranked:
        found = by_task[task]
        right = sum(1 for event in found if correct[event.id])
        scores.append(TaskScore(task, found[0].category, len(found), right, right / len(found)))
    return scores


def unanswered(events: Sequence[BenchmarkEvent], answers: Mapping[str, str]) -> list[str]:
    return [event.id for event in events if event.id not in answers]


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
