"""The websocket protocol: JSON text frames, each an envelope `{type, id, stream_id?, ts}` plus its fields.

Names follow the OpenAI Realtime API where there is an equivalent (`*.delta` / `*.done` pairs, an
`error` with a code). Client messages are parsed strictly (no type coercion, no unknown fields):
a message that is not exactly right gets an `error` naming the problem, and the connection stays
usable. Error messages never echo the client's input beyond ids that match a short pattern.

Client -> server: `question.ask {question_id, text}`, `question.cancel {question_id}`,
`stream.attach` (envelope `stream_id`), `stream.detach`, `watch.create {watch_id, text, every_s?, hold_s?,
cooldown_s?, confirm?, on?}` (envelope `stream_id`), `watch.delete {watch_id}`, `watch.list`, `ping`.
Server -> client: `session.created {session_id, streams}`, `answer.started {question_id, as_of}`,
`answer.delta {question_id, seq, text}`, `answer.done {question_id, text, as_of, ttft_ms,
latency_ms, evidence, cancelled}`, `stream.status {state, fps, lag_ms, frames_dropped, ...}`,
`watch.created {watch_id}`, `watch.deleted {watch_id}`, `watch.listed {watches}`, `watch.event {watch_id,
event_id, phase, t_onset, t_detected, as_of, p_yes, text, evidence}` (to every connection attached to the
watch's stream), `error {code, message, question_id?, reply_to?}`, `pong`.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from enum import StrEnum
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamer.errors import first_problem
from streamer.server.config import STREAM_ID_PATTERN

QUESTION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MAX_QUESTION_CHARS = 2000
MAX_OPTIONS = 8
MAX_OPTION_CHARS = 200
_ID = re.compile(QUESTION_ID_PATTERN)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    MESSAGE_TOO_LARGE = "message_too_large"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    NOT_READY = "not_ready"
    UNKNOWN_STREAM = "unknown_stream"
    NO_STREAM = "no_stream"
    DUPLICATE_QUESTION = "duplicate_question"
    UNKNOWN_QUESTION = "unknown_question"
    TOO_MANY_QUESTIONS = "too_many_questions"
    SERVER_BUSY = "server_busy"
    SLOW_CONSUMER = "slow_consumer"
    UNKNOWN_WATCH = "unknown_watch"
    DUPLICATE_WATCH = "duplicate_watch"
    TOO_MANY_WATCHES = "too_many_watches"
    WEBHOOK_NOT_ALLOWED = "webhook_not_allowed"
    STREAM_RESTARTING = "stream_restarting"
    INTERNAL_ERROR = "internal_error"


class ProtocolError(Exception):
    """A client message that cannot be carried out; becomes an `error` message to that client."""

    def __init__(
        self, code: ErrorCode, message: str, question_id: str | None = None, reply_to: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.question_id = question_id
        self.reply_to = reply_to


# Client messages


class ClientMessage(BaseModel):
    """The envelope every client message carries; `id` comes back as `reply_to` on an error."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: str
    id: str | None = Field(None, pattern=QUESTION_ID_PATTERN)
    stream_id: str | None = Field(None, pattern=STREAM_ID_PATTERN)
    ts: float | None = None


class QuestionAsk(ClientMessage):
    """A question; with `options` it is multiple choice: the options are listed after the text for the model,
    and the answer is the chosen one, "<letter>. <option>"."""

    type: Literal["question.ask"]
    question_id: str = Field(pattern=QUESTION_ID_PATTERN)
    text: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    options: list[str] | None = Field(None, min_length=2, max_length=MAX_OPTIONS)

    @field_validator("text")
    @classmethod
    def _readable(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the question is blank")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the question is not valid Unicode text") from None
        return text

    @field_validator("options")
    @classmethod
    def _short_options(cls, options: list[str] | None) -> list[str] | None:
        if options is not None and any(not option.strip() or len(option) > MAX_OPTION_CHARS for option in options):
            raise ValueError(f"each option must be text of 1 to {MAX_OPTION_CHARS} characters")
        return options


class QuestionCancel(ClientMessage):
    type: Literal["question.cancel"]
    question_id: str = Field(pattern=QUESTION_ID_PATTERN)


class StreamAttach(ClientMessage):
    """Receive `stream.status` for `stream_id`; questions without a stream_id go to the last attached stream."""

    type: Literal["stream.attach"]

    @model_validator(mode="after")
    def _names_a_stream(self) -> StreamAttach:
        if self.stream_id is None:
            raise ValueError("stream.attach needs a stream_id")
        return self


class StreamDetach(ClientMessage):
    """Stop `stream.status` for `stream_id`, or for every stream when it is left out."""

    type: Literal["stream.detach"]


class WatchFields(BaseModel):
    """What a standing question looks for and how its checks become episodes (`streamer.watches.WatchSpec`)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    every_s: float = Field(5.0, gt=0, le=3600)
    hold_s: float = Field(2.0, ge=0, le=3600)
    cooldown_s: float = Field(10.0, ge=0, le=86400)
    confirm: int = Field(2, ge=1, le=100)
    on: float = Field(0.9, gt=0, le=1, description="p_yes at which an episode starts")
    webhook: str | None = Field(None, max_length=2000, description="POST each event here (server.webhook_urls)")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the watch's text is blank")
        return text


class WatchCreate(ClientMessage, WatchFields):
    """A standing question on `stream_id` (`streamer.watches`); it belongs to the stream, not the connection."""

    type: Literal["watch.create"]
    watch_id: str = Field(pattern=QUESTION_ID_PATTERN)

    @model_validator(mode="after")
    def _names_a_stream(self) -> WatchCreate:
        if self.stream_id is None:
            raise ValueError("watch.create needs a stream_id")
        return self


class WatchDelete(ClientMessage):
    type: Literal["watch.delete"]
    watch_id: str = Field(pattern=QUESTION_ID_PATTERN)


class WatchList(ClientMessage):
    """The watches of `stream_id`, or of every stream when it is left out."""

    type: Literal["watch.list"]


class Ping(ClientMessage):
    type: Literal["ping"]


CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    "question.ask": QuestionAsk,
    "question.cancel": QuestionCancel,
    "stream.attach": StreamAttach,
    "stream.detach": StreamDetach,
    "watch.create": WatchCreate,
    "watch.delete": WatchDelete,
    "watch.list": WatchList,
    "ping": Ping,
}


def parse_client_message(data: str, max_bytes: int) -> ClientMessage:
    """The typed message in one websocket text frame; raises ProtocolError saying what is wrong."""
    if len(data) > max_bytes or len(data.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, f"Messages are limited to {max_bytes} bytes.")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "The message is not valid JSON.") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, 'A message must be a JSON object with a "type" field.')
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, 'A message needs a "type" field holding a string.')
    model = CLIENT_MESSAGES.get(kind)
    if model is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"Unknown message type; send one of: {', '.join(sorted(CLIENT_MESSAGES))}."
        )
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            _field_sentence(kind, error),
            question_id=_echoable(raw.get("question_id")),
            reply_to=_echoable(raw.get("id")),
        ) from None


def _field_sentence(kind: str, error: ValidationError) -> str:
    problem = first_problem(error)
    if problem.unknown:
        # The name comes from the client: repeat it only when it is short and plain.
        named = f"'{problem.field}'" if _PLAIN_NAME.fullmatch(problem.field) else "a field"
        return f"{kind}: {named} is not a field of this message."
    if problem.field:
        return f"{kind}: field '{problem.field}': {problem.message}."
    return f"{kind}: {problem.message}."


def _echoable(value: Any) -> str | None:
    """An id from a rejected message, when it is short and plain enough to send back."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    return None


# Server messages


# Event ids: a random prefix per process and a counter, unique without a system call per message.
_EVENT_PREFIX = f"evt_{secrets.token_hex(4)}"
_event_numbers = itertools.count()


def _event_id() -> str:
    return f"{_EVENT_PREFIX}{next(_event_numbers):08x}"


class ServerMessage(BaseModel):
    type: str
    id: str = Field(default_factory=_event_id)
    stream_id: str | None = None
    ts: float = Field(default_factory=time.time)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class SessionCreated(ServerMessage):
    type: Literal["session.created"] = "session.created"
    session_id: str
    streams: list[str]


class AnswerStarted(ServerMessage):
    """as_of: stream time of the newest frame in the memory snapshot the answer reads; answer.done
    carries the same value. Sent once the snapshot is taken, before generation: before any delta."""

    type: Literal["answer.started"] = "answer.started"
    question_id: str
    as_of: float


class AnswerDelta(ServerMessage):
    """seq counts 0, 1, 2, ... per question; joining the texts in order gives the answer."""

    type: Literal["answer.delta"] = "answer.delta"
    question_id: str
    seq: int
    text: str


class AnswerDone(ServerMessage):
    """as_of: stream time of the newest frame the answer read. evidence: [[t0, t1], ...] stream times."""

    type: Literal["answer.done"] = "answer.done"
    question_id: str
    text: str
    as_of: float
    ttft_ms: float
    latency_ms: float
    evidence: list[tuple[float, float]]
    cancelled: bool = False


class StreamStatusMessage(ServerMessage):
    """fps: frames ingested per second lately; lag_ms: capture-to-memory delay of the newest frame."""

    type: Literal["stream.status"] = "stream.status"
    state: str
    reason: str | None = None
    fps: float
    lag_ms: float
    frames_ingested: int
    frames_dropped: int


class WatchCreated(ServerMessage):
    type: Literal["watch.created"] = "watch.created"
    watch_id: str
    reply_to: str | None = None


class WatchDeleted(ServerMessage):
    type: Literal["watch.deleted"] = "watch.deleted"
    watch_id: str
    reply_to: str | None = None


class WatchSummary(BaseModel):
    watch_id: str
    stream_id: str
    text: str
    every_s: float
    hold_s: float
    cooldown_s: float
    confirm: int
    on: float
    checks: int
    active: bool


class WatchListed(ServerMessage):
    type: Literal["watch.listed"] = "watch.listed"
    watches: list[WatchSummary]
    reply_to: str | None = None


class WatchEventMessage(ServerMessage):
    """An episode of a watch started or ended. t_onset: stream time of its first frame; t_detected: stream
    time of the check that fired; evidence: [[t0, t1], ...] stream times of the frames that show it."""

    type: Literal["watch.event"] = "watch.event"
    watch_id: str
    event_id: str
    phase: Literal["start", "end"]
    t_onset: float
    t_detected: float
    as_of: float
    p_yes: float
    text: str
    evidence: list[tuple[float, float]]


class ErrorMessage(ServerMessage):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    question_id: str | None = None
    reply_to: str | None = None


class Pong(ServerMessage):
    type: Literal["pong"] = "pong"
    reply_to: str | None = None


def http_error(status: int, code: str, message: str) -> web.Response:
    """An HTTP error as the API sends every one: `{"error": {"code", "message"}}`."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
