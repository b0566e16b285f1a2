"""OVO-Bench (CVPR 2025): reading `ovo_bench_new.json`-style annotations and scoring by its rule.

Twelve tasks in three categories. Backward tracing (EPM, ASI, HLD) and real-time perception (STU,
OJR, ATR, ACR, OCR, FPD) rows are `{id, video, task, question, options, gt, realtime}`: one multiple
choice question at `realtime` seconds, key letter `chr(65 + gt)`. Forward active responding rows
(REC, SSR, CRR) are `{id, video, task, test_info: [{realtime, ...}], ...}` and become one event per
`test_info` probe: REC asks how many times "they <activity>" (key: the probe's `count`), SSR whether
the probe's `step` is being performed now and CRR whether the row's `question` can be answered yet
(key: "Yes" when the probe's `type` is 1, else "No"). Videos are `<video_dir>/<video>`; the model sees
the video from 0 to the probe's time, as in the benchmark's own evaluation.

Scoring is the benchmark's: multiple choice is right when the key letter occurs anywhere in the
response (case-sensitive substring); REC when all digits of the response, concatenated, equal the
count; SSR and CRR when the response is exactly "Y"/"N" or contains "Yes"/"No" (case-sensitive) for
the key. Task accuracy is over its events; the official average is the mean of the three category
averages, each the mean of its task accuracies. The mean over all tasks (what the repository's
`score.py` prints as "Total Avg") is reported too, under its own label.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from streamer.errors import UserError
from streamer.evaluation.benchmarks.common import (
    BenchmarkEvent,
    BenchmarkReport,
    BenchmarkSession,
    EventKind,
    all_events,
    field_of,
    group_sessions,
    load_json,
    records,
    resolve_video,
    seconds_field,
    string_list_field,
    task_scores,
    unanswered,
)

BENCHMARK = "OVO-Bench"

BACKWARD = "Backward Tracing"
REAL_TIME = "Real-Time Visual Perception"
FORWARD = "Forward Active Responding"
CATEGORIES = (BACKWARD, REAL_TIME, FORWARD)
TASK_CATEGORIES = {
    **dict.fromkeys(("EPM", "ASI", "HLD"), BACKWARD),
    **dict.fromkeys(("STU", "OJR", "ATR", "ACR", "OCR", "FPD"), REAL_TIME),
    **dict.fromkeys(("REC", "SSR", "CRR"), FORWARD),
}

# The benchmark's prompts, word for word (typos included) so scores stay comparable with published
# ones; only the indentation its source code carries inside the strings is dropped.
MCQ_PROMPT = (
    "Question: {question}\nOptions:\n{options}\n"
    "Respond only with the letter corresponding to your chosen option (e.g., A, B, C).\n"
    "Do not include any additional text or explanation in your response."
)
REC_PROMPT = (
    "You're watching a video in which people may perform a certain type of action repetively.\n"
    "The person performing this kind of action are referred to as 'they' in the following statement.\n"
    "You're task is to count how many times have different people in the video perform this kind of action "
    "in total.\nOne complete motion counts as one.\nNow, answer the following question: {question}\n"
    "Provide your answer as a single number (e.g., 0, 1, 2, 3…) indicating the total count.\n"
    "Do not include any additional text or explanation in your response."
)
SSR_PROMPT = (
    "You're watching a tutorial video which contain a sequential of steps.\n"
    "The following is one step from the whole procedures:\n{question}\n"
    "Your task is to determine if the man or woman in the video is currently performing this step.\n"
    "Answer only with “Yes” or “No”.\nDo not include any additional text or explanation in your response."
)
CRR_PROMPT = (
    "You're responsible of answering questions based on the video content.\n"
    "The following question are relevant to the latest frames, i.e. the end of the video.\n{question}\n"
    "Decide whether existing visual content, especially latest frames, i.e. frames that near the end of the "
    "video, provide enough information for answering the question.\n"
    "Answer only with “Yes” or “No”.\nDo not include any additional text or explanation in your response."
)

_DIGITS = re.compile(r"\d+")


def read_annotations(path: Path, video_dir: Path) -> list[BenchmarkSession]:
    """Sessions from an OVO-Bench annotation file; each row's `video` is relative to `video_dir`."""
    path = Path(path)
    return group_sessions(BENCHMARK, path, _events(path, Path(video_dir)))


def is_correct(event: BenchmarkEvent, response: str | None) -> bool:
    """The benchmark's rule for one response; None (no answer) is wrong."""
    if response is None:
        return False
    if event.kind == "mcq":
        return event.answer in response
    if event.kind == "count":
        return "".join(_DIGITS.findall(response)) == event.answer
    if response == event.answer[0]:  # a bare "Y" or "N"
        return True
    return event.answer in response


def score(sessions: Sequence[BenchmarkSession], answers: Mapping[str, str]) -> BenchmarkReport:
    """Task accuracies, category averages, the official average and the mean over tasks."""
    events = all_events(sessions)
    correct = {event.id: is_correct(event, answers.get(event.id)) for event in events}
    tasks = task_scores(events, correct, order=list(TASK_CATEGORIES))
    overall: dict[str, float] = {}
    category_means: dict[str, float] = {}
    for category in CATEGORIES:
        found = [task.accuracy for task in tasks if task.category == category]
        if found:
            category_means[category] = statistics.fmean(found)
    missing = [category for category in CATEGORIES if category not in category_means]
    if missing:
        label = (
            f"official average (mean of the {len(category_means)} category averages present; no {', '.join(missing)})"
        )
    else:
        label = "official average (mean of the 3 category averages)"
    overall[label] = statistics.fmean(category_means.values())
    overall[f"mean over the {len(tasks)} tasks (score.py's Total Avg)"] = statistics.fmean(t.accuracy for t in tasks)
    for category, mean in category_means.items():
        overall[f"{category} average (mean of its task accuracies)"] = mean
    return BenchmarkReport(
        benchmark=BENCHMARK,
        tasks=tasks,
        overall=overall,
        unanswered=unanswered(events, answers),
        notes={
            "context": "all",
            "rule": "MCQ: key letter in response; REC: digits joined == count; SSR/CRR: Y/N or Yes/No in response",
        },
    )


def _events(path: Path, video_dir: Path) -> Iterator[tuple[Path, BenchmarkEvent]]:
    for index, row in enumerate(records(load_json(path, BENCHMARK), path, BENCHMARK)):
        where = f"{path}, record {index}"
        row_id = str(field_of(row, "id", (str, int), where))
        where = f"{path}, record {index} (id {row_id})"
        task = field_of(row, "task", str, where)
        if task not in TASK_CATEGORIES:
            raise UserError(f"{where}: field 'task' is '{task}', not one of {', '.join(TASK_CATEGORIES)}.")
        video = resolve_video(field_of(row, "video", str, where), video_dir, where)
        if TASK_CATEGORIES[task] == FORWARD:
            for event in _forward_events(row_id, task, row, where):
                yield video, event
        else:
            yield video, _choice_event(row_id, task, row, where)


def _choice_event(row_id: str, task: str, row: Mapping[str, Any], where: str) -> BenchmarkEvent:
    question = field_of(row, "question", str, where)
    options = string_list_field(row, "options", where)
    gt = field_of(row, "gt", int, where)
    if not 0 <= gt < len(options):
        raise UserError(f"{where}: field 'gt' is {gt}; give the index (from 0) of one of the {len(options)} options.")
    lettered = "; ".join(f"{chr(65 + i)}. {option}" for i, option in enumerate(options)) + ";"
    return BenchmarkEvent(
        id=row_id,
        t_query=seconds_field(row, "realtime", where),
        kind="mcq",
        question=question,
        prompt=MCQ_PROMPT.format(question=question, options=lettered),
        answer=chr(65 + gt),
        task=task,
        category=TASK_CATEGORIES[task],
        options=options,
    )


def _forward_events(row_id: str, task: str, row: Mapping[str, Any], where: str) -> Iterator[BenchmarkEvent]:
    probes = field_of(row, "test_info", list, where)
    if not probes:
        raise UserError(f"{where}: field 'test_info' must list at least one probe.")
    for number, probe in enumerate(probes):
        inner = f"{where}, test_info {number}"
        if not isinstance(probe, dict):
            raise UserError(f"{inner}: expected a JSON object, found {type(probe).__name__}.")
        kind: EventKind
        if task == "REC":
            question = f"How many times did they {field_of(row, 'activity', str, where)}?"
            prompt, kind, answer = REC_PROMPT.format(question=question), "count", _count(probe, inner)
        elif task == "SSR":
            question = field_of(probe, "step", str, inner)
            prompt, kind, answer = SSR_PROMPT.format(question=question), "yesno", _yes_no(probe, inner)
        else:
            question = field_of(row, "question", str, where)
            prompt, kind, answer = CRR_PROMPT.format(question=question), "yesno", _yes_no(probe, inner)
        yield BenchmarkEvent(
            id=f"{row_id}/{number}",
            t_query=seconds_field(probe, "realtime", inner),
            kind=kind,
            question=question,
            prompt=prompt,
            answer=answer,
            task=task,
            category=FORWARD,
        )


def _count(probe: Mapping[str, Any], where: str) -> str:
    count = field_of(probe, "count", int, where)
    if count < 0:
        raise UserError(f"{where}: field 'count' is {count}; a count cannot be negative.")
    return str(count)


def _yes_no(probe: Mapping[str, Any], where: str) -> str:
    kind = field_of(probe, "type", int, where)
    if kind not in (0, 1):
        raise UserError(f"{where}: field 'type' is {kind}; use 1 (yes) or 0 (no).")
    return "Yes" if kind == 1 else "No"
