"""RVS (RVS-Ego, RVS-Movie from VStream-QA): open-ended questions over long streams, judged.

Files are in the form ReKV replays: a list of `{video_id, video_path, conversations: [{question,
answer, start_time, end_time}]}`. Each conversation is asked once the stream reaches its `end_time`
(seconds); the stream then continues with the same memory. `video_path` is absolute or relative to
the video folder (by default the file's own folder). The question is sent as it is: RVS prescribes
no prompt of its own.

Answers are free text, so a judge (see `streamer.evaluation.judge`) decides for each whether it is right and
scores the match 0-5; the report gives the judge's yes-rate as accuracy and its mean score, per file
(the task, e.g. `ego4d_oe`) and overall, and names the judge: numbers from different judges are not
comparable.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from streamer.errors import UserError
from streamer.evaluation.benchmarks.common import (
    BenchmarkEvent,
    BenchmarkReport,
    BenchmarkSession,
    TaskScore,
    all_events,
    field_of,
    group_sessions,
    load_json,
    records,
    resolve_video,
    seconds_field,
    unanswered,
)
from streamer.evaluation.judge import Judge, Verdict

BENCHMARK = "RVS"
CATEGORY = "open-ended"


def read_conversations(path: Path, video_dir: Path | None = None, task: str | None = None) -> list[BenchmarkSession]:
    """Sessions from an RVS file; `task` names its questions in reports (default: the file's stem)."""
    path = Path(path)
    base = Path(video_dir) if video_dir is not None else path.parent
    return group_sessions(BENCHMARK, path, _events(path, base, task or path.stem))


def score(sessions: Sequence[BenchmarkSession], answers: Mapping[str, str], judge: Judge) -> BenchmarkReport:
    """Judge every answer; accuracy = share judged yes, plus the mean 0-5 score. A missing answer is
    counted as a no with score 0 without asking the judge."""
    events = all_events(sessions)
    verdicts = {
        event.id: judge.judge(event.question, event.answer, answers[event.id])
        if event.id in answers
        else Verdict(False, 0)
        for event in events
    }
    tasks = []
    for task in dict.fromkeys(event.task for event in events):
        found = [verdicts[event.id] for event in events if event.task == task]
        yes = sum(1 for verdict in found if verdict.yes)
        mean_score = statistics.fmean(verdict.score for verdict in found)
        tasks.append(TaskScore(task, CATEGORY, len(found), yes, yes / len(found), mean_score))
    every = list(verdicts.values())
    return BenchmarkReport(
        benchmark=BENCHMARK,
        tasks=tasks,
        overall={
            "accuracy (share judged yes, over all questions)": sum(1 for v in every if v.yes) / len(every),
            "mean judge score (0-5, over all questions)": statistics.fmean(v.score for v in every),
        },
        unanswered=unanswered(events, answers),
        notes={"judge": judge.name, "context": "all"},
    )


def _events(path: Path, base: Path, task: str) -> Iterator[tuple[Path, BenchmarkEvent]]:
    for index, record in enumerate(records(load_json(path, BENCHMARK), path, BENCHMARK)):
        where = f"{path}, record {index}"
        video_id = str(field_of(record, "video_id", (str, int), where))
        where = f"{path}, record {index} (video_id {video_id})"
        video = resolve_video(field_of(record, "video_path", str, where), base, where)
        for number, conversation in enumerate(field_of(record, "conversations", list, where)):
            inner = f"{where}, conversation {number}"
            if not isinstance(conversation, dict):
                raise UserError(f"{inner}: expected a JSON object, found {type(conversation).__name__}.")
            question = field_of(conversation, "question", str, inner)
            start, end = (
                seconds_field(conversation, "start_time", inner),
                seconds_field(conversation, "end_time", inner),
            )
            if end < start:
                raise UserError(f"{inner}: field 'end_time' ({end:g}) is before 'start_time' ({start:g}).")
            yield (
                video,
                BenchmarkEvent(
                    id=f"{video_id}/{number}",
                    t_query=end,
                    kind="open",
                    question=question,
                    prompt=question,
                    answer=field_of(conversation, "answer", str, inner),
                    task=task,
                    category=CATEGORY,
                ),
            )
