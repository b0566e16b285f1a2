"""The question desk: answers a client's questions through the hub and streams them back to its session.

An answer runs where the hub runs it (a worker thread, or the worker process holding the stream);
each text delta reaches the event loop, which queues it for its client (`streamer.server.session`),
so a slow or vanished client never holds up generation, ingest or other clients. At most
`max_pending` questions wait or run at once, server-wide; one more gets `server_busy`.
"""

from __future__ import annotations

import asyncio
import logging

from streamer.engine import UnknownStream
from streamer.intent import options_prompt
from streamer.query import Answer
from streamer.server.hub import Hub, StreamRestarting
from streamer.server.metrics import ServerMetrics
from streamer.server.protocol import (
    AnswerDelta,
    AnswerDone,
    AnswerStarted,
    ErrorCode,
    ErrorMessage,
    ProtocolError,
    QuestionAsk,
)
from streamer.server.session import QuestionInFlight, Session

log = logging.getLogger(__name__)


class QuestionDesk:
    """Runs questions through the hub, at most `max_pending` queued or answering at once."""

    def __init__(self, hub: Hub, metrics: ServerMetrics, max_pending: int) -> None:
        self.hub = hub
        self.metrics = metrics
        self.max_pending = max_pending
        self.pending = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def ask(self, session: Session, message: QuestionAsk, stream_id: str) -> None:
        if self.pending >= self.max_pending:
            raise ProtocolError(
                ErrorCode.SERVER_BUSY,
                "The server is answering as many questions as it can; ask again shortly.",
                message.question_id,
            )
        question = QuestionInFlight(message.question_id, stream_id)
        session.questions[question.question_id] = question
        self.pending += 1
        text, options = message.text, message.options
        if options:
            text = options_prompt(text, options)
        task = asyncio.create_task(
            self._answer(session, question, text, options), name=f"answer {question.question_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(
        self, session: Session, question: QuestionInFlight, text: str, options: list[str] | None = None
    ) -> None:
        question_id, stream_id = question.question_id, question.stream_id
        sequence = 0
        answer: Answer | None = None
        try:
            async for item in self.hub.ask(stream_id, text, options, question.cancel):
                if isinstance(item, str):
                    session.send(AnswerDelta(stream_id=stream_id, question_id=question_id, seq=sequence, text=item))
                    sequence += 1
                elif isinstance(item, Answer):
                    answer = item
                else:
                    session.send(AnswerStarted(stream_id=stream_id, question_id=question_id, as_of=item))
        except UnknownStream:
            self.metrics.questions.labels("failed").inc()
            send_error(session, self.metrics, ErrorCode.UNKNOWN_STREAM, no_stream(stream_id), question_id)
        except StreamRestarting:
            self.metrics.questions.labels("failed").inc()
            message = f"The worker holding '{stream_id}' stopped; the stream is coming back, so ask again shortly."
            send_error(session, self.metrics, ErrorCode.STREAM_RESTARTING, message, question_id)
        except Exception:
            log.exception("%s: answering question %s failed", stream_id, question_id)
            self.metrics.questions.labels("failed").inc()
            message = "The answer failed on the server; the server log has the details."
            send_error(session, self.metrics, ErrorCode.INTERNAL_ERROR, message, question_id)
        else:
            session.send(self._done(question, answer))
        finally:
            self.pending -= 1
            session.questions.pop(question_id, None)

    def _done(self, question: QuestionInFlight, answer: Answer | None) -> AnswerDone:
        if answer is None or answer.cancelled:
            self.metrics.questions.labels("cancelled").inc()
        else:
            self.metrics.questions.labels("answered").inc()
            self.metrics.ttft.observe(answer.ttft_ms / 1000)
            self.metrics.latency.observe(answer.latency_ms / 1000)
        if answer is None:
            # Cancelled while waiting for a worker: nothing was generated.
            return AnswerDone(
                stream_id=question.stream_id,
                question_id=question.question_id,
                text="",
                as_of=0.0,
                ttft_ms=0.0,
                latency_ms=0.0,
                evidence=[],
                cancelled=True,
            )
        return AnswerDone(
            stream_id=question.stream_id,
            question_id=question.question_id,
            text=answer.text,
            as_of=answer.as_of,
            ttft_ms=round(answer.ttft_ms, 1),
            latency_ms=round(answer.latency_ms, 1),
            evidence=[(t0, t1) for t0, t1 in answer.evidence],
            cancelled=answer.cancelled,
        )


def send_error(
    session: Session,
    metrics: ServerMetrics,
    code: ErrorCode,
    message: str,
    question_id: str | None = None,
    reply_to: str | None = None,
) -> None:
    metrics.protocol_error(code.value)
    session.send(ErrorMessage(code=code, message=message, question_id=question_id, reply_to=reply_to))


def no_stream(stream_id: str) -> str:
    return f"There is no stream '{stream_id}'; GET /streams lists them."
