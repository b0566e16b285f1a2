"""`streamer bench`: a streaming benchmark's own files replayed through the engine and scored by its rule.

The benchmark's file and its videos are given by path; nothing is downloaded. Each video is replayed
as a stream (frames sampled at `fps`, fed as fast as they are ingested) and every question is sent at
its stream time with the benchmark's own prompt, through the engine's query path; the answers are
scored by the benchmark's module in `streamer.evaluation.benchmarks`.

Context policies: "all" lets a question read everything the memory kept from the start of the video;
"last_60s" (StreamingBench's leaderboard setting) lets it read only the frames of the 60 s before it:
its frames are chosen among those alone (see `ask_within`), and nothing older is read.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sources.file import FileSource
from streamer.clock import clock
from streamer.engine_config import DEFAULT_FPS, EngineConfig
from streamer.errors import UserError
from streamer.evaluation.benchmarks import ovobench, rvs, streamingbench
from streamer.evaluation.benchmarks.common import BenchmarkEvent, BenchmarkReport, BenchmarkSession, ContextPolicy
from streamer.evaluation.judge import Judge, Verdict
from streamer.evaluation.progress import Progress
from streamer.evaluation.replaying import Probe, ProbeAnswer, replay_probes
from streamer.models import ModelChoice
from streamer.replay import ReplayQuestion, check_question_times

BENCHMARKS = ("streamingbench", "ovobench", "rvs")
CONTEXTS: dict[str, ContextPolicy] = {"all": "all", "last60": "last_60s"}
JUDGES = ("local", "overlap")
FORWARD_MODES = ("watches", "ask")


@dataclass
class BenchOptions:
    benchmark: str
    file: Path
    videos: Path
    context: str = "all"
    fps: float = DEFAULT_FPS
    engine: EngineConfig = field(default_factory=EngineConfig)
    model: ModelChoice = field(default_factory=ModelChoice)
    judge: str = "local"
    judge_llm: str | None = None
    max_videos: int | None = None
    forward: str = "watches"  # OVO-Bench's forward active responding: "watches" or "ask"


def read_sessions(options: BenchOptions) -> list[BenchmarkSession]:
    """The benchmark's sessions, with every video checked to be a readable video that covers its
    questions; a UserError (or SourceError) naming the problem otherwise."""
    if options.benchmark not in BENCHMARKS:
        raise UserError(f"Unknown benchmark '{options.benchmark}'; use one of {', '.join(BENCHMARKS)}.")
    if options.context not in CONTEXTS:
        raise UserError(f"Unknown --context '{options.context}'; use all or last60.")
    if options.forward not in FORWARD_MODES:
        raise UserError(f"Unknown --forward '{options.forward}'; use watches or ask.")
    if options.benchmark != "streamingbench" and options.context != "all":
        raise UserError(
            f"--context {options.context} is StreamingBench's setting; {options.benchmark} is defined with "
            "all context, so leave --context out."
        )
    if not options.videos.is_dir():
        raise UserError(f"The video folder '{options.videos}' does not exist; check --videos.")
    context = CONTEXTS[options.context]
    if options.benchmark == "streamingbench":
        if options.file.suffix.lower() == ".csv":
            sessions = streamingbench.read_real_time_csv(options.file, options.videos, context=context)
        else:
            sessions = streamingbench.read_streaming_json(options.file, options.videos, context=context)
    elif options.benchmark == "ovobench":
        sessions = ovobench.read_annotations(options.file, options.videos)
    else:
        sessions = rvs.read_conversations(options.file, options.videos)
    if options.max_videos is not None:
        sessions = sessions[: options.max_videos]
    for session in sessions:
        source = FileSource(session.video, fps=options.fps)
        try:
            check_question_times([ReplayQuestion(e.id, e.t_query, e.question) for e in session.events], source)
        finally:
            source.close()
    return sessions


def make_judge(options: BenchOptions) -> Judge | None:
    """The judge RVS answers are graded by; None for the benchmarks scored by rule."""
    if options.benchmark != "rvs":
        return None
    if options.judge not in JUDGES:
        raise UserError(f"Unknown --judge '{options.judge}'; use local or overlap.")
    if options.judge == "overlap":
        from streamer.evaluation.judge import TokenOverlapJudge

        return TokenOverlapJudge()
    from streamer.evaluation.judge import LocalLMJudge

    return MemoJudge(LocalLMJudge.load(options.judge_llm))


class MemoJudge:
    """A judge that asks its inner judge once per (question, reference, prediction)."""

    def __init__(self, inner: Judge) -> None:
        self.inner = inner
        self.name = inner.name
        self.verdicts: dict[tuple[str, str, str], Verdict] = {}

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        key = (question, reference, prediction)
        if key not in self.verdicts:
            self.verdicts[key] = self.inner.judge(question, reference, prediction)
        return self.verdicts[key]


def run_sessions(
    sessions: Sequence[BenchmarkSession], options: BenchOptions, progress: Progress, log: Callable[[str], None]
) -> dict[str, ProbeAnswer]:
    """Replay every session on one engine; event id -> answer."""
    from streamer.engine import Engine
    from streamer.evaluation.benchmarks.forward import ForwardWatches
    from streamer.models import load_adapter

    log("Loading models...")
    engine = Engine(load_adapter(options.model), options.engine)
    engine.check_budget(options.fps)
    for session in sessions:
        duration = max(event.t_query for event in session.events)
        progress.add("ingest", int(duration * options.fps) + 1)
        progress.add("answer", len(session.events))
    answers: dict[str, ProbeAnswer] = {}
    for number, session in enumerate(sessions):
        progress.start(f"{session.video.name} ({number + 1}/{len(sessions)})")
        probes = [Probe(e.id, e.t_query, e.prompt, e.context_start, _choices(e)) for e in session.events]
        stream_id = f"bench-{number}"
        watching = options.benchmark == "ovobench" and options.forward == "watches"
        forward = ForwardWatches(engine, stream_id, session.events if watching else ())
        try:
            run = asyncio.run(
                replay_probes(
                    engine,
                    stream_id,
                    FileSource(session.video, fps=options.fps),
                    probes,
                    until_last_probe=True,
                    on_frame=lambda _: progress.advance("ingest"),
                    on_answer=lambda _: progress.advance("answer"),
                    on_start=forward.start,
                    answer_probe=forward.answer,
                )
            )
        finally:
            forward.close()
        answers.update((answer.id, answer) for answer in run.answers)
    return answers


def score(
    sessions: Sequence[BenchmarkSession], answers: dict[str, ProbeAnswer], judge: Judge | None, benchmark: str
) -> BenchmarkReport:
    texts = {event_id: answer.text for event_id, answer in answers.items()}
    if benchmark == "streamingbench":
        return streamingbench.score(sessions, texts)
    if benchmark == "ovobench":
        return ovobench.score(sessions, texts)
    assert judge is not None
    return rvs.score(sessions, texts, judge)


def event_correct(event: BenchmarkEvent, given: str, judge: Judge | None, benchmark: str) -> bool:
    """The benchmark's verdict on one answer (the same rule `score` applies)."""
    if benchmark == "streamingbench":
        return streamingbench.extract_letter(given) == event.answer
    if benchmark == "ovobench":
        return ovobench.is_correct(event, given)
    assert judge is not None
    return judge.judge(event.question, event.answer, given).yes


def answer_records(
    sessions: Sequence[BenchmarkSession], answers: dict[str, ProbeAnswer], judge: Judge | None, benchmark: str
) -> list[dict[str, Any]]:
    records = []
    for session in sessions:
        for event in session.events:
            answer = answers.get(event.id)
            given = answer.text if answer is not None else None
            records.append(
                {
                    "id": event.id,
                    "video": str(session.video),
                    "task": event.task,
                    "category": event.category,
                    "kind": event.kind,
                    "t": event.t_query,
                    "context": event.context,
                    "reads_from": event.context_start,
                    "question": event.question,
                    "options": list(event.options),
                    "expected": event.answer,
                    "given": given,
                    "correct": event_correct(event, given, judge, benchmark) if given is not None else False,
                    "ttft_ms": answer.ttft_ms if answer else None,
                    "latency_ms": answer.latency_ms if answer else None,
                    "evidence": answer.evidence if answer else [],
                    "as_of": answer.as_of if answer else None,
                }
            )
    return records


def write_bench_report(
    out: Path,
    report: BenchmarkReport,
    records: list[dict[str, Any]],
    options: BenchOptions,
    command: str,
    seconds: float,
) -> Path:
    """`report.md`, `answers.json` and `report.json` (the scored report as data) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    context = (
        "last 60 s: each question reads only memory from the 60 s before it (its frames are chosen among those)"
        if options.context == "last60"
        else "all: each question may read everything the memory kept from the start of the video"
    )
    videos = len({record["video"] for record in records})
    lines = [
        f"# {report.benchmark}: {options.file.name}",
        "",
        f"Command: `{command}`",
        "",
        f"Took {clock(seconds)} (wall clock, {torch.get_num_threads()} torch threads); {videos} videos, "
        f"{len(records)} questions.",
        "",
        f"Context: {context}.",
        "",
        f"Engine: policy {options.engine.memory.policy}, budget {options.engine.memory.budget_tokens} tokens, "
        f"{options.fps:g} fps, "
        f"top-k {options.engine.retrieval.top_k}, model {options.model.name}.",
        "",
    ]
    if "judge" in report.notes:
        lines += [f"Judge: {report.notes['judge']}.", ""]
    lines += ["## Overall", "", "| measure | value |", "|---|---:|"]
    lines += [f"| {label} | {value:.4f} |" for label, value in report.overall.items()]
    lines += ["", "## Tasks", "", "| task | category | questions | correct | accuracy | mean score |"]
    lines += ["|---|---|---:|---:|---:|---:|"]
    for task in report.tasks:
        mean = "" if task.mean_score is None else f"{task.mean_score:.2f}"
        lines.append(
            f"| {task.task} | {task.category} | {task.questions} | {task.correct} | {task.accuracy:.4f} | {mean} |"
        )
    lines += ["", f"Scoring rule: {report.notes.get('rule', 'the judge above')}."]
    if report.unanswered:
        lines.append(f"Unanswered (scored wrong): {len(report.unanswered)}.")
    lines += ["", "Every answer: `answers.json`; the scored report as data: `report.json`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_bench(options: BenchOptions, out: Path, command: str, progress: Progress, log: Callable[[str], None]) -> Path:
    """Read, replay, score and write; the report's path."""
    started = time.perf_counter()
    sessions = read_sessions(options)
    judge = make_judge(options)
    answers = run_sessions(sessions, options, progress, log)
    progress.close()
    report = score(sessions, answers, judge, options.benchmark)
    records = answer_records(sessions, answers, judge, options.benchmark)
    return write_bench_report(out, report, records, options, command, time.perf_counter() - started)


def _choices(event: BenchmarkEvent) -> tuple[str, ...] | None:
    """A multiple-choice event's options without the letters some benchmarks write before them; the
    engine scores them (the prompt lists them already)."""
    if event.kind != "mcq" or not event.options:
        return None
    return tuple(re.sub(r"^[A-H][.)]\s*", "", option) for option in event.options)
