"""Replaying a file through a running server, exactly as a live client would.

The client adds the video as a stream (`POST /streams`; the server plays files in real time), watches
how far the stream's memory has got (`GET /streams/{id}/timeline?limit=1`), and when the newest
frame in memory is the last one at or before a question's time it sends `question.ask` over `/ws`
and reads the streamed answer. Besides the engine's own TTFT (from `answer.done`) it measures what a
client sees: the time from sending the question to the first `answer.delta` (client TTFT) and to
`answer.done` (client latency). The stream is removed when the last question is answered.

`ServerForConfig` starts a server in this process for one engine configuration, on a free port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamer.engine import Engine
from streamer.errors import UserError
from streamer.evaluation.replaying import Probe, ProbeAnswer, StreamRun

POLL_S = 0.2


def http_base(url: str) -> str:
    """`ws://host:port/ws` or `http://host:port[/...]` -> `http://host:port`."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise UserError(f"--url {url} is not a server address; give one like ws://127.0.0.1:8080/ws.")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


class ServerForConfig:
    """A server in this process whose engine is `engine`, listening on a free loopback port; its clients
    may open the video files in `videos` (the folder of the suite's stream)."""

    def __init__(self, engine: Engine, videos: Path) -> None:
        from streamer.server.app import ServerThread, create_app
        from streamer.server.config import StreamerConfig

        server = {"host": "127.0.0.1", "port": 0, "api_file_folders": [str(videos)]}
        config = StreamerConfig.model_validate({"server": server})
        self.thread = ServerThread(create_app(config, lambda: engine), "127.0.0.1")

    def __enter__(self) -> str:
        self.thread.start()
        return self.thread.url

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()


async def replay_over_websocket(
    base_url: str,
    video: Path,
    fps: float,
    probes: Sequence[Probe],
    *,
    stream_id: str = "eval",
    token: str | None = None,
    on_frames: Callable[[int], None] | None = None,
    on_answer: Callable[[ProbeAnswer], None] | None = None,
    answer_timeout_s: float = 300.0,
) -> StreamRun:
    """Play `video` on the server at `base_url` and ask `probes` at their stream times over its websocket.

    on_frames receives the number of frames the stream has ingested so far, whenever it grows.
    Raises UserError when the server cannot be reached or refuses the stream.
    """
    import aiohttp

    if any(probe.since > 0 for probe in probes):
        raise UserError("A server answers from everything it keeps; leave out --via-websocket for --context last60.")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(base_url, headers=headers) as http:
            await _add_stream(http, base_url, video, fps, stream_id)
            try:
                return await _ask_all(http, stream_id, fps, probes, on_frames, on_answer, answer_timeout_s)
            finally:
                async with http.delete(f"/streams/{stream_id}"):
                    pass
    except aiohttp.ClientConnectorError:
        raise UserError(f"Cannot connect to {base_url}; start a server with `streamer serve` or check --url.") from None
    except aiohttp.WSServerHandshakeError as error:
        raise UserError(f"{base_url} did not accept a websocket (HTTP {error.status}); check --url.") from None


async def _add_stream(http: Any, base_url: str, video: Path, fps: float, stream_id: str) -> None:
    body = {"source": str(video.resolve()), "stream_id": stream_id, "fps": fps}
    async with http.post("/streams", json=body) as response:
        if response.status == 401:
            raise UserError(f"{base_url} requires a token; pass --token or set STREAMER_TOKEN.")
        if response.status != 201:
            reply = await response.json(content_type=None)
            message = reply.get("error", {}).get("message", f"HTTP {response.status}")
            raise UserError(f"{base_url} did not take '{video}' as a stream: {message}")


async def _ask_all(
    http: Any,
    stream_id: str,
    fps: float,
    probes: Sequence[Probe],
    on_frames: Callable[[int], None] | None,
    on_answer: Callable[[ProbeAnswer], None] | None,
    answer_timeout_s: float,
) -> StreamRun:
    run = StreamRun([])
    async with http.ws_connect("/ws") as ws:
        await _receive(ws, answer_timeout_s)  # session.created
        for number, probe in enumerate(sorted(probes, key=lambda p: p.t)):
            # The memory holds every frame up to t once its newest frame is the last sampled at or before t.
            while True:
                timeline = await _get(http, f"/streams/{stream_id}/timeline?limit=1")
                stream = await _get(http, f"/streams/{stream_id}")
                if timeline["total_frames"] != run.frames:
                    run.frames = int(timeline["total_frames"])
                    run.timeline.append((float(timeline["as_of"]), int(timeline["resident_tokens"])))
                    if on_frames is not None:
                        on_frames(run.frames)
                run.budget_tokens = int(stream["budget_tokens"])
                reached = run.frames > 0 and timeline["as_of"] + 1.0 / fps > probe.t + 1e-6
                if reached or stream["state"] in ("ended", "failed"):
                    break
                await asyncio.sleep(POLL_S)
            answer = await _ask(ws, f"q{number}", probe, stream_id, answer_timeout_s)
            run.answers.append(answer)
            if on_answer is not None:
                on_answer(answer)
    return run


async def _ask(ws: Any, question_id: str, probe: Probe, stream_id: str, timeout_s: float) -> ProbeAnswer:
    sent = time.perf_counter()
    message: dict[str, Any] = {"type": "question.ask", "question_id": question_id, "stream_id": stream_id}
    if probe.options and probe.question:
        message.update(text=probe.question, options=list(probe.options))  # the server lists and scores them
    else:
        message["text"] = probe.prompt
    await ws.send_json(message)
    first_delta: float | None = None
    while True:
        reply = await _receive(ws, timeout_s)
        if reply.get("question_id") != question_id:
            continue
        kind = reply["type"]
        if kind == "answer.delta" and first_delta is None:
            first_delta = time.perf_counter()
        elif kind == "error":
            raise UserError(f"The server did not answer question '{probe.id}': {reply['message']}")
        elif kind == "answer.done":
            done = time.perf_counter()
            return ProbeAnswer(
                probe.id,
                probe.t,
                str(reply["text"]),
                float(reply["ttft_ms"]),
                float(reply["latency_ms"]),
                [list(span) for span in reply["evidence"]],
                float(reply["as_of"]),
                client_ttft_ms=round(((first_delta or done) - sent) * 1000, 1),
                client_latency_ms=round((done - sent) * 1000, 1),
            )


async def _receive(ws: Any, timeout_s: float) -> dict[str, Any]:
    import aiohttp

    try:
        frame = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        raise UserError(f"The server sent nothing for {timeout_s:.0f} s; check its log.") from None
    if frame.type != aiohttp.WSMsgType.TEXT:
        raise UserError("The server closed the websocket before the evaluation was done; check its log.")
    message: dict[str, Any] = frame.json()
    return message


async def _get(http: Any, path: str) -> dict[str, Any]:
    async with http.get(path) as response:
        reply: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            message = reply.get("error", {}).get("message", f"HTTP {response.status}")
            raise UserError(f"The server's {path} failed: {message}")
        return reply
