"""The `/ws` endpoint: reads client messages, carries them out, and streams answers back.

Every message is handled at once on the event loop: parsing and bookkeeping are cheap, and answers
are generated on worker threads by the question desk (`streamer.server.desk`). A malformed message
gets an `error` and the connection stays open.

Each message still costs the server about 0.2 ms of CPU (websocket framing, parsing, the reply and
its system call), and on a small machine ingest feels every core-share taken from it. So each
connection has a message budget (`MessageBudget`): past a burst, its messages are read no faster
than its rate, and a client that floods the socket waits on TCP instead of taking the CPU. Nothing
is dropped and every message is still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from streamer.server.desk import QuestionDesk, no_stream, send_error
from streamer.server.hub import Hub, StreamReport
from streamer.server.metrics import ServerMetrics
from streamer.server.protocol import (
    ClientMessage,
    ErrorCode,
    Ping,
    Pong,
    ProtocolError,
    QuestionAsk,
    QuestionCancel,
    SessionCreated,
    StreamAttach,
    StreamDetach,
    StreamStatusMessage,
    WatchCreate,
    WatchCreated,
    WatchDelete,
    WatchDeleted,
    WatchEventMessage,
    WatchList,
    WatchListed,
    http_error,
    parse_client_message,
)
from streamer.server.session import Session
from streamer.server.watching import WatchRefused, Webhooks, create_watch, watch_summary
from streamer.watches import WatchEvent

if TYPE_CHECKING:
    from streamer.server.config import ServerConfig

log = logging.getLogger(__name__)

# Messages up to this size are read and answered with an error when over the configured limit;
# beyond it the websocket layer closes the connection (code 1009) without reading them.
HARD_MESSAGE_LIMIT = 1 << 20
# How long closing a connection may take before the socket is cut.
CLOSE_TIMEOUT_S = 2.0
CLOSE_GOING_AWAY = 1001


class MessageBudget:
    """A token bucket: `burst` messages at once, then `rate` a second on average.

    Once the budget is spent, the wait lasts until a batch of BATCH_S seconds' worth of messages
    is allowed again rather than one message's worth: the same average rate, but the loop sleeps
    and wakes a few times a second instead of once per message.
    """

    BATCH_S = 0.05

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.batch = min(self.burst, max(1.0, rate * self.BATCH_S))
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def spend(self) -> float:
        """Take one message from the budget; the seconds to wait before reading the next one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate) - 1.0
        self.updated = now
        return 0.0 if self.tokens >= 0 else (self.batch - self.tokens - 1.0) / self.rate


class WebsocketEndpoint:
    """Serves `/ws`. `hub` and `desk` return None until the model is ready."""

    def __init__(
        self,
        hub: Callable[[], Hub | None],
        desk: Callable[[], QuestionDesk | None],
        metrics: ServerMetrics,
        settings: ServerConfig,
    ) -> None:
        self.hub = hub
        self.desk = desk
        self.metrics = metrics
        self.max_message_bytes = settings.max_message_bytes
        self.queue_messages = settings.queue_messages
        self.max_questions = settings.max_questions_per_connection
        self.max_messages_per_s = settings.max_messages_per_s
        self.message_burst = settings.message_burst
        self.max_connections = settings.max_connections
        self.max_connections_per_address = settings.max_connections_per_address
        self.max_watches = settings.max_watches_per_stream
        self.webhooks = Webhooks(settings.webhook_urls)
        self.idle_timeout_s = settings.idle_timeout_s
        self.sessions: set[Session] = set()
        self.per_address: Tally[str] = Tally()

    def refusal(self, address: str) -> web.Response | None:
        """The answer to a connection the limits do not allow, before the upgrade; None to accept it."""
        if self.per_address.total() >= self.max_connections:
            return http_error(
                503,
                "too_many_connections",
                f"This server holds at most {self.max_connections} connections; retry later.",
            )
        if self.per_address[address] >= self.max_connections_per_address:
            return http_error(
                429,
                "too_many_connections",
                f"At most {self.max_connections_per_address} connections per address; close one first.",
            )
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "unknown"
        refused = self.refusal(address)
        if refused is not None:
            return refused
        self.per_address[address] += 1  # counted from here, so upgrades at the same moment cannot overrun
        released = False

        def release() -> None:
            # Once, as soon as the connection is closing: a client that closed one may open another at once.
            nonlocal released
            if not released:
                released = True
                self.per_address[address] -= 1
                if self.per_address[address] <= 0:
                    del self.per_address[address]

        try:
            return await self._serve(request, release)
        finally:
            release()

    async def _serve(self, request: web.Request, release: Callable[[], None]) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_LIMIT, heartbeat=30.0)
        await ws.prepare(request)

        async def close(code: int, reason: str) -> None:
            try:
                await asyncio.wait_for(ws.close(code=code, message=reason.encode()), CLOSE_TIMEOUT_S)
            except TimeoutError:
                # The client stopped reading, so the closing handshake cannot finish: cut the socket.
                if request.transport is not None:
                    request.transport.abort()

        session = Session(ws.send_str, close, self.queue_messages)
        self.sessions.add(session)
        self.metrics.connections.inc()
        session.start()
        hub = self.hub()
        session.send(SessionCreated(session_id=session.session_id, streams=hub.stream_ids() if hub else []))
        budget = MessageBudget(self.max_messages_per_s, self.message_burst)
        try:
            while True:
                try:
                    frame = await ws.receive(timeout=self.idle_timeout_s)
                except TimeoutError:
                    if session.questions:  # waiting for an answer is not idling
                        continue
                    await session.close(CLOSE_GOING_AWAY, f"idle for {self.idle_timeout_s:g} s")
                    break
                if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if not session.open:
                    break
                if frame.type == WSMsgType.TEXT:
                    await self.receive(session, frame.data)
                elif frame.type == WSMsgType.BINARY:
                    send_error(
                        session, self.metrics, ErrorCode.BINARY_NOT_SUPPORTED, "Send messages as JSON text frames."
                    )
                wait = budget.spend()
                if wait > 0:
                    # aiohttp stops reading the socket once its buffer is full, so the client waits on TCP.
                    self.metrics.messages_throttled.inc()
                    await asyncio.sleep(wait)
        finally:
            release()
            self.sessions.discard(session)
            self.metrics.connections.dec()
            if session.too_slow:
                self.metrics.slow_clients.inc()
            await session.close()
        return ws

    async def receive(self, session: Session, data: str) -> None:
        """Carry out one text frame, answering a problem with an `error`."""
        message: ClientMessage | None = None
        try:
            message = parse_client_message(data, self.max_message_bytes)
            await self.dispatch(session, message)
        except ProtocolError as error:
            reply_to = error.reply_to if message is None else message.id
            send_error(session, self.metrics, error.code, error.message, error.question_id, reply_to)

    async def dispatch(self, session: Session, message: ClientMessage) -> None:
        if isinstance(message, Ping):
            session.send(Pong(reply_to=message.id))
            return
        if isinstance(message, StreamDetach):
            session.detach(message.stream_id)
            return
        hub, desk = self.hub(), self.desk()
        question_id = getattr(message, "question_id", None)
        if hub is None or desk is None:
            raise ProtocolError(
                ErrorCode.NOT_READY, "The model is still loading; try again when /health/ready says ready.", question_id
            )
        if isinstance(message, StreamAttach):
            assert message.stream_id is not None  # checked when parsed
            if not hub.has(message.stream_id):
                raise ProtocolError(ErrorCode.UNKNOWN_STREAM, no_stream(message.stream_id))
            session.attach(message.stream_id)
            with contextlib.suppress(KeyError):  # removed meanwhile: no status to send
                session.send_status(stream_status(await hub.report(message.stream_id)))
        elif isinstance(message, QuestionCancel):
            question = session.questions.get(message.question_id)
            if question is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_QUESTION,
                    "No question with this question_id is in flight on this connection.",
                    message.question_id,
                )
            question.cancel.set()
        elif isinstance(message, QuestionAsk):
            self._ask(session, hub, desk, message)
        elif isinstance(message, WatchCreate | WatchDelete | WatchList):
            await self._watch(session, hub, message)

    async def _watch(self, session: Session, hub: Hub, message: WatchCreate | WatchDelete | WatchList) -> None:
        """Watches are cheap to add and remove (no model pass): carried out before the next message is read."""
        if isinstance(message, WatchList):
            if message.stream_id is not None and not hub.has(message.stream_id):
                raise ProtocolError(ErrorCode.UNKNOWN_STREAM, no_stream(message.stream_id))
            watches = [watch_summary(info) for info in await hub.watches(message.stream_id)]
            session.send(WatchListed(stream_id=message.stream_id, watches=watches, reply_to=message.id))
        elif isinstance(message, WatchDelete):
            if not await hub.remove_watch(message.watch_id):
                raise ProtocolError(ErrorCode.UNKNOWN_WATCH, "No watch has this watch_id; watch.list lists them.")
            self.webhooks.urls.pop(message.watch_id, None)
            session.send(WatchDeleted(watch_id=message.watch_id, reply_to=message.id))
        else:
            stream_id = message.stream_id
            assert stream_id is not None  # checked when parsed
            try:
                await create_watch(hub, stream_id, message, message.watch_id, self.max_watches, self.webhooks)
            except WatchRefused as refused:
                raise ProtocolError(refused.code, refused.message) from None
            session.attach(stream_id)  # the creator hears the watch's events
            session.send(WatchCreated(stream_id=stream_id, watch_id=message.watch_id, reply_to=message.id))

    def watch_event(self, event: WatchEvent) -> None:
        """Send a watch's event to every connection attached to its stream (call on the event loop)."""
        self.webhooks.send(event)
        message = WatchEventMessage.model_validate(dataclasses.asdict(event))
        for session in list(self.sessions):
            if event.stream_id in session.attached:
                session.send(message)

    def _ask(self, session: Session, hub: Hub, desk: QuestionDesk, message: QuestionAsk) -> None:
        question_id = message.question_id
        stream_id = message.stream_id or (session.attached[-1] if session.attached else None)
        streams = hub.stream_ids()
        if stream_id is None and len(streams) == 1:
            stream_id = streams[0]
        if stream_id is None:
            raise ProtocolError(
                ErrorCode.NO_STREAM, "Say which stream the question is about: set stream_id.", question_id
            )
        if not hub.has(stream_id):
            raise ProtocolError(ErrorCode.UNKNOWN_STREAM, no_stream(stream_id), question_id)
        if question_id in session.questions:
            raise ProtocolError(
                ErrorCode.DUPLICATE_QUESTION, "A question with this question_id is already in flight.", question_id
            )
        if len(session.questions) >= self.max_questions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_QUESTIONS,
                f"At most {self.max_questions} questions may be in flight per connection; wait for an answer.",
                question_id,
            )
        desk.ask(session, message, stream_id)

    async def broadcast_status(self) -> None:
        """Send `stream.status` to every client for each stream it is attached to."""
        hub = self.hub()
        if hub is None:
            return
        attached = {stream_id for session in self.sessions for stream_id in session.attached}
        if not attached:
            return
        reports = await hub.reports(sorted(attached))
        statuses = {stream_id: stream_status(report) for stream_id, report in reports.items()}
        for session in list(self.sessions):
            for stream_id in session.attached:
                if stream_id in statuses and not session.send_status(statuses[stream_id]):
                    self.metrics.status_dropped.inc()

    async def close_all(self, code: int, reason: str) -> None:
        await asyncio.gather(*(session.close(code, reason) for session in list(self.sessions)))


def stream_status(report: StreamReport) -> StreamStatusMessage:
    described = report.as_json()
    return StreamStatusMessage(
        stream_id=report.stream_id,
        state=described["state"],
        reason=described["reason"],
        fps=described["ingest_fps"],
        lag_ms=described["lag_ms"],
        frames_ingested=described["frames_ingested"],
        frames_dropped=described["frames_dropped"],
    )
