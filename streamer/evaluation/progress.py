"""A progress bar with an ETA on stderr, for suites that run for many minutes.

Work comes in kinds that cost different amounts (describing a frame costs several times what
prefilling it does), so the ETA prices the work left of each kind at the rate measured for that kind
so far; a kind not yet started is priced at the overall rate. On a terminal the bar redraws in place;
otherwise (a log file, CI) it writes a line every few percent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from streamer.clock import clock

_WIDTH = 24


class Progress:
    """Counts units of work by kind; `advance` moves the bar, `close` ends its line.

    The time since the previous `advance` (or `start`) is charged to the kind advanced, so call it as
    each unit finishes. enabled=False draws nothing (the `--quiet` case).
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, redraw_s: float = 0.5) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.redraw_s = redraw_s
        self.started = time.perf_counter()
        self.total: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.label = ""
        self._last_draw = 0.0
        self._last_logged_percent = -100.0
        self._mark = self.started
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def add(self, kind: str, units: int) -> None:
        """Announce `units` more of `kind` to do."""
        self.total[kind] = self.total.get(kind, 0) + units

    def start(self, label: str) -> None:
        """Say what is running now ("curvature 10%: ingest"); time from here on is charged to the next unit."""
        self.label, self._mark = label, time.perf_counter()

    def advance(self, kind: str, units: int = 1) -> None:
        """`units` of `kind` are done."""
        now = time.perf_counter()
        self.done[kind] = self.done.get(kind, 0) + units
        self.seconds[kind] = self.seconds.get(kind, 0.0) + now - self._mark
        self._mark = now
        if self.enabled and now - self._last_draw >= self.redraw_s:
            self._draw(now)

    def running_total(self, kind: str) -> Callable[[int], None]:
        """A callback taking the running total of `kind` done so far (advances by the difference)."""
        counted = [0]

        def update(total: int) -> None:
            if total > counted[0]:
                self.advance(kind, total - counted[0])
                counted[0] = total

        return update

    def fraction(self) -> float:
        """Share of the work done, by estimated time."""
        elapsed = sum(self.seconds.values())
        left = self.eta_s()
        if left is None:
            return 0.0
        return elapsed / max(1e-9, elapsed + left)

    def eta_s(self) -> float | None:
        """Seconds of work left at the measured rates; None before anything was measured."""
        done_units = sum(self.done.values())
        if not done_units:
            return None
        overall = sum(self.seconds.values()) / done_units
        left = 0.0
        for kind, total in self.total.items():
            done = self.done.get(kind, 0)
            rate = self.seconds[kind] / done if done else overall
            left += max(0, total - done) * rate
        return left

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter(), final=True)
            if self._tty:
                self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float, final: bool = False) -> None:
        self._last_draw = now
        fraction = 1.0 if final else self.fraction()
        eta = self.eta_s()
        elapsed = clock(now - self.started)
        left = "" if final or eta is None else f", ETA {clock(eta)}"
        filled = round(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        text = f"[{bar}] {fraction:4.0%} {self.label} (elapsed {elapsed}{left})"
        if self._tty:
            self.stream.write("\r" + text.ljust(100)[:160])
        elif final or fraction * 100 >= self._last_logged_percent + 5:
            self._last_logged_percent = fraction * 100
            self.stream.write(text + "\n")
        self.stream.flush()
