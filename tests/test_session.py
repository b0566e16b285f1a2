"""One connection's outgoing queue: messages in order, status updates dropped first when the client lags, a
client too slow for its answers told so and closed with its questions cancelled, attach order."""

from __future__ import annotations

import asyncio
import json

from streamer.server.protocol import AnswerDelta, Pong, StreamStatusMessage
from streamer.server.session import CLOSE_TOO_SLOW, QuestionInFlight, Session


class Client:
    """Stands in for the socket: records what is sent and how the connection was closed; can stop reading."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.closed: tuple[int, str] | None = None
        self.reading = asyncio.Event()
        self.reading.set()

    async def send(self, text: str) -> None:
        await self.reading.wait()
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def _status(frames: int) -> StreamStatusMessage:
    return StreamStatusMessage(
        stream_id="s", state="live", fps=1.0, lag_ms=0.0, frames_ingested=frames, frames_dropped=0
    )


def test_messages_reach_the_client_in_order() -> None:
    async def scenario() -> Client:
        client = Client()
        session = Session(client.send, client.close, queue_messages=8)
        session.start()
        for seq in range(3):
            session.send(AnswerDelta(question_id="q", seq=seq, text=str(seq)))
        session.send(Pong())
        await asyncio.sleep(0.05)
        await session.close(1000, "bye")
        return client

    client = asyncio.run(scenario())
    assert [m.get("seq") for m in client.sent] == [0, 1, 2, None] and client.closed == (1000, "bye")


def test_a_lagging_client_loses_status_updates_first() -> None:
    async def scenario() -> tuple[list[bool], Client]:
        client = Client()
        client.reading.clear()  # stops reading
        session = Session(client.send, client.close, queue_messages=8)
        session.start()
        await asyncio.sleep(0)
        kept = [session.send_status(_status(frames)) for frames in range(6)]
        client.reading.set()
        await asyncio.sleep(0.05)
        await session.close()
        return kept, client

    kept, client = asyncio.run(scenario())
    assert kept.count(True) >= 4 and not kept[-1], "dropped once the queue is half full"
    assert [m["frames_ingested"] for m in client.sent] == [i for i, k in enumerate(kept) if k]


def test_a_client_too_slow_for_its_answers_is_told_and_closed() -> None:
    async def scenario() -> tuple[Client, Session, QuestionInFlight]:
        client = Client()
        client.reading.clear()
        session = Session(client.send, client.close, queue_messages=4)
        question = QuestionInFlight("q", "s")
        session.questions["q"] = question
        session.start()
        await asyncio.sleep(0)
        for seq in range(8):
            session.send(AnswerDelta(question_id="q", seq=seq, text="x"))
        client.reading.set()
        await asyncio.sleep(0.1)
        return client, session, question

    client, session, question = asyncio.run(scenario())
    assert session.too_slow and not session.open and question.cancel.is_set()
    assert client.sent[-1]["code"] == "slow_consumer" and client.closed is not None
    assert client.closed[0] == CLOSE_TOO_SLOW


def test_the_last_attached_stream_is_the_default() -> None:
    async def scenario() -> Session:
        client = Client()
        return Session(client.send, client.close, queue_messages=4)

    session = asyncio.run(scenario())
    for stream_id in ("a", "b", "a"):
        session.attach(stream_id)
    assert session.attached == ["b", "a"]
    session.detach("a")
    assert session.attached == ["b"]
    session.detach(None)
    assert session.attached == []
