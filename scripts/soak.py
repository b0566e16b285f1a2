"""Soak: `streamer serve` for a long accelerated stream, with clients, bad messages, camera outages and a crash.

What runs (everything real: the CLI's server process, the embedded models, a GStreamer RTSP server):

- stream `main`: the bikes clip looping, sampled at --fps and played --speed times faster than real time
  until --hours of stream time have passed (ingest is the limit when it cannot keep up);
- stream `cam`: an RTSP camera (gst-rtsp-server's live test pattern) at 0.5 fps, whose server is killed
  and started again twice (--outage-s each), at 15% and 25% of the way;
- --clients websocket clients, each asking about `main` (every fourth question about `cam`) once `main` has
  moved on --ask-every seconds of stream time since its last question, with a malformed message before
  every third question (broken JSON, an unknown type, an empty question, a message over the size limit);
- at 35% of the way the server is killed with SIGKILL and started again from its snapshots; questions
  in flight are asked again once it is back, and from then on every other question of `main` names a
  time from the 20 minutes of stream before the kill (`What was on screen at H:MM:SS?`).

Reported (table printed and written to --out): questions asked and answered, unanswered valid questions,
server_busy refusals, bad messages and their error replies, crashes (the server process exiting on its
own), each outage's time from the RTSP server's return to the camera's next frame, stream time before the
kill and after the restart, how many post-restart questions about pre-kill times had evidence from before
the kill, and the server's resident memory and open file descriptors from minute 10 to the end, with
their growth.

    python scripts/soak.py [--hours 2] [--speed 4] [--fps 0.5] [--clients 3] [--ask-every 30]
                           [--outage-s 8] [--out scripts/results/soak.md]

Memory is capped the way a long-running server would be, with caps small enough to be reached before a
process's minute 10, so that from then on the process should stay flat: `memory.compact_after_s` 1800
(records older than 30 minutes of stream leave the frame level), 2048 KV tokens resident per stream and
512 on the host (the defaults, 4096 and 65,536, take hours to fill at these rates; with 4096 and 4096 a
3-hour run's restarted process still held more tokens at its end than at its minute 10).
The KV tokens both streams hold are sampled with the process's memory, to show when the caps were reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rtsp_server import RtspServer, free_port  # the tests' real RTSP server

from streamer.evaluation.needles import footage_dir

BAD_MESSAGES = ("{not json", json.dumps({"type": "question.shout"}), "bad-empty", "x" * 20_000)
COMPACT_S = 1800.0  # memory.compact_after_s of the soak's server
RESIDENT_TOKENS, HOST_TOKENS = 2048, 512  # memory.budget_tokens and host_budget_tokens of the soak's server
CAM_FPS = 0.5
QUESTIONS = ("What is on screen?", "What vehicles are on the street?", "What colours are there?", "Is anyone there?")


@dataclass
class Tally:
    asked: int = 0
    answered: int = 0
    reasked: int = 0
    busy: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    bad_sent: int = 0
    bad_replied: int = 0
    bad_closed: int = 0
    after_restart_named: int = 0
    after_restart_before_kill: int = 0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # wall s, pid, RSS bytes, fds
    held: list[tuple[float, int]] = field(default_factory=list)  # wall s, KV tokens of both streams (device + host)
    heap: list[tuple[float, int]] = field(default_factory=list)  # wall s, malloc's bytes in use (glibc)
    outages: list[float] = field(default_factory=list)  # s from the RTSP server's return to cam's next frame
    crashes: int = 0
    main_frames: int = 0  # frames `main` had taken in at the last look (restored ones included)
    kill_stream_time: float | None = None
    restart_stream_time: float | None = None
    # After the restart, every 10 s: (stream s since the restart, frames from before the kill on device or host)
    readable: list[tuple[float, int]] = field(default_factory=list)


class Server:
    """The `streamer serve` process, its stderr kept in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.command = [str(Path(sys.executable).parent / "streamer"), "serve", "--config", str(config)]
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.killed = False

    def start(self, timeout_s: float = 300) -> None:
        self.killed = False
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def drain(stream: Any) -> None:
            with self.log.open("a") as out:
                for line in stream:
                    out.write(line)
                    out.flush()
                    if line.startswith("Ready"):
                        ready.set()

        threading.Thread(target=drain, args=(self.process.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {self.log}")

    def kill(self) -> None:
        assert self.process is not None
        self.killed = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=120)

    def usage(self) -> tuple[int, int, int]:
        """pid, resident bytes, open file descriptors."""
        assert self.process is not None
        pid = self.process.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return pid, rss, len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.rtsp = RtspServer()
        self.tally = Tally()
        self.end_stream_time = args.hours * 3600
        self.main_time = 0.0
        self.server_up = asyncio.Event()
        self.done = False
        self.started = time.monotonic()
        config = {
            "sources": [
                {"id": "main", "url": str(footage_dir() / "bikes.mp4"), "fps": args.fps, "loop": True,
                 "speed": args.speed},
                {"id": "cam", "url": self.rtsp.url("live"), "fps": CAM_FPS},
            ],
            "memory": {"compact_after_s": COMPACT_S, "budget_tokens": RESIDENT_TOKENS,
                       "host_budget_tokens": HOST_TOKENS},
            "snapshot": {"dir": str(work / "snapshots"), "every_s": 60},
            "server": {"port": self.port, "token": self.token},
        }  # fmt: skip
        path = work / "soak.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.server = Server(path, work / "server.log")

    def wall(self) -> float:
        return time.monotonic() - self.started

    async def run(self) -> Tally:
        self.rtsp.start()
        await asyncio.to_thread(self.server.start)
        self.server_up.set()
        async with aiohttp.ClientSession(headers=self.headers) as http:
            tasks = [asyncio.create_task(self.client(http, n)) for n in range(self.args.clients)]
            tasks += [asyncio.create_task(self.monitor(http)), asyncio.create_task(self.director(http))]
            await tasks[-1]
            self.done = True
            await asyncio.gather(*tasks[:-1])
        if self.server.stop() != 0:
            self.tally.crashes += 1
        self.rtsp.kill()
        return self.tally

    def count_readable(self, status: dict[str, Any]) -> None:
        """After the restart: how many frames from before the kill a question could still read."""
        kill, restart = self.tally.kill_stream_time, self.tally.restart_stream_time
        if kill is None or restart is None:
            return
        readable = [f for f in status["frames"] if f["t"] < kill and f["location"] in ("device", "host")]
        self.tally.readable.append((self.main_time - restart, len(readable)))

    async def status(self, http: aiohttp.ClientSession, stream_id: str, limit: int = 1) -> dict[str, Any] | None:
        try:
            async with http.get(
                f"{self.base}/streams/{stream_id}/timeline?limit={limit}", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                return dict(await response.json()) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def heap_in_use(self, http: aiohttp.ClientSession) -> int | None:
        """malloc's bytes in use in the server process, from /metrics (glibc only)."""
        try:
            async with http.get(f"{self.base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for line in text.splitlines():
            if line.startswith('streamer_heap_bytes{kind="in_use"}'):
                return int(float(line.split()[-1]))
        return None

    async def monitor(self, http: aiohttp.ClientSession) -> None:
        """Every 10 s: the server's memory and descriptors, and how far `main` has got."""
        while not self.done:
            if self.server_up.is_set():
                process = self.server.process
                if process is not None and process.poll() is not None and not self.server.killed:
                    self.tally.crashes += 1
                    print(f"the server exited by itself ({process.returncode}); restarting it", flush=True)
                    self.server_up.clear()
                    await asyncio.to_thread(self.server.start)
                    self.server_up.set()
                try:
                    pid, rss, fds = self.server.usage()
                    self.tally.samples.append((self.wall(), pid, rss, fds))
                except (FileNotFoundError, ProcessLookupError):
                    pass
                status = await self.status(http, "main", 1 if self.tally.restart_stream_time is None else 2000)
                if status is not None:
                    self.main_time = float(status["as_of"])
                    self.tally.main_frames = int(status["total_frames"])
                    self.count_readable(status)
                    cam = await self.status(http, "cam")
                    if cam is not None:
                        held = [int(s["resident_tokens"]) + int(s["host_tokens"]) for s in (status, cam)]
                        self.tally.held.append((self.wall(), sum(held)))
                    in_use = await self.heap_in_use(http)
                    if in_use is not None:
                        self.tally.heap.append((self.wall(), in_use))
            if len(self.tally.samples) % 6 == 1:
                print(f"[{self.wall() / 60:5.1f} min] main at {self.main_time / 60:6.1f} min of stream; "
                      f"asked {self.tally.asked}, answered {self.tally.answered}", flush=True)  # fmt: skip
            await asyncio.sleep(10)

    async def director(self, http: aiohttp.ClientSession) -> None:
        """The outages and the crash, at their share of the way, then the end."""
        plan = [(0.15, "outage"), (0.25, "outage"), (0.35, "crash")]
        for share, what in plan:
            while self.main_time < share * self.end_stream_time:
                await asyncio.sleep(1)
            if what == "outage":
                await self.outage(http)
            else:
                await self.crash(http)
        while self.main_time < self.end_stream_time:
            await asyncio.sleep(2)

    async def outage(self, http: aiohttp.ClientSession) -> None:
        """Kill the camera's RTSP server, start it again after --outage-s, and time until cam's next frame."""
        self.rtsp.kill()
        await asyncio.sleep(self.args.outage_s)
        before = await self.status(http, "cam")  # nothing can arrive while its server is down
        frames = int(before["total_frames"]) if before else 0
        self.rtsp.start()
        back = time.monotonic()
        while True:
            now = await self.status(http, "cam")
            if now is not None and int(now["total_frames"]) > frames:
                break
            if time.monotonic() - back > 120:
                self.tally.outages.append(float("inf"))
                return
            await asyncio.sleep(0.2)
        self.tally.outages.append(time.monotonic() - back)
        print(f"camera outage {len(self.tally.outages)}: live again {self.tally.outages[-1]:.1f} s after "
              "its server returned", flush=True)  # fmt: skip

    async def crash(self, http: aiohttp.ClientSession) -> None:
        self.tally.kill_stream_time = self.main_time
        self.server_up.clear()
        self.server.kill()
        print(f"server killed (SIGKILL) at {self.main_time / 60:.1f} min of stream", flush=True)
        await asyncio.to_thread(self.server.start)
        status = None
        while status is None:
            status = await self.status(http, "main")
            await asyncio.sleep(0.5)
        self.tally.restart_stream_time = float(status["as_of"])
        self.server_up.set()
        print(f"server back, main restored at {self.tally.restart_stream_time / 60:.1f} min of stream", flush=True)

    async def client(self, http: aiohttp.ClientSession, number: int) -> None:
        rng = random.Random(number)
        last = 0.0
        asked = 0
        pending: tuple[str, str, dict[str, Any]] | None = None
        while not self.done:
            await self.server_up.wait()
            try:
                async with http.ws_connect(f"{self.base.replace('http', 'ws')}/ws", max_msg_size=1 << 22) as ws:
                    await ws.receive_json(timeout=30)  # session.created
                    while not self.done:
                        if pending is None:
                            while self.main_time - last < self.args.ask_every and not self.done:
                                await asyncio.sleep(0.5)
                            if self.done:
                                break
                            last = self.main_time
                            asked += 1
                            if asked % 3 == 0:
                                await self.bad_message(ws, rng.choice(BAD_MESSAGES))
                            pending = self.question(rng, number, asked)
                            self.tally.asked += 1
                        if await self.ask(ws, *pending):
                            pending = None
            except (aiohttp.ClientError, ConnectionError, TimeoutError, TypeError, RuntimeError):
                # The server went away (a crash or the size limit's close): connect again, ask again.
                if pending is not None:
                    self.tally.reasked += 1
                await asyncio.sleep(1)

    def question(self, rng: random.Random, number: int, asked: int) -> tuple[str, str, dict[str, Any]]:
        question_id = f"c{number}-{asked}"
        if asked % 4 == 0:
            return question_id, "cam", {"text": rng.choice(QUESTIONS)}
        kill = self.tally.kill_stream_time
        if self.tally.restart_stream_time is not None and kill is not None and asked % 2:
            t = int(rng.uniform(max(0.0, kill - 1200), kill - 60))
            clock = f"{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}"
            return question_id, "main", {"text": f"What was on screen at {clock}?", "named": t}
        return question_id, "main", {"text": rng.choice(QUESTIONS)}

    async def bad_message(self, ws: aiohttp.ClientWebSocketResponse, payload: str) -> None:
        self.tally.bad_sent += 1
        if payload == "bad-empty":
            payload = json.dumps({"type": "question.ask", "question_id": "bad", "text": ""})
        await ws.send_str(payload)
        reply = await ws.receive(timeout=30)
        while reply.type == aiohttp.WSMsgType.TEXT and json.loads(reply.data)["type"] == "stream.status":
            reply = await ws.receive(timeout=30)
        if reply.type == aiohttp.WSMsgType.TEXT and json.loads(reply.data)["type"] == "error":
            self.tally.bad_replied += 1
        elif reply.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            self.tally.bad_closed += 1  # over the size limit: the server closes the connection (1009)
            raise ConnectionError("closed by the server")
        else:
            print(f"a bad message ({payload[:20]!r}) got {reply.type!r} {str(reply.data)[:200]}", flush=True)

    async def ask(self, ws: aiohttp.ClientWebSocketResponse, question_id: str, stream_id: str,
                  fields: dict[str, Any]) -> bool:  # fmt: skip
        """Ask and wait for the answer; True once answered (or refused for good), False to ask again."""
        named = fields.get("named")
        await ws.send_json({"type": "question.ask", "question_id": question_id, "stream_id": stream_id,
                            "text": fields["text"]})  # fmt: skip
        while True:
            message = await ws.receive_json(timeout=300)
            if message.get("question_id") != question_id:
                continue
            if message["type"] == "answer.done":
                self.tally.answered += 1
                if named is not None:
                    if self.tally.after_restart_named < 3:
                        print(f"after the restart: {fields['text']!r} -> {message['text']!r}, evidence "
                              f"{message['evidence']}", flush=True)  # fmt: skip
                    self.tally.after_restart_named += 1
                    kill = self.tally.kill_stream_time or 0.0
                    if any(t0 - 4 <= named <= t1 + 4 and t0 < kill for t0, t1 in message["evidence"]):
                        self.tally.after_restart_before_kill += 1
                return True
            if message["type"] == "error":
                code = message["code"]
                self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
                if code in ("server_busy", "stream_restarting", "unknown_stream"):
                    self.tally.busy += code == "server_busy"
                    await asyncio.sleep(2)
                    return False
                return True


def growth(samples: Sequence[Sequence[float]], column: int, from_s: float) -> tuple[float, float, float]:
    """(value near `from_s`, value at the end, growth) of one column, each the median of 6 samples (a minute)."""
    later = [s for s in samples if s[0] >= from_s]
    if len(later) < 12:
        return float("nan"), float("nan"), float("nan")
    start = statistics.median(s[column] for s in later[:6])
    end = statistics.median(s[column] for s in later[-6:])
    return start, end, end / start - 1


def nearest(samples: list[tuple[float, int]], wall_s: float, unit: int = 1) -> str:
    """The sample nearest `wall_s` within 10 s, in `unit`s, or -."""
    near = [(abs(t - wall_s), value) for t, value in samples if abs(t - wall_s) <= 10]
    return f"{min(near)[1] / unit:.0f}" if near else "-"


def report(tally: Tally, args: argparse.Namespace, wall_s: float) -> str:
    unanswered = tally.asked - tally.answered
    rss0, rss1, rss_growth = growth(tally.samples, 2, 600)
    fd0, fd1, fd_growth = growth(tally.samples, 3, 600)
    pids = list(dict.fromkeys(s[1] for s in tally.samples))
    # The timeline endpoint lists the newest 2000 frames: past that, older frames may be held but not listed.
    # Until the kill's frames pass memory.compact_after_s (COMPACT_S) of age they are at the frame level; after
    # that only the event timeline keeps them, by design.
    restart, kill = tally.restart_stream_time or 0.0, tally.kill_stream_time or 0.0
    within = [(t, n) for t, n in tally.readable if restart + t - kill < COMPACT_S - 120]
    readable = (
        f"at least {min(n for _, n in within)} at each of {len(within)} checks in the {COMPACT_S / 60:.0f} min of "
        f"stream before they reach the compaction age; {tally.readable[-1][1]} at the end"
        if within
        else "-"
    )
    per_process = []
    for number, pid in enumerate(pids, start=1):
        mine = [s for s in tally.samples if s[1] == pid]
        first, last, change = growth(mine, 2, mine[0][0] + 600)
        span = (mine[-1][0] - mine[0][0]) / 60
        summary = f"{first / 2**20:.0f} -> {last / 2**20:.0f} MiB ({change * 100:+.1f}%)" if change == change else "-"
        held = [h for h in tally.held if mine[0][0] <= h[0] <= mine[-1][0]]
        tokens0, tokens1, _ = growth(held, 1, mine[0][0] + 600)
        if tokens0 == tokens0:
            summary += f", KV tokens held {tokens0:.0f} -> {tokens1:.0f}"
        heap = [h for h in tally.heap if mine[0][0] <= h[0] <= mine[-1][0]]
        heap0, heap1, heap_change = growth(heap, 1, mine[0][0] + 600)
        if heap0 == heap0:
            summary += f", malloc in use {heap0 / 2**20:.0f} -> {heap1 / 2**20:.0f} MiB ({heap_change * 100:+.1f}%)"
        per_process.append(f"process {number} ({span:.0f} min): RSS from its minute 10 {summary}")
    rows = [
        ("stream", f"{args.hours:g} h of `main` at {args.fps:g} fps, up to {args.speed:g}x; `cam` RTSP "
                   f"{CAM_FPS:g} fps"),
        ("wall time", f"{wall_s / 60:.1f} min"),
        ("frames `main` took", f"{tally.main_frames} ({tally.main_frames / (args.hours * 3600):.2f} a stream second)"),
        ("valid questions asked / answered", f"{tally.asked} / {tally.answered}"),
        ("unanswered valid questions", str(unanswered)),
        ("asked again after the crash or a refusal", f"{tally.reasked} after a dropped connection, "
                                                     f"{tally.busy} after server_busy"),
        ("errors to valid questions", json.dumps(tally.errors)),
        ("bad messages sent / error replies / closed (size limit)",
         f"{tally.bad_sent} / {tally.bad_replied} / {tally.bad_closed}"),
        ("crashes (server exited by itself)", str(tally.crashes)),
        ("camera live again after its server returned", ", ".join(f"{s:.1f} s" for s in tally.outages)),
        ("stream time at the kill / restored at", f"{(tally.kill_stream_time or 0) / 60:.1f} / "
                                                  f"{(tally.restart_stream_time or 0) / 60:.1f} min"),
        ("after the restart: questions naming a pre-kill time / answered with evidence from then",
         f"{tally.after_restart_named} / {tally.after_restart_before_kill}"),
        ("after the restart: frames from before the kill a question can read (device or host)", readable),
        ("server RSS, minute 10 -> end", f"{rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB ({rss_growth * 100:+.1f}%)"),
        ("open file descriptors, minute 10 -> end", f"{fd0:.0f} -> {fd1:.0f} ({fd_growth * 100:+.1f}%)"),
        ("per process", "; ".join(per_process)),
    ]  # fmt: skip
    lines = [
        f"# Soak ({datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"`python scripts/soak.py {shlex.join(sys.argv[1:])}` on {os.cpu_count()} cores.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "One row a minute: wall minute, process, RSS MiB, descriptors, KV tokens both streams hold, malloc MiB in use:",
        "",
        *[
            f"    {s[0] / 60:5.1f}  {pids.index(s[1]) + 1}  {s[2] / 2**20:7.1f}  {s[3]}  "
            f"{nearest(tally.held, s[0])}  {nearest(tally.heap, s[0], 2**20)}"
            for s in tally.samples[::6]
        ],
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--speed", type=float, default=4.0)
    parser.add_argument("--fps", type=float, default=0.5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--ask-every", type=float, default=30.0, help="stream seconds between a client's questions")
    parser.add_argument("--outage-s", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("scripts/results/soak.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        soak = Soak(args, Path(folder))
        started = time.monotonic()
        try:
            tally = asyncio.run(soak.run())
        finally:
            soak.rtsp.kill()
            if soak.server.process is not None and soak.server.process.poll() is None:
                soak.server.process.kill()
        text = report(tally, args, time.monotonic() - started)
        log = Path(tempfile.gettempdir()) / "soak-server.log"
        (Path(folder) / "server.log").replace(log)
        print(f"server log: {log}")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
