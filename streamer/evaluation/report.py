"""Writing a suite's results: `report.md`, `answers.json`, `runs.json` and the PNG plots."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from streamer.clock import clock
from streamer.evaluation.evaluate import EvalResult
from streamer.evaluation.options import EvalOptions
from streamer.evaluation.plots import ACCURACY_PNG, FUNNEL_PNG, RESIDENT_PNG, TTFT_PNG, write_plots
from streamer.evaluation.suite import Suite
from streamer.evaluation.tables import (
    accuracy_cell,
    funnel_cell,
    funnel_template_table,
    lost_cell,
    median_cell,
    pivot,
    runs_table,
    template_table,
)

ANSWERS_JSON = "answers.json"
RUNS_JSON = "runs.json"
REPORT_MD = "report.md"


def write_report(out: Path, suite: Suite, options: EvalOptions, result: EvalResult, command: str) -> Path:
    """Write every output file into `out` (created if needed); the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / ANSWERS_JSON, result.answers)
    _write_json(out / RUNS_JSON, result.runs)
    plots = write_plots(out, result.answers, result.runs)
    report = out / REPORT_MD
    report.write_text("\n".join(report_lines(suite, options, result, command, plots)) + "\n", encoding="utf-8")
    return report


def report_lines(
    suite: Suite, options: EvalOptions, result: EvalResult, command: str, plots: Sequence[Path]
) -> list[str]:
    answers, runs = result.answers, result.runs
    client = any("client_ttft_ms" in a for a in answers)
    lines = [
        f"# Evaluation: {suite.name} suite",
        "",
        f"Command: `{command}`",
        "",
        f"Took {clock(result.seconds.get('total', 0.0))} (wall clock) on {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads" + _breakdown(result.seconds) + ".",
        "",
        "Streams: "
        + "; ".join(
            f"{stream.name} ({clock(stream.duration)}, {len(stream.questions)} questions)" for stream in suite.streams
        )
        + f". Question templates: {_templates(answers)}.",
        "",
        "Scoring: answers are known by construction, no judge: a multiple-choice answer is right when the first "
        "option letter in it is the key's (or it names exactly the right option), an open answer when it contains "
        "the expected text (case-insensitive).",
        "",
        _mode(options),
        "",
        "## Accuracy (correct / scored)",
        "",
        *pivot(answers, accuracy_cell, "policy"),
        "",
        "## Time to first token, engine (median ms)",
        "",
        *pivot(answers, median_cell("ttft_ms"), "policy"),
        "",
    ]
    if client:
        lines += [
            "## Time to first token, client over the websocket (median ms)",
            "",
            *pivot(answers, median_cell("client_ttft_ms"), "policy"),
            "",
            "## Answer latency, client over the websocket (median ms)",
            "",
            *pivot(answers, median_cell("client_latency_ms"), "policy"),
            "",
        ]
    if any("funnel" in a for a in answers):
        lines += [
            "## Where right answers are lost: perceived / kept / chosen / answered",
            "",
            "Per question with a known answer: was it **perceived** (the evidence, in normalised words, is in the "
            "description of a frame up to the question), **kept** (in a frame whose KV was still on the device or "
            "host, or in a line of the event timeline), **chosen** (in a frame or timeline line the question read), "
            "**answered** (scored right). The share of questions past each step:",
            "",
            *pivot(answers, funnel_cell, "policy"),
            "",
            "Wrong answers by the step where they were lost:",
            "",
            *pivot(answers, lost_cell, "policy"),
            "",
            "By question template, every configuration pooled:",
            "",
            *funnel_template_table(answers),
            "",
        ]
    lines += [
        "## Accuracy by question template (all budgets)",
        "",
        *template_table(answers),
        "",
        "## Runs",
        "",
        *runs_table(answers, runs),
        "",
        "## Plots",
        "",
    ]
    titles = {
        ACCURACY_PNG: "Accuracy vs budget",
        TTFT_PNG: "TTFT vs stream length",
        RESIDENT_PNG: "Resident tokens",
        FUNNEL_PNG: "Perceived, kept, chosen, answered",
    }
    lines += [f"![{titles.get(plot.name, plot.stem)}]({plot.name})" for plot in plots]
    lines += [
        "",
        f"Every answer with its configuration, expected and given text: `{ANSWERS_JSON}`; per run (full token "
        f"count, budget, ingest timings, resident tokens after every frame): `{RUNS_JSON}`.",
    ]
    return lines


def _breakdown(seconds: dict[str, float]) -> str:
    parts = [f"{name} {value:.0f} s" for name, value in seconds.items() if name != "total"]
    return "; " + ", ".join(parts) if parts else ""


def _mode(options: EvalOptions) -> str:
    if options.url is not None:
        return (
            f"Replayed through the server at {options.url} as a live client: the server plays the file in real time "
            "and keeps its own memory policy and budget; client TTFT and latency are measured over the websocket."
        )
    budget = (
        "Budget: a share of each stream's full token count (every frame described in full), held for frame blocks "
        "on the device, plus the system prompt and the reserve for a question and its answer; a full memory frees "
        "a tenth of the frame budget at once; "
        + (
            f"a host tier of {options.host_budget_tokens} tokens behind it."
            if options.host_budget_tokens
            else "no host tier, so what the budget cannot hold is gone."
        )
        + f" Questions read the last 8 s and the frames at a time they name, or, when they name none (or none "
        f"is left near it), the {options.top_k} best others by MiniLM similarity"
        + (" (every resident frame with top-k 0)." if options.top_k == 0 else ".")
    )
    if options.via_websocket:
        return budget + (
            " Replayed through a server started in this process for each configuration, as a live client: the "
            "server plays the file in real time and describes every frame itself; engine TTFT comes from "
            "`answer.done`, client TTFT and latency are measured over the websocket."
        )
    return budget + (
        " Replayed in process, frames fed as fast as they are ingested; each frame was described once and the "
        "description reused by every configuration, the language model's prefill runs per configuration."
    )


def _templates(answers: Sequence[dict[str, Any]]) -> str:
    """How many questions of each template one configuration was asked, over every stream."""
    if not answers:
        return "none"

    def key(answer: dict[str, Any]) -> tuple[Any, ...]:
        config = answer["config"]
        return config["policy"], config["budget_percent"], config["fps"], config["llm"]

    first = key(answers[0])
    counts = Counter(str(a["template"]) for a in answers if key(a) == first)
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _write_json(path: Path, value: object) -> None:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    staging.replace(path)
