"""Replay a recorded video as a live stream and ask timestamped questions along the way.

Frames are fed up to each question's time `t`; the question goes through the same engine path as a
live question; then the stream continues. Questions file: one JSON object per line,
`{"id": str, "t": seconds, "question": str, "options"?: [str], "answer"?: str, "seen"?: [str]}` ("seen":
phrases a frame's description shows when the answer was perceived). Results file: one line per
question, `{"id", "t", "question", "answer", "ttft_ms", "latency_ms", "evidence", ..., "funnel"}`, where
`funnel` says, for a question with a known answer, whether the answer was perceived, kept, chosen and
answered (`streamer.funnel`); the summary gives the share past each step.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sources.file import FileSource
from sources.frame import SourceEnded
from streamer.errors import UserError
from streamer.funnel import STEPS, FunnelRow, seen_phrases, trace
from streamer.intent import options_prompt

if TYPE_CHECKING:  # the engine pulls in torch; the question checks must stay quick to import
    from streamer.engine import Engine
    from streamer.engine_data import FrameInfo

_LETTERS = "ABCDEFGH"
_LETTER = re.compile(r"\b(?!A [a-z])([A-H])\b")  # a capital A before a lowercase word is the article


@dataclass(frozen=True)
class ReplayQuestion:
    id: str
    t: float
    question: str
    options: tuple[str, ...] | None = None
    answer: str | None = None
    seen: tuple[str, ...] | None = None  # phrases a frame description shows when the answer was seen

    def prompt(self) -> str:
        """The text sent to the model: the question, plus lettered options when there are any."""
        return options_prompt(self.question, self.options) if self.options else self.question


@dataclass
class ReplayResult:
    id: str
    t: float
    question: str
    answer: str
    ttft_ms: float
    latency_ms: float
    evidence: list[list[float]]
    as_of: float
    expected: str | None = None
    correct: bool | None = None
    funnel: dict[str, bool | str | None] | None = None  # FunnelRow.as_dict(), for questions with a key


@dataclass
class ReplaySummary:
    questions: int
    scored: int
    correct: int
    accuracy: float | None
    ttft_ms_mean: float
    ttft_ms_median: float
    frames_ingested: int
    resident_tokens: int
    budget_tokens: int
    ingest_ms_per_frame: dict[str, float] = field(default_factory=dict)
    funnel: dict[str, float] = field(default_factory=dict)  # share of traced questions past each step


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in record:
        raise UserError(f"{where}: missing field '{name}'; each line needs id, t and question.")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{where}: field '{name}' has the wrong type ({type(value).__name__}).")
    return value


def load_questions(path: Path) -> list[ReplayQuestion]:
    """Read and validate a questions JSONL file, naming the line of any malformed record."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"Cannot read questions '{path}': the file does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read questions '{path}': {exc.__class__.__name__}; check the file.") from None
    questions: list[ReplayQuestion] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg}); fix or remove that line.") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with id, t and question.")
        qid = _field(record, "id", (str, int), where)
        t = float(_field(record, "t", (int, float), where))
        if not math.isfinite(t) or t < 0:
            raise UserError(f"{where}: time t={t} is not a time; give seconds from the start of the video (>= 0).")
        text = _field(record, "question", str, where)
        options = record.get("options")
        if options is not None and (
            not isinstance(options, list) or not all(isinstance(o, str) for o in options) or not options
        ):
            raise UserError(f"{where}: field 'options' must be a non-empty list of strings.")
        answer = record.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise UserError(f"{where}: field 'answer' must be a string.")
        if options and answer is not None and _option_letter(tuple(options), answer) not in _LETTERS[: len(options)]:
            raise UserError(f"{where}: answer '{answer}' is neither an option's letter nor an option's text.")
        seen = record.get("seen")
        if seen is not None and (
            not isinstance(seen, list) or not seen or not all(isinstance(e, str) and e for e in seen)
        ):
            raise UserError(f"{where}: field 'seen' must be a non-empty list of phrases.")
        questions.append(
            ReplayQuestion(
                str(qid),
                t,
                text,
                tuple(options) if options else None,
                answer,
                tuple(seen) if seen else None,
            )
        )
    if not questions:
        raise UserError(f"Questions file '{path}' has no questions; add one JSON object per line.")
    return sorted(questions, key=lambda q: q.t)


def score(question: ReplayQuestion, answer: str) -> bool | None:
    """Letter match when options are given, case-insensitive containment otherwise; None if no key."""
    if question.answer is None:
        return None
    expected = question.answer.strip()
    if question.options:
        letter = _option_letter(question.options, expected)
        found = _LETTER.search(answer)
        if found:
            return found.group(1) == letter
        chosen = [i for i, o in enumerate(question.options) if o.lower() in answer.lower()]
        return len(chosen) == 1 and chr(65 + chosen[0]) == letter
    return expected.lower() in answer.lower()


def _option_letter(options: tuple[str, ...], expected: str) -> str:
    """The letter an expected answer stands for: itself if it is one letter, else its option's letter."""
    expected = expected.strip()
    if len(expected) == 1:
        return expected.upper()
    for i, option in enumerate(options):
        if option.strip().lower() == expected.lower():
            return chr(65 + i)
    return expected.upper()


def check_question_times(questions: list[ReplayQuestion], source: FileSource) -> None:
    """Every question must fall inside the video."""
    late = [q for q in questions if q.t > source.duration + 1e-6]
    if late:
        raise UserError(
            f"Question '{late[0].id}' is at t={late[0].t:g} s, past the end of the video "
            f"({source.duration:.1f} s); move it inside the video."
        )


class Timed(Protocol):
    """Anything asked at a stream time `t` (seconds)."""

    @property
    def t(self) -> float: ...


AskedT = TypeVar("AskedT", bound=Timed)


async def replay_stream(
    engine: Engine,
    stream_id: str,
    source: FileSource,
    questions: Sequence[AskedT],
    answer: Callable[[AskedT], None],
    on_frame: Callable[[FrameInfo], None] | None = None,
    until_last_question: bool = False,
    on_start: Callable[[], None] | None = None,
) -> int:
    """Feed `source` into the new engine stream `stream_id` frame by frame, calling `answer(question)` for each
    question (in time order) once the stream has passed its `t`, and for those left when the source ends.

    The one replay loop of `streamer replay` and `streamer eval`. Frames go in as fast as they are encoded.
    The source is closed at the end; the stream stays (callers read its status, then remove it). Returns
    the frames fed. until_last_question: stop once the last question is answered. on_start: called once the
    stream exists, before its first frame (to add watches, say).
    """
    engine.add_stream(stream_id)
    if on_start is not None:
        on_start()
    pending = sorted(questions, key=lambda question: question.t)
    frames = 0
    try:
        while True:
            try:
                frame = await source.recv()
            except SourceEnded:
                break
            while pending and pending[0].t < frame.stream_time:
                answer(pending.pop(0))
            if until_last_question and not pending:
                break
            info = engine.push_frame(stream_id, frame)
            frames += 1
            if on_frame is not None:
                on_frame(info)
        while pending:
            answer(pending.pop(0))
    finally:
        source.close()
    return frames


class Replay:
    """Feeds a video file into an engine stream and answers questions at their times."""

    def __init__(
        self,
        engine: Engine,
        source: FileSource,
        questions: list[ReplayQuestion],
        stream_id: str = "replay",
    ) -> None:
        check_question_times(questions, source)
        self.engine = engine
        self.source = source
        self.questions = questions
        self.stream_id = stream_id
        self.frames = 0

    async def run(
        self,
        on_delta: Callable[[ReplayQuestion, str], None] | None = None,
        on_result: Callable[[ReplayResult], None] | None = None,
        on_frame: Callable[[FrameInfo], None] | None = None,
    ) -> list[ReplayResult]:
        """Replay to the end of the video; questions are answered as their time comes."""
        results: list[ReplayResult] = []

        def answer(question: ReplayQuestion) -> None:
            results.append(self._ask(question, on_delta, on_result))

        self.frames = await replay_stream(self.engine, self.stream_id, self.source, self.questions, answer, on_frame)
        return results

    def _ask(
        self,
        question: ReplayQuestion,
        on_delta: Callable[[ReplayQuestion, str], None] | None,
        on_result: Callable[[ReplayResult], None] | None,
    ) -> ReplayResult:
        answer = self.engine.ask(self.stream_id, question.prompt(), options=question.options).result(
            (lambda d: on_delta(question, d)) if on_delta else None
        )
        result = ReplayResult(
            id=question.id,
            t=question.t,
            question=question.question,
            answer=answer.text,
            ttft_ms=round(answer.ttft_ms, 1),
            latency_ms=round(answer.latency_ms, 1),
            evidence=answer.evidence,
            as_of=answer.as_of,
            expected=question.answer,
            correct=score(question, answer.text),
        )
        phrases = seen_phrases(question.answer, question.options, question.seen)
        if phrases and result.correct is not None and self.engine.adapter.describes_frames:
            perceived, kept, chosen = trace(self.engine.memory(self.stream_id), answer, phrases)
            result.funnel = FunnelRow(perceived, kept, chosen, result.correct).as_dict()
        if on_result:
            on_result(result)
        return result

    def summary(self, results: list[ReplayResult]) -> ReplaySummary:
        scored = [r for r in results if r.correct is not None]
        correct = sum(1 for r in scored if r.correct)
        ttfts = [r.ttft_ms for r in results] or [0.0]
        status = self.engine.status(self.stream_id)
        return ReplaySummary(
            questions=len(results),
            scored=len(scored),
            correct=correct,
            accuracy=correct / len(scored) if scored else None,
            ttft_ms_mean=round(statistics.fmean(ttfts), 1),
            ttft_ms_median=round(statistics.median(ttfts), 1),
            frames_ingested=self.frames,
            resident_tokens=status.resident_tokens,
            budget_tokens=status.budget_tokens,
            ingest_ms_per_frame={k: round(v, 1) for k, v in status.ingest_ms_per_frame.items()},
            funnel=funnel_shares(results),
        )


def funnel_shares(results: Iterable[ReplayResult]) -> dict[str, float]:
    """The share of traced answers past each funnel step, plus `traced` (how many); empty when none."""
    rows = [result.funnel for result in results if result.funnel is not None]
    if not rows:
        return {}
    shares = {step: round(sum(bool(row[step]) for row in rows) / len(rows), 3) for step in STEPS}
    return {**shares, "traced": float(len(rows))}


def write_results(path: Path, results: Iterable[ReplayResult], summary: ReplaySummary) -> None:
    """One JSON line per answer, then the summary under a "summary" key, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    try:
        with staging.open("w", encoding="utf-8") as out:
            for result in results:
                out.write(json.dumps(asdict(result)) + "\n")
            out.write(json.dumps({"summary": asdict(summary)}) + "\n")
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
