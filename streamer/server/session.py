"""One websocket connection: its questions in flight, the streams it watches, and its outgoing queue.

Messages to a client go through a bounded queue that one writer task drains, so whoever produces a
message (an answer thread, the status ticker) never waits on that client's network. When the queue
fills up, `stream.status` updates are dropped (the next one supersedes them), but answer deltas,
answers and errors never are: a client too slow for them is told so and disconnected, and its
questions are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from streamer.server.protocol import ErrorCode, ErrorMessage, ServerMessage

log = logging.getLogger(__name__)

# Close code 1013 "try again later": the server gave up on a client that does not keep up.
CLOSE_TOO_SLOW = 1013
# How long a client that stopped reading gets to take the error saying so before it is cut off.
SLOW_CLIENT_GRACE_S = 2.0

Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


@dataclass
class QuestionInFlight:
    """A question accepted on this connection; `cancel` stops its generation."""

    question_id: str
    stream_id: str
    cancel: threading.Event = field(default_factory=threading.Event)


class Session:
    """The server's side of one websocket client.

    send: writes one text frame to the client (may wait for the network).
    close: closes the connection with a code and a reason.
    queue_messages: messages that may wait for the client before it counts as too slow.
    """

    def __init__(self, send: Send, close: Close, queue_messages: int) -> None:
        self.session_id = f"sess_{uuid.uuid4().hex[:16]}"
        self.questions: dict[str, QuestionInFlight] = {}
        self.attached: list[str] = []
        self.too_slow = False
        self._send = send
        self._close = close
        self._queue: asyncio.Queue[ServerMessage] = asyncio.Queue(queue_messages)
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._gone = asyncio.Event()

    @property
    def open(self) -> bool:
        return not self._closing

    def start(self) -> None:
        """Start writing queued messages to the client (on the running event loop)."""
        self._writer = asyncio.create_task(self._write(), name=f"writer {self.session_id}")

    def send(self, message: ServerMessage) -> None:
        """Queue `message` for the client; a client whose queue is full is disconnected as too slow."""
        if self._closing:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._give_up_on_slow_client()

    def send_status(self, message: ServerMessage) -> bool:
        """Queue a status update unless the queue is half full; False when it was dropped."""
        if self._closing or self._queue.qsize() >= self._queue.maxsize // 2:
            return False
        self._queue.put_nowait(message)
        return True

    def attach(self, stream_id: str) -> None:
        """Watch `stream_id`; it also becomes the stream for questions that name none."""
        if stream_id in self.attached:
            self.attached.remove(stream_id)
        self.attached.append(stream_id)

    def detach(self, stream_id: str | None) -> None:
        if stream_id is None:
            self.attached.clear()
        elif stream_id in self.attached:
            self.attached.remove(stream_id)

    def cancel_questions(self) -> None:
        for question in self.questions.values():
            question.cancel.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Stop writing, cancel this client's questions and close the connection."""
        if self._closing:
            await self._gone.wait()
            return
        self._closing = True
        self.cancel_questions()
        await self._stop_writer()
        try:
            await self._close(code, reason)
        finally:
            self._gone.set()

    def _give_up_on_slow_client(self) -> None:
        log.warning("%s: client is not reading its messages; disconnecting it", self.session_id)
        self.too_slow = True
        self._closing = True
        self.cancel_questions()
        asyncio.get_running_loop().create_task(self._disconnect_slow())

    async def _disconnect_slow(self) -> None:
        await self._stop_writer()
        error = ErrorMessage(
            code=ErrorCode.SLOW_CONSUMER,
            message="This client did not read its messages fast enough, so the server closed the connection.",
        )
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self._send(error.to_json()), SLOW_CLIENT_GRACE_S)
        try:
            await self._close(CLOSE_TOO_SLOW, "client too slow")
        finally:
            self._gone.set()

    async def _stop_writer(self) -> None:
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write(self) -> None:
        try:
            while True:
                message = await self._queue.get()
                await self._send(message.to_json())
        except ConnectionError as error:
            # The client went away mid-write: nothing more can reach it.
            log.info("%s: connection lost while sending (%s)", self.session_id, error.__class__.__name__)
            self._closing = True
            self.cancel_questions()
            self._gone.set()
