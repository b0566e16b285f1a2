"""Standing questions on generated event streams: hits, latency, false alarms and duplicate starts.

Each stream is packaged footage with needles at random times (seeded): a sign saying CLOSED shown 4
times and a photo of a cat shown 3 times (the events), among other signs (OPEN, EXIT and suite words)
and other photos (the distractors). Two watches look for the events: "tell me when the sign says
CLOSED" and "alert when a cat appears". Frames go through the engine at 1 fps with the default
memory (curvature policy), as fast as they are encoded; times below are stream times. The events scored
are the engine's own: which frames are described in full depends on the watches (a due watch makes a
fuzzy frame look, a pending start looks again to confirm), so each setting is its own run.

Calibration runs a small grid of settings (the `on` threshold of p_yes) on the development seeds and picks
the best; a report runs the engine's defaults (`streamer.watches.WatchSpec`) on other seeds. A start counts
as a hit when it comes within 5 s of the event's first frame; a start away from every event (from 1 s
before it to 5 s after it ends) is a false alarm; a second start within one event is a duplicate. The
cost measurement times ingest with no watch and with ten on the first seed's stream, with the real
describer (not the cache the scoring runs use), since a watch's looks cost describer work.

`streamer eval --suite watches` (report seeds) and `--suite watches-dev` (development seeds, calibrating)
run it, as does `scripts/eval_watches.py` with seeds of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sources.file import FileSource
from sources.frame import SourceEnded
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.evaluation.descriptions import CachedDescriber, descriptions_path
from streamer.evaluation.needles.building import build_stream
from streamer.evaluation.needles.content import SIGN_WORDS, Needle
from streamer.llm import cache_dir
from streamer.watches import WatchEvent, WatchSpec

FPS = 1.0
HIT_WITHIN_S = 5.0
WATCHES = {"closed": "tell me when the sign says CLOSED", "cat": "alert when a cat appears"}
GRID = {"on": (0.6, 0.8, 0.9, 0.95)}  # confirm (2), hold_s (2 s) and cooldown_s (10 s) at their defaults
DEV_SEEDS = (1, 2)  # calibration
REPORT_SEEDS = (31, 32, 33)
MINUTES = 6.0


@dataclass
class StreamRecord:
    seed: int
    duration: float
    episodes: dict[str, list[tuple[float, float]]]
    events: list[WatchEvent] = field(default_factory=list)  # the engine's, both watches
    frames: int = 0
    clear: int = 0  # frames the policy scored clear as they arrived
    looks: int = 0  # frames described in full: the clear ones and those a watch asked for
    ingest_ms: float = 0.0
    check_ms: float = 0.0


def plan(seed: int, duration: float) -> tuple[list[Needle], dict[str, list[tuple[float, float]]]]:
    """The needles of one stream: events and distractors at random, non-overlapping times."""
    rng = random.Random(seed)
    items: list[tuple[str, str, float]] = [("sign", "CLOSED", 5.0)] * 4 + [("photo", "cat", 6.0)] * 3
    others = ["OPEN", "EXIT", *rng.sample(SIGN_WORDS, 2)]
    items += [("sign", word, 5.0) for word in others] + [("photo", p, 6.0) for p in ("horse", "motorcycle", "coffee")]
    rng.shuffle(items)
    slot = (duration - 20.0) / len(items)
    needles: list[Needle] = []
    episodes: dict[str, list[tuple[float, float]]] = {"closed": [], "cat": []}
    for index, (kind, content, shown) in enumerate(items):
        start = round(10.0 + index * slot + rng.uniform(0.0, slot - shown - 5.0), 1)
        needles.append(Needle(kind, start, start + shown, content))  # type: ignore[arg-type]
        if content in ("CLOSED", "cat"):
            episodes["closed" if content == "CLOSED" else "cat"].append((start, start + shown))
    return needles, episodes


def stream_video(seed: int, minutes: float) -> tuple[Path, dict[str, list[tuple[float, float]]]]:
    needles, episodes = plan(seed, minutes * 60.0)
    folder = cache_dir() / "watch-suites"
    video = build_stream(folder / f"watches-{minutes:g}m-seed{seed}.mp4", needles, [], minutes * 60.0, fps=2.0).video
    return video, episodes


def record_stream(adapter: EmbeddedAdapter, seed: int, minutes: float, settings: dict[str, float]) -> StreamRecord:
    """One run of the seed's stream through an engine with both watches at `settings`."""
    video, episodes = stream_video(seed, minutes)
    describer = adapter.describer
    assert isinstance(describer, CachedDescriber)
    saved = descriptions_path(video, FPS)
    describer.clear()
    describer.load(saved)
    engine = Engine(adapter, EngineConfig())
    engine.add_stream("s")
    for name, text in WATCHES.items():
        engine.add_watch("s", WatchSpec(text, **settings), name)  # type: ignore[arg-type]
    record = StreamRecord(seed, minutes * 60.0, episodes)
    engine.on_watch_event(record.events.append)

    async def feed() -> None:
        source = FileSource(video, fps=FPS)
        try:
            while True:
                record.clear += engine.push_frame("s", await source.recv()).tier == "clear"
        except SourceEnded:
            pass
        finally:
            source.close()

    asyncio.run(feed())
    describer.save(saved)
    records = engine.memory("s").records
    record.frames = len(records)
    record.looks = sum(r.detail == "full" for r in records)
    infos = engine.watches("s")
    record.check_ms = sum(i.check_ms for i in infos) / max(1, sum(i.checks for i in infos))
    record.ingest_ms = sum(engine.status("s").ingest_ms_per_frame.values())
    return record


COST_WATCHES = (
    "tell me when the sign says CLOSED",
    "alert when a cat appears",
    "tell me when the sign says OPEN",
    "alert when a horse appears",
    "tell me when a person appears",
    "tell me when a red car appears",
    'tell me when "Gate 7" is shown',
    "alert when a motorcycle appears",
    "tell me when the sign says EXIT",
    "alert when a dog appears",
)


def measure_cost(adapter: EmbeddedAdapter, seed: int, minutes: float, frames: int, rounds: int) -> list[str]:
    """Ingest rate of the first `frames` frames of the seed's stream with no watch and with ten, alternating
    which goes first, with the real describer: a watch's looks (full descriptions of frames the policy left
    fuzzy) cost its OCR and detector time."""
    video, _ = stream_video(seed, minutes)
    describer = adapter.describer
    real = describer.describer if isinstance(describer, CachedDescriber) else describer
    uncached = EmbeddedAdapter(real, adapter.tokenizer, adapter.model, adapter.name, adapter.embedder)

    def rate(watches: int, count: int = frames) -> float:
        engine = Engine(uncached, EngineConfig())
        engine.add_stream("s")
        for index, text in enumerate(COST_WATCHES[:watches]):
            engine.add_watch("s", WatchSpec(text), f"w{index}")

        async def feed() -> float:
            source = FileSource(video, fps=FPS)
            started = time.perf_counter()
            try:
                for _ in range(count):
                    engine.push_frame("s", await source.recv())
            finally:
                source.close()
            return count / (time.perf_counter() - started)

        return asyncio.run(feed())

    rate(10, 5)  # warm up the models, untimed
    rates: dict[int, list[float]] = {0: [], 10: []}
    for round_index in range(rounds):
        for watches in (0, 10) if round_index % 2 == 0 else (10, 0):
            rates[watches].append(rate(watches))
    none, ten = statistics.median(rates[0]), statistics.median(rates[10])
    return [
        "| watches on the stream | frames ingested per second (median of rounds) |",
        "|---|---:|",
        f"| 0 | {none:.2f} |",
        f"| 10 | {ten:.2f} ({ten / none:.0%} of the rate without) |",
    ]


@dataclass
class Score:
    episodes: int = 0
    hits: int = 0
    false_alarms: int = 0
    duplicates: int = 0
    hours: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, events: list[WatchEvent], episodes: list[tuple[float, float]], duration: float) -> None:
        starts = [e.t_detected for e in events if e.phase == "start"]
        self.episodes += len(episodes)
        self.hours += duration / 3600
        for begin, _ in episodes:
            near = [t for t in starts if begin <= t <= begin + HIT_WITHIN_S]
            if near:
                self.hits += 1
                self.latencies.append(min(near) - begin)
        for begin, end in episodes:
            self.duplicates += max(0, sum(begin - 1.0 <= t <= end + HIT_WITHIN_S for t in starts) - 1)
        self.false_alarms += sum(
            not any(begin - 1.0 <= t <= end + HIT_WITHIN_S for begin, end in episodes) for t in starts
        )

    def row(self) -> list[str]:
        ordered = sorted(self.latencies) or [float("nan")]
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return [
            f"{self.hits}/{self.episodes} ({self.hits / max(1, self.episodes):.0%})",
            f"{statistics.median(ordered):.1f}",
            f"{p95:.1f}",
            f"{self.false_alarms / max(1e-9, self.hours):.1f} ({self.false_alarms})",
            str(self.duplicates),
        ]

    def merit(self) -> float:
        return self.hits - 2 * self.false_alarms - self.duplicates - 0.01 * sum(self.latencies)


def score(records: list[StreamRecord]) -> dict[str, Score]:
    scores = {name: Score() for name in WATCHES}
    for record in records:
        for name in WATCHES:
            events = [e for e in record.events if e.watch_id == name]
            scores[name].add(events, record.episodes[name], record.duration)
    return scores


def run(
    adapter: EmbeddedAdapter,
    seeds: Sequence[int],
    minutes: float,
    settings: dict[str, float],
    log: Callable[[str], None],
) -> list[StreamRecord]:
    records = []
    for seed in seeds:
        log(f"seed {seed} {settings or 'defaults'}: {minutes:g} min ...")
        records.append(record_stream(adapter, seed, minutes, settings))
    return records


def evaluate_watches(
    seeds: Sequence[int],
    minutes: float = MINUTES,
    calibrate: bool = False,
    cost_frames: int = 0,
    command: str = "",
    log: Callable[[str], None] = print,
) -> str:
    """Run the evaluation (calibrating the grid, or the defaults) and return its report as markdown."""
    adapter = EmbeddedAdapter.load()
    adapter.describer = CachedDescriber(adapter.describer)
    began = time.perf_counter()
    header = (
        "| settings | watch | hits within 5 s | latency p50 (s) | p95 (s) | false alarms / h (n) | duplicates "
        "| frames looked at (clear) |"
    )
    table = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    grid = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    results = []
    for settings in grid if calibrate else [{}]:
        records = run(adapter, seeds, minutes, settings, log)
        scores = score(records)
        results.append((sum(s.merit() for s in scores.values()), settings, scores, records))
    if calibrate:
        results.sort(key=lambda item: -item[0])
    for _, settings, scores, records in results:
        named = ", ".join(f"{key} {value:g}" for key, value in settings.items()) or "defaults"
        frames, looks, clear = (sum(getattr(r, key) for r in records) for key in ("frames", "looks", "clear"))
        looked = f"{looks / frames:.0%} ({clear / frames:.0%})"
        for name, watch_score in scores.items():
            table.append(f"| {named} | {name} | " + " | ".join(watch_score.row()) + f" | {looked} |")
    records = results[0][3]
    lines = [
        f"Command: `{command}` ({time.perf_counter() - began:.0f} s on this machine)",
        "",
        f"Streams: seeds {', '.join(map(str, seeds))}, {minutes:g} min each at {FPS:g} fps; per stream "
        "4 CLOSED signs (5 s) and 3 cat photos (6 s) among 4 other signs and 3 other photos.",
        "",
        *table,
    ]
    if calibrate:
        tied = [settings for merit, settings, _, _ in results if merit == results[0][0]]
        named = "; ".join(", ".join(f"{key} {value:g}" for key, value in best.items()) for best in tied)
        lines += ["", f"Best on these streams{' (tied)' if len(tied) > 1 else ''}: {named}."]
    ingest = statistics.fmean(r.ingest_ms for r in records)
    check = statistics.fmean(r.check_ms for r in records)
    lines += [
        "",
        f"Ingest {ingest:.0f} ms per frame (descriptions cached); a watch check {check:.2f} ms (timeline read, no "
        "model pass). Live at 1 fps, a start reaches the client about one ingest after the frame it fired on: add "
        "that to the latency.",
    ]
    if cost_frames:
        lines += ["", f"Cost (seed {seeds[0]}, {cost_frames} frames, 3 rounds alternating):", ""]
        lines += measure_cost(adapter, seeds[0], minutes, cost_frames, rounds=3)
    return "# Standing questions on generated event streams\n\n" + "\n".join(lines) + "\n"
