"""The standing-question evaluation end to end on one short generated event stream: the engine's own events
scored against the needles' times, with the looks the watches asked for counted."""

from __future__ import annotations

import re

import pytest

from streamer.evaluation.watch_suite import evaluate_watches, plan


@pytest.mark.slow
def test_the_watch_evaluation_scores_the_engines_events() -> None:
    lines: list[str] = []
    report = evaluate_watches([5], minutes=3.0, command="test", log=lines.append)
    assert lines == ["seed 5 defaults: 3 min ..."]
    _, episodes = plan(5, 180.0)
    rows = {}
    for line in report.splitlines():
        if line.startswith("| defaults |"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[1]] = cells
    assert set(rows) == {"closed", "cat"}
    for name, cells in rows.items():
        hits, total = map(int, re.match(r"(\d+)/(\d+)", cells[2]).groups())  # type: ignore[union-attr]
        assert total == len(episodes[name]) and 0 <= hits <= total
        looked, clear = map(int, re.findall(r"(\d+)%", cells[7]))
        assert looked >= clear, "every clear frame is looked at, and the watches add looks"
    assert sum(int(rows[name][2].split("/")[0]) for name in rows) >= 1, "the watches fired on some event"
