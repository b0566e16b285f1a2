"""The suite's PNG plots (matplotlib, Agg backend): accuracy vs budget per policy, TTFT vs stream
length, and resident tokens over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamer.evaluation.tables import accuracy_of, row_label, varied_fields
from streamer.funnel import STEPS

ACCURACY_PNG = "accuracy_vs_budget.png"
TTFT_PNG = "ttft_vs_stream_length.png"
RESIDENT_PNG = "resident_tokens.png"
FUNNEL_PNG = "funnel.png"


def write_plots(out: Path, answers: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> list[Path]:
    """Write the three plots into `out`; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    written = [_accuracy(out / ACCURACY_PNG, answers), _ttft(out / TTFT_PNG, answers)]
    if any(run["timeline"] for run in runs):
        written.append(_resident(out / RESIDENT_PNG, runs))
    if any("funnel" in a for a in answers):
        written.append(_funnel(out / FUNNEL_PNG, answers))
    return written


def _funnel(path: Path, answers: Sequence[dict[str, Any]]) -> Path:
    """One line per configuration (policy at a budget): the share of questions past each funnel step."""
    import matplotlib.pyplot as plt

    varied = varied_fields([a["config"] for a in answers]) - {"budget_percent", "budget_tokens"}
    groups: dict[str, list[dict[str, Any]]] = {}
    for answer in answers:
        if "funnel" in answer:
            config = answer["config"]
            budget = f"{config['budget_percent']:g}%" if config["budget_percent"] else "as served"
            groups.setdefault(f"{row_label(config, varied)} {budget}", []).append(answer["funnel"])
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, rows in groups.items():
        shares = [sum(bool(row[step]) for row in rows) / len(rows) for step in STEPS]
        axis.plot(list(STEPS), shares, marker="o", label=label)
    axis.set_ylabel("share of questions")
    axis.set_ylim(-0.05, 1.05)
    axis.set_title("Where right answers are lost")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path)


def _accuracy(path: Path, answers: Sequence[dict[str, Any]]) -> Path:
    import matplotlib.pyplot as plt

    varied = varied_fields([a["config"] for a in answers])
    lines: dict[str, dict[float, float]] = {}
    for answer in answers:
        lines.setdefault(row_label(answer["config"], varied), {})
    for label in lines:
        mine = [a for a in answers if row_label(a["config"], varied) == label]
        for budget in sorted({a["config"]["budget_percent"] for a in mine}):
            accuracy = accuracy_of([a for a in mine if a["config"]["budget_percent"] == budget])
            if accuracy is not None:
                lines[label][budget] = accuracy[0]
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        budgets = sorted(points)
        axis.plot(budgets, [points[b] for b in budgets], marker="o", label=label)
    axis.set_xlabel("token budget (% of the stream's full token count)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(-0.05, 1.05)
    axis.set_title("Accuracy vs budget")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def _ttft(path: Path, answers: Sequence[dict[str, Any]]) -> Path:
    import matplotlib.pyplot as plt

    varied = varied_fields([a["config"] for a in answers])
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = list(dict.fromkeys(row_label(a["config"], varied) for a in answers))
    for index, label in enumerate(labels):
        mine = [a for a in answers if row_label(a["config"], varied) == label]
        colour = f"C{index % 10}"
        axis.scatter([a["t"] / 60 for a in mine], [a["ttft_ms"] for a in mine], s=14, color=colour, label=label)
        client = [a for a in mine if "client_ttft_ms" in a]
        if client:
            axis.scatter(
                [a["t"] / 60 for a in client],
                [a["client_ttft_ms"] for a in client],
                s=22,
                facecolors="none",
                edgecolors=colour,
                label=f"{label} (client)",
            )
    axis.set_xlabel("stream time when asked (minutes)")
    axis.set_ylabel("time to first token (ms)")
    axis.set_ylim(bottom=0)
    axis.set_title("TTFT vs stream length")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return _save(figure, path)


def _resident(path: Path, runs: Sequence[dict[str, Any]]) -> Path:
    """Resident tokens after every frame, for the longest stream: one panel per budget, one line per policy."""
    import matplotlib.pyplot as plt

    longest = max(runs, key=lambda run: run["duration_s"])["stream"]
    shown = [run for run in runs if run["stream"] == longest and run["timeline"]]
    budgets = sorted({run["config"]["budget_percent"] for run in shown})
    varied = varied_fields([run["config"] for run in shown]) - {"budget_percent"}
    figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), squeeze=False, sharey=True)
    for axis, budget in zip(axes[0], budgets, strict=True):
        at_budget = [run for run in shown if run["config"]["budget_percent"] == budget]
        for index, run in enumerate(at_budget):
            times = [t / 60 for t, _ in run["timeline"]]
            tokens = [count for _, count in run["timeline"]]
            axis.plot(times, tokens, color=f"C{index % 10}", lw=1.2, label=row_label(run["config"], varied))
        budget_tokens = max(run["config"]["budget_tokens"] for run in at_budget)
        axis.axhline(budget_tokens, color="grey", ls="--", lw=0.8)
        axis.set_title(f"budget {budget:g}% ({budget_tokens} tokens)" if budget else "as served")
        axis.set_xlabel("stream time (minutes)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("resident KV tokens")
    axes[0][0].legend(fontsize="small")
    figure.suptitle(f"Resident tokens over time: {longest}")
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
