"""Grouping answers by configuration and the report's markdown tables.

Every number in a table is computed here from the answer records written to `answers.json`, so the
report and the JSON cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from streamer.funnel import STEPS

# Configuration fields that name a row when they vary (budget is the tables' column).
_ROW_FIELDS = ("policy", "fps", "llm", "variant")


def varied_fields(configs: Iterable[dict[str, Any]]) -> set[str]:
    """The configuration fields that take more than one value."""
    values: dict[str, set[Any]] = {}
    for config in configs:
        for name, value in config.items():
            values.setdefault(name, set()).add(value)
    return {name for name, seen in values.items() if len(seen) > 1}


def row_label(config: dict[str, Any], varied: set[str]) -> str:
    """ "curvature", or "curvature, 0.5 fps, Qwen2.5-0.5B" when fps and the model vary."""
    parts = [str(config["policy"])]
    if "fps" in varied:
        parts.append(f"{config['fps']:g} fps")
    if "llm" in varied:
        parts.append(str(config["llm"]))
    if "variant" in varied:
        parts.append(str(config.get("variant", "default")))
    return ", ".join(parts)


def accuracy_of(answers: Sequence[dict[str, Any]]) -> tuple[float, int, int] | None:
    """(accuracy, correct, scored) over the answers that have a key; None when none has."""
    scored = [a for a in answers if a["correct"] is not None]
    if not scored:
        return None
    correct = sum(1 for a in scored if a["correct"])
    return correct / len(scored), correct, len(scored)


def percentile(values: Sequence[float], share: float) -> float | None:
    """The `share` quantile by linear interpolation (0.5: the median); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def pivot(answers: Sequence[dict[str, Any]], cell: Any, title: str, budget_header: str = "budget") -> list[str]:
    """A markdown table: one row per configuration label, one column per budget; `cell(answers)` fills it."""
    varied = varied_fields(a["config"] for a in answers)
    budgets = sorted({a["config"]["budget_percent"] for a in answers})
    rows = list(dict.fromkeys(row_label(a["config"], varied) for a in answers))
    header = [title] + [f"{budget_header} {b:g}%" if b else "as served" for b in budgets]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(budgets) + "|"]
    for row in rows:
        cells = []
        for budget in budgets:
            mine = [
                a for a in answers if row_label(a["config"], varied) == row and a["config"]["budget_percent"] == budget
            ]
            cells.append(cell(mine) if mine else "")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def accuracy_cell(answers: Sequence[dict[str, Any]]) -> str:
    found = accuracy_of(answers)
    return "n/a" if found is None else f"{found[0]:.2f} ({found[1]}/{found[2]})"


def median_cell(key: str) -> Any:
    def cell(answers: Sequence[dict[str, Any]]) -> str:
        value = percentile([a[key] for a in answers if key in a], 0.5)
        return "" if value is None else f"{value:.0f}"

    return cell


def runs_table(answers: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> list[str]:
    """One row per replay: its stream, configuration, memory and timings."""
    client = any("client_ttft_ms" in a for a in answers)
    varied = varied_fields(run["config"] for run in runs) - {"budget_percent", "budget_tokens"}
    header = [
        "stream", "configuration", "budget", "budget tokens", "frames", "accuracy", "TTFT median ms", "TTFT p90 ms",
        "latency median ms",
    ]  # fmt: skip
    if client:
        header += ["client TTFT median ms", "client latency median ms"]
    header += ["resident tokens at end", "prefill ms/frame", "run s"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---" + "|---:" * (len(header) - 3) + "|"]
    for run in runs:
        config = run["config"]
        mine = [a for a in answers if a["stream"] == run["stream"] and a["config"] == config]
        ttfts = [a["ttft_ms"] for a in mine]
        cells = [
            run["stream"],
            row_label(config, varied | {"fps"}),
            f"{config['budget_percent']:g}%" if config["budget_percent"] else "as served",
            str(config["budget_tokens"]),
            str(run["frames"]),
            accuracy_cell(mine),
            _number(percentile(ttfts, 0.5)),
            _number(percentile(ttfts, 0.9)),
            _number(percentile([a["latency_ms"] for a in mine], 0.5)),
        ]
        if client:
            cells += [
                _number(percentile([a["client_ttft_ms"] for a in mine if "client_ttft_ms" in a], 0.5)),
                _number(percentile([a["client_latency_ms"] for a in mine if "client_latency_ms" in a], 0.5)),
            ]
        timeline = run["timeline"]
        prefill = run.get("ingest_ms_per_frame", {}).get("prefill")
        cells += [str(timeline[-1][1]) if timeline else "", _number(prefill), f"{run['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def template_table(answers: Sequence[dict[str, Any]]) -> list[str]:
    """Accuracy per question template (rows: configuration labels, all budgets pooled)."""
    varied = varied_fields(a["config"] for a in answers) - {"budget_percent"}
    templates = sorted({a["template"] for a in answers})
    rows = list(dict.fromkeys(row_label(a["config"], varied) for a in answers))
    lines = ["| policy | " + " | ".join(templates) + " |", "|---" + "|---:" * len(templates) + "|"]
    for row in rows:
        cells = [
            accuracy_cell([a for a in answers if row_label(a["config"], varied) == row and a["template"] == template])
            for template in templates
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def funnel_cell(answers: Sequence[dict[str, Any]]) -> str:
    """ "0.95 / 0.90 / 0.70 / 0.60 (n=20)": the share perceived, kept, chosen, answered."""
    rows = [a["funnel"] for a in answers if "funnel" in a]
    if not rows:
        return "n/a"
    shares = " / ".join(f"{sum(bool(row[step]) for row in rows) / len(rows):.2f}" for step in STEPS)
    return f"{shares} (n={len(rows)})"


def lost_cell(answers: Sequence[dict[str, Any]]) -> str:
    """How many wrong answers were lost at each step: "kept 2, chosen 3, answered 4"."""
    rows = [a["funnel"] for a in answers if "funnel" in a and a["funnel"]["lost_at"] is not None]
    counts = {step: sum(1 for row in rows if row["lost_at"] == step) for step in STEPS}
    return ", ".join(f"{step} {count}" for step, count in counts.items() if count) or "none"


def funnel_template_table(answers: Sequence[dict[str, Any]]) -> list[str]:
    """The funnel per question template, every configuration pooled."""
    templates = sorted({a["template"] for a in answers if "funnel" in a})
    lines = ["| template | perceived / kept / chosen / answered | wrong, lost at |", "|---|---|---|"]
    for template in templates:
        mine = [a for a in answers if a["template"] == template]
        lines.append(f"| {template} | {funnel_cell(mine)} | {lost_cell(mine)} |")
    return lines


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"
