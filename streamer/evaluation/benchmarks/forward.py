"""OVO-Bench's forward active responding answered by standing questions (watches) instead of by asking.

Forward active responding probes a video at several times with the same condition: how many times an
activity has happened so far (REC), whether a step is being performed now (SSR), whether a question can
be answered yet (CRR). That is what a watch reports as the stream plays: each condition becomes one watch
on the session's stream from its first frame (`streamer.watches`), and at a probe's time the answer is
read off the watch's episodes so far, with no model pass:

- REC: the number of episodes that have started;
- SSR: "Yes" while an episode is open (its last event is a start), else "No";
- CRR: "Yes" once an episode has started, else "No".

The answers are in the benchmark's own forms (a number, "Yes"/"No"), so its scorer reads them unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from streamer.engine import Engine
from streamer.evaluation.benchmarks.common import BenchmarkEvent
from streamer.evaluation.replaying import Probe, ProbeAnswer
from streamer.watches import WatchEvent, WatchSpec

FORWARD_TASKS = ("REC", "SSR", "CRR")


class ForwardWatches:
    """The watches answering one stream's forward active responding events.

    Call `start()` once the stream exists (before its first frame), `answer(probe)` when the stream reaches
    a probe's time (None for events it does not answer), and `close()` at the end.
    """

    def __init__(self, engine: Engine, stream_id: str, events: Iterable[BenchmarkEvent]) -> None:
        self.engine = engine
        self.stream_id = stream_id
        self.events = {event.id: event for event in events if event.task in FORWARD_TASKS}
        self.watch_of: dict[str, str] = {}  # event id -> watch id
        self.seen: dict[str, list[WatchEvent]] = {}  # watch id -> its events so far
        self.lock = threading.Lock()
        self._unsubscribe = engine.on_watch_event(self._record)

    def start(self) -> None:
        """One watch per distinct condition of the stream's events."""
        by_condition: dict[str, str] = {}
        for event_id, event in self.events.items():
            condition = event.question.removeprefix("How many times did they ").removesuffix("?")
            if condition not in by_condition:
                info = self.engine.add_watch(self.stream_id, WatchSpec(condition))
                by_condition[condition] = info.watch_id
                self.seen[info.watch_id] = []
            self.watch_of[event_id] = by_condition[condition]

    def answer(self, probe: Probe) -> ProbeAnswer | None:
        event = self.events.get(probe.id)
        if event is None:
            return None
        with self.lock:
            happened = list(self.seen[self.watch_of[probe.id]])
        starts = [e for e in happened if e.phase == "start"]
        if event.task == "REC":
            text = str(len(starts))
        elif event.task == "SSR":
            text = "Yes" if happened and happened[-1].phase == "start" else "No"
        else:
            text = "Yes" if starts else "No"
        as_of = max((e.as_of for e in happened), default=0.0)
        evidence = [span for e in starts for span in e.evidence]
        return ProbeAnswer(probe.id, probe.t, text, 0.0, 0.0, evidence, as_of)

    def close(self) -> None:
        self._unsubscribe()
        for watch_id in self.seen:
            self.engine.remove_watch(watch_id)

    def _record(self, event: WatchEvent) -> None:
        with self.lock:
            if event.stream_id == self.stream_id and event.watch_id in self.seen:
                self.seen[event.watch_id].append(event)
