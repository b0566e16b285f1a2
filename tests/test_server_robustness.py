"""Bad clients against a running server: every bad message gets an error, nobody else notices.

Hypothesis generates well over a thousand malformed, oversized, wrongly typed, unknown and
semantically wrong messages; none of them reaches the language model. Another process sends them
(so generating and sending them does not take the server's interpreter), one after another as fast
as the server answers, while a second client keeps pinging and ingest must keep its rate. Slow and
vanished clients are real sockets that stop reading or disappear.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from server_helpers import (
    STREAM,
    BarrageResult,
    Message,
    ask,
    barrage,
    connect,
    frames_ingested,
    receive,
    receive_until,
    start_server,
    wait_for_frames,
    ws_url,
)

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.server.app import ServerThread, create_app
from streamer.server.config import StreamerConfig
from streamer.server.protocol import CLIENT_MESSAGES, MAX_QUESTION_CHARS
from streamer.server.websocket import MessageBudget

T = TypeVar("T")
MAX_MESSAGE_BYTES = 4096
QUEUE_MESSAGES = 16
EXAMPLES = 1200
# Messages a second the test server reads from one connection: four times the default, so the
# barrage of over a thousand messages takes seconds, not half a minute.
MESSAGE_RATE = 200.0
MESSAGE_BURST = 100
# Ingest is compared over this many frames (8 s at the stream's 1 fps) without and with the barrage.
WINDOW_FRAMES = 8
# What must never appear in an error reply: tracebacks, source locations, server file paths.
LEAKS = ("Traceback", 'File "', ".py", "site-packages", str(Path(__file__).resolve().parent.parent))


@pytest.fixture(scope="module")
def server(embedded_adapter: EmbeddedAdapter, bikes_clip: Path) -> Iterator[ServerThread]:
    server = start_server(
        embedded_adapter,
        bikes_clip,
        max_message_bytes=MAX_MESSAGE_BYTES,
        queue_messages=QUEUE_MESSAGES,
        max_messages_per_s=MESSAGE_RATE,
        message_burst=MESSAGE_BURST,
    )
    wait_for_frames(server, 3)
    yield server
    server.stop()


class ClientLoop:
    """A client event loop in its own thread, so synchronous Hypothesis tests can drive a websocket."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, work: Awaitable[T], timeout: float = 60.0) -> T:
        async def wrapped() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# What a bad client sends: (payload, error codes that are right for it). A payload is a str (text
# frame) or bytes (binary frame).

VALID: dict[str, dict[str, Any]] = {
    "question.ask": {"type": "question.ask", "question_id": "q1", "text": "What is on screen?"},
    "question.cancel": {"type": "question.cancel", "question_id": "q1"},
    "stream.attach": {"type": "stream.attach", "stream_id": STREAM},
    "stream.detach": {"type": "stream.detach"},
    "ping": {"type": "ping"},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
not_a_string = json_values.filter(lambda v: not isinstance(v, str) and v is not None)
not_a_number = json_values.filter(lambda v: isinstance(v, bool) or (not isinstance(v, int | float) and v is not None))
bad_ids = not_a_string | st.just("") | st.text(min_size=65, max_size=80) | st.text(max_size=10).map(lambda s: s + " !")
bad_stream_ids = not_a_string | st.just("") | st.sampled_from(["-x", "a/b", "../etc", "x" * 65, "a b"])


def _invalid_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def _wrong_field(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """The valid message of `kind` with one field broken, missing or added."""
    valid = VALID[kind]
    broken = [
        bad_ids.map(lambda v: {**valid, "id": v}),
        bad_stream_ids.map(lambda v: {**valid, "stream_id": v}),
        not_a_number.map(lambda v: {**valid, "ts": v}),
        st.text(min_size=1, max_size=12)
        .filter(lambda k: k not in {"type", "id", "stream_id", "ts", "question_id", "text"})
        .flatmap(lambda key: json_values.map(lambda v: {**valid, key: v})),
    ]
    if "question_id" in valid:
        broken.append(bad_ids.map(lambda v: {**valid, "question_id": v}))
        broken.append(st.just({k: v for k, v in valid.items() if k != "question_id"}))
    if "text" in valid:
        broken.append(not_a_string.map(lambda v: {**valid, "text": v}))
        broken.append(st.sampled_from(["", "   ", "\n\t"]).map(lambda v: {**valid, "text": v}))
        broken.append(st.just({**valid, "text": "Why? " * (MAX_QUESTION_CHARS // 5 + 1)}))
    if kind == "stream.attach":
        broken.append(st.just({"type": "stream.attach"}))
    return st.one_of(broken)


bad_messages: st.SearchStrategy[tuple[str | bytes, set[str]]] = st.one_of(
    st.text(max_size=200).filter(_invalid_json).map(lambda t: (t, {"invalid_json"})),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: (json.dumps(v), {"invalid_message"})),
    st.dictionaries(st.text(max_size=10).filter(lambda k: k != "type"), json_values, max_size=4).map(
        lambda d: (json.dumps(d), {"invalid_message"})
    ),
    not_a_string.map(lambda v: (json.dumps({"type": v}), {"invalid_message"})),
    st.text(max_size=30)
    .filter(lambda t: t not in CLIENT_MESSAGES)
    .map(lambda t: (json.dumps({"type": t, "question_id": "q"}), {"unknown_type"})),
    st.sampled_from(sorted(VALID)).flatmap(_wrong_field).map(lambda m: (json.dumps(m), {"invalid_message"})),
    st.integers(MAX_MESSAGE_BYTES, 3 * MAX_MESSAGE_BYTES).map(
        lambda n: (json.dumps({"type": "ping", "pad": "x" * n}), {"message_too_large"})
    ),
    st.binary(max_size=64).map(lambda b: (b, {"binary_not_supported"})),
    # Well formed but impossible: nothing to cancel, no such stream.
    st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).map(
        lambda q: (json.dumps({"type": "question.cancel", "question_id": "gone-" + q}), {"unknown_question"})
    ),
    st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True).map(
        lambda s: (json.dumps({"type": "stream.attach", "stream_id": "nope-" + s}), {"unknown_stream"})
    ),
    st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True).map(
        lambda s: (
            json.dumps({"type": "question.ask", "question_id": "q", "text": "Hi?", "stream_id": "nope-" + s}),
            {"unknown_stream"},
        )
    ),
)


def generated_cases() -> list[tuple[str | bytes, set[str]]]:
    """`EXAMPLES` bad messages from Hypothesis, each with the error codes that are right for it."""
    cases: list[tuple[str | bytes, set[str]]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(bad_messages)
    def collect(case: tuple[str | bytes, set[str]]) -> None:
        cases.append(case)

    collect()
    return cases


def test_every_bad_message_gets_an_error_while_others_and_ingest_carry_on(server: ServerThread) -> None:
    cases = generated_cases()  # before anything is timed: generating them takes seconds of CPU
    context = multiprocessing.get_context("spawn")
    control, child_end = context.Pipe()
    sender = context.Process(target=barrage, args=(ws_url(server), [p for p, _ in cases], child_end), daemon=True)
    sender.start()
    client = ClientLoop()
    stop_pinging = threading.Event()
    try:
        assert control.poll(120) and control.recv() == "ready", "the barrage process did not connect"
        http = client.run(_session())
        bystander = client.run(connect(http, ws_url(server)))
        quiet_rate = ingest_rate(server, WINDOW_FRAMES)
        pinging = asyncio.run_coroutine_threadsafe(keep_pinging(bystander, stop_pinging), client.loop)
        barrage_rate = ingest_rate(server, WINDOW_FRAMES, at_start=lambda: control.send("go"))
        stop_pinging.set()
        control.send("stop")
        assert control.poll(120), "the barrage process did not finish"
        result: BarrageResult = control.recv()
        ping_delays = pinging.result(30)
        answer = client.run(ask(bystander, "b1", "What is on screen?"), timeout=120)
        client.run(http.close())
    finally:
        stop_pinging.set()
        client.close()
        sender.join(10)
        if sender.is_alive():
            sender.terminate()
            sender.join()

    print(
        f"\ningest {quiet_rate:.2f} fps quiet, {barrage_rate:.2f} fps during the barrage "
        f"({barrage_rate / quiet_rate:.0%}); {len(result.replies)} bad messages in {result.seconds:.1f} s; "
        f"bystander ping round trips up to {max(ping_delays) * 1000:.0f} ms"
    )
    assert len(cases) >= 1000 and len(result.replies) >= len(cases)
    codes_seen: set[str] = set()
    for number, reply in enumerate(result.replies):
        payload, codes = cases[number % len(cases)]
        assert reply["type"] == "error" and reply["code"] in codes, (payload[:200], reply)
        assert not any(leak in reply["message"] for leak in LEAKS), reply["message"]
        codes_seen.add(reply["code"])
    assert codes_seen == {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "message_too_large",
        "binary_not_supported",
        "unknown_question",
        "unknown_stream",
    }
    assert result.pong_after is not None and result.pong_after["type"] == "pong"
    assert result.pong_after["reply_to"] == "after", "the barraged connection must still work"
    # Past its burst the connection was read no faster than its message rate, and the metrics say so.
    assert len(result.replies) <= MESSAGE_BURST + MESSAGE_RATE * result.seconds + 1
    registry = server.state.metrics.registry
    assert (registry.get_sample_value("streamer_messages_throttled_total") or 0) > 0
    errors_counted = sum(
        registry.get_sample_value("streamer_protocol_errors_total", {"code": c}) or 0 for c in codes_seen
    )
    assert errors_counted >= len(result.replies)
    assert len(ping_delays) >= WINDOW_FRAMES and max(ping_delays) < 1.0, ping_delays
    assert answer[-1]["type"] == "answer.done" and answer[-1]["text"], "the other client must still get answers"
    # Equal windows of frames, just before and during the barrage, on the same machine.
    assert barrage_rate >= 0.8 * quiet_rate, f"{barrage_rate:.2f} fps vs {quiet_rate:.2f} fps before"


def test_a_message_budget_allows_its_burst_then_its_rate() -> None:
    budget = MessageBudget(rate=100.0, burst=20)
    assert [budget.spend() for _ in range(20)] == [0.0] * 20
    assert budget.spend() > 0
    started, read = time.monotonic(), 21
    while time.monotonic() - started < 0.5:
        time.sleep(budget.spend())
        read += 1
    elapsed = time.monotonic() - started
    # 50 more in 0.5 s; batches of 5 (50 ms of messages) and sleeping late take a few off.
    assert 100.0 * elapsed - 10 <= read - 21 <= 100.0 * elapsed + 1


async def keep_pinging(ws: aiohttp.ClientWebSocketResponse, stop: threading.Event) -> list[float]:
    """Ping every half second until `stop`; the round trips in seconds."""
    delays: list[float] = []
    while not stop.is_set():
        sent = time.monotonic()
        await ws.send_json({"type": "ping", "id": f"b{len(delays)}"})
        pong = await receive(ws, timeout=10)
        assert pong["type"] == "pong" and pong["reply_to"] == f"b{len(delays)}", pong
        delays.append(time.monotonic() - sent)
        await asyncio.sleep(0.5)
    return delays


def ingest_rate(server: ServerThread, frames: int, at_start: Callable[[], None] | None = None) -> float:
    """Frames per second over the next `frames` frames, timed from one frame's arrival to another's.

    at_start: called when the window opens, right after a frame arrived.
    """
    first = frames_ingested(server)
    wait_for_frames(server, first + 1)
    if at_start is not None:
        at_start()
    started = time.monotonic()
    wait_for_frames(server, first + 1 + frames)
    return frames / (time.monotonic() - started)


def test_a_client_that_stops_reading_is_told_and_disconnected(server: ServerThread) -> None:
    """A real socket with a tiny receive buffer that stops reading while the server has a lot to say."""

    def small_buffer_socket(address: Any) -> socket.socket:
        sock = socket.socket(address[0], address[1], address[2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    async def scenario() -> tuple[list[Message], int | None, Message]:
        connector = aiohttp.TCPConnector(socket_factory=small_buffer_socket)
        async with aiohttp.ClientSession(connector=connector) as slow_http, aiohttp.ClientSession() as http:
            other = await connect(http, ws_url(server))
            slow = await connect(slow_http, ws_url(server))
            # Thousands of pongs pile up behind a client that reads nothing.
            for number in range(6000):
                await slow.send_str(json.dumps({"type": "ping", "id": f"p{number}"}))
            await asyncio.sleep(0.5)
            await other.send_json({"type": "ping", "id": "other"})
            other_pong = await receive(other)
            received: list[Message] = []
            while True:
                frame = await slow.receive(timeout=30)
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                received.append(frame.json())
            await other.close()
            return received, slow.close_code, other_pong

    frames_before = frames_ingested(server)
    received, close_code, other_pong = asyncio.run(scenario())
    assert received[-1]["type"] == "error" and received[-1]["code"] == "slow_consumer", received[-3:]
    assert all(m["type"] == "pong" for m in received[:-1])
    assert len(received) - 1 < 6000, "the server must have given up before answering every ping"
    assert close_code == 1013
    assert other_pong["reply_to"] == "other", "other clients are not held up by the slow one"
    wait_for_frames(server, frames_before + 2, timeout=15)  # ingest goes on


def test_a_vanished_client_has_its_question_cancelled(server: ServerThread) -> None:
    sockets: list[socket.socket] = []

    def remembered_socket(address: Any) -> socket.socket:
        sockets.append(socket.socket(address[0], address[1], address[2]))
        return sockets[-1]

    async def scenario() -> tuple[float, float, list[Message]]:
        connector = aiohttp.TCPConnector(socket_factory=remembered_socket)
        async with aiohttp.ClientSession(connector=connector) as vanishing_http, aiohttp.ClientSession() as http:
            gone = await connect(vanishing_http, ws_url(server))
            stays = await connect(http, ws_url(server))
            cancelled_before = _cancelled(server)
            await gone.send_json({"type": "question.ask", "question_id": "v", "text": "Describe the video in detail."})
            await receive_until(gone, lambda m: m["type"] == "answer.delta")
            # Cut the TCP connection without a websocket closing handshake, as a crashed client would.
            sockets[0].shutdown(socket.SHUT_RDWR)
            answer = await ask(stays, "s", "What is on screen?")
            await stays.close()
            return cancelled_before, _cancelled(server), answer

    before, after, answer = asyncio.run(scenario())
    assert after == before + 1, "the vanished client's question must be cancelled, not generated to the end"
    assert answer[-1]["type"] == "answer.done" and answer[-1]["text"]


def _cancelled(server: ServerThread) -> float:
    value = server.state.metrics.registry.get_sample_value("streamer_questions_total", {"outcome": "cancelled"})
    return value or 0.0


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def test_connections_are_limited_per_address_and_in_all_and_idle_ones_are_closed(
    embedded_adapter: EmbeddedAdapter,
) -> None:
    settings = {"port": 0, "max_connections": 3, "max_connections_per_address": 2, "idle_timeout_s": 1.0}
    config = StreamerConfig.model_validate({"server": settings})
    server = ServerThread(create_app(config, lambda: Engine(embedded_adapter))).start()

    async def scenario() -> tuple[int, dict[str, Any], tuple[aiohttp.WSMsgType, Any, Any]]:
        async with aiohttp.ClientSession() as session:
            first = await connect(session, ws_url(server))
            second = await connect(session, ws_url(server))
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(server))
            async with session.get(ws_url(server).replace("ws://", "http://")) as reply:
                body = await reply.json()
            await second.close()
            # An idle connection is closed; a new one from the address is accepted again.
            third = await connect(session, ws_url(server))
            closing = await first.receive(timeout=10)
            await third.close()
            return refused.value.status, body, (closing.type, closing.data, closing.extra)

    try:
        status, body, closing = asyncio.run(scenario())
        endpoint = server.state.websocket
        endpoint.per_address["10.0.0.1"] = 3
        overall = endpoint.refusal("10.0.0.2")
        del endpoint.per_address["10.0.0.1"]
    finally:
        server.stop()
    assert status == 429 and body["error"]["code"] == "too_many_connections"
    assert body["error"]["message"] == "At most 2 connections per address; close one first."
    assert closing == (aiohttp.WSMsgType.CLOSE, 1001, "idle for 1 s")
    assert overall is not None and overall.status == 503
