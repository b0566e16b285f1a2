"""The aiohttp application: `/ws`, health, metrics, streams, previews, timelines and the web page.

The HTTP side is up at once (liveness); the model loads and warms up in the background, and
`/health/ready` turns 200 when questions can be answered. A token, when configured, is required for
everything but the health checks and the page's static files, as `Authorization: Bearer <token>` or
`?token=<token>` (browsers cannot set headers on websockets or images). Requests from a web page of
another origin are refused, so a page on the internet cannot drive a server on localhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sources.base import Source
from sources.frame import Frame, SourceError
from sources.open import source_kind
from sources.webrtc import OfferHandler
from streamer.engine import Engine
from streamer.engine_config import DEFAULT_FPS
from streamer.errors import USER_ERRORS
from streamer.server.config import STREAM_ID_PATTERN, StreamerConfig, validation_sentence
from streamer.server.desk import QuestionDesk
from streamer.server.guards import (
    SESSION_COOKIE,
    ApiError,
    check_api_source,
    errors_as_json,
    known_host,
    same_origin,
    token_check,
    unopenable_file,
)
from streamer.server.hub import Hub, StreamExists
from streamer.server.metrics import CONTENT_TYPE, ServerMetrics
from streamer.server.streams import LocalHub
from streamer.server.watching import add_watch_routes
from streamer.server.websocket import CLOSE_GOING_AWAY, WebsocketEndpoint
from streamer.watches import WatchSpec

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Close code 1001 "going away": the server is shutting down.
_TIMELINE_LIMIT = 2000

T = TypeVar("T")


@dataclass
class InitialStream:
    """A stream the server starts with: opened before the server starts (so a bad source fails before
    the model loads), or, where the streams run in other processes, only named by `url` (opened there)."""

    stream_id: str
    source: Source | None
    fps: float | None
    watches: Sequence[tuple[str, WatchSpec, str | None]] = ()  # (watch id, spec, webhook): from the start
    url: str = ""
    loop: bool = False


# Builds the hub once the server listens: the local engine's, or one that reaches other processes.
HubFactory = Callable[[], Awaitable[Hub]]


class StreamRequest(BaseModel):
    """The body of `POST /streams`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = Field(min_length=1, max_length=2048)
    stream_id: str | None = Field(None, pattern=STREAM_ID_PATTERN)
    fps: float = Field(DEFAULT_FPS, gt=0, le=60)
    loop: bool = False


class ServerState:
    """Everything one running server holds; the model side is None until loaded."""

    def __init__(
        self,
        config: StreamerConfig,
        load_engine: Callable[[], Engine] | None,
        initial: Sequence[InitialStream],
        make_hub: HubFactory | None = None,
    ) -> None:
        self.config = config
        self.load_engine = load_engine
        self.make_hub = make_hub or self._local_hub
        self.initial = list(initial)
        self.allowed_hosts = config.server.allowed_host_names()
        self.hub: Hub | None = None
        # The streams the operator configured (command line, config file): clients may not remove them.
        self.operator_streams = {stream.stream_id for stream in initial}
        self.desk: QuestionDesk | None = None
        self.failure: str | None = None
        self.started = asyncio.Event()
        self.metrics = ServerMetrics()
        server = config.server
        self.answer_executor = ThreadPoolExecutor(server.answer_workers, thread_name_prefix="answer")
        # Opening a client's source may hang (a camera that never answers): never on the ingest threads.
        self.open_executor = ThreadPoolExecutor(2, thread_name_prefix="open")
        self.websocket = WebsocketEndpoint(lambda: self.hub, lambda: self.desk, self.metrics, server)
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def engine(self) -> Engine | None:
        """The engine, when this process runs it (None while loading, or when workers elsewhere do)."""
        return self.hub.engine if isinstance(self.hub, LocalHub) else None

    async def _local_hub(self) -> Hub:
        """Load and warm up the model in this process."""
        assert self.load_engine is not None, "a server without a hub factory loads its own engine"
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(None, self.load_engine)
        await loop.run_in_executor(None, warm_up, engine)
        server = self.config.server
        return LocalHub(engine, None, self.answer_executor, self.open_executor, server.source_open_timeout_s)

    async def start(self) -> None:
        """Load and warm up the model, then start the initial streams; records a failure instead of raising."""
        try:
            hub = await self.make_hub()
            hub.on_watch_event(self.websocket.watch_event)
            try:
                while self.initial:
                    stream = self.initial.pop(0)
                    watches = [(watch_id, spec) for watch_id, spec, _ in stream.watches]
                    fps = stream.fps or DEFAULT_FPS
                    try:
                        await hub.add_stream(stream.stream_id, stream.url, fps, stream.loop, stream.source, watches)
                    except StreamExists:  # a cluster that kept serving it while this server was down
                        log.info("%s: already served; kept as it is", stream.stream_id)
                    for watch_id, _, webhook in stream.watches:
                        if webhook is not None:
                            self.websocket.webhooks.urls[watch_id] = webhook
            except BaseException:
                await hub.close()
                raise
            self.hub = hub
            self.desk = QuestionDesk(hub, self.metrics, self.config.server.max_pending_questions)
            self.metrics.ready.set(1)
            log.info("model %s ready; serving %d stream(s)", hub.model_name, len(hub.stream_ids()))
        except Exception as error:
            self.failure = str(error) or error.__class__.__name__
            log.error("the server cannot start: %s", self.failure, exc_info=not isinstance(error, USER_ERRORS))
        finally:
            self.started.set()

    async def add_browser_stream(self, stream_id: str, source: Source) -> None:
        """Ingest a browser's webcam that arrived over WebRTC; ValueError refuses the offer."""
        if self.hub is None:
            raise ValueError("The model is still loading; try again when /health/ready is 200.")
        if not re.fullmatch(STREAM_ID_PATTERN, stream_id):
            raise ValueError("A stream_id is 1-64 letters, digits, '_', '.' or '-'; pick another.")
        if len(self.hub.stream_ids()) >= self.config.server.max_streams:
            raise ValueError(f"This server ingests at most {self.config.server.max_streams} streams; remove one first.")
        await self.hub.add_stream(stream_id, source.name, DEFAULT_FPS, source=source)

    async def tick_status(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.status_interval_s)
            try:
                await self.websocket.broadcast_status()
            except Exception:  # a stream's process may be restarting: the next tick tries again
                log.warning("stream status could not be read", exc_info=True)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.websocket.close_all(CLOSE_GOING_AWAY, "server shutting down")
        if self.desk is not None:
            for task in list(self.desk.tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.websocket.webhooks.close()
        if self.hub is not None:
            await self.hub.close()
        for stream in self.initial:
            if stream.source is not None:
                stream.source.close()
        self.answer_executor.shutdown(wait=False, cancel_futures=True)
        self.open_executor.shutdown(wait=False, cancel_futures=True)


STATE = web.AppKey("state", ServerState)


def create_app(
    config: StreamerConfig,
    load_engine: Callable[[], Engine] | None,
    initial: Sequence[InitialStream] = (),
    make_hub: HubFactory | None = None,
) -> web.Application:
    """The application; `load_engine` runs on a worker thread once the server is listening.

    `make_hub`, when given, builds the hub instead (the streams then run where it says, e.g. on Ray
    workers) and `load_engine` is not used.
    """
    config.check_exposure()
    state = ServerState(config, load_engine, initial, make_hub)
    app = web.Application(
        middlewares=[
            errors_as_json,
            known_host(lambda: state.allowed_hosts),
            same_origin,
            token_check(lambda: config.server.token),
        ],
        client_max_size=64 * 1024,
    )
    app[STATE] = state
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/", _index)
    app.router.add_post("/session", _session)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/health/live", _live)
    app.router.add_get("/health/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/streams", _list_streams)
    app.router.add_post("/streams", _add_stream)
    app.router.add_get("/streams/{stream_id}", _get_stream)
    app.router.add_delete("/streams/{stream_id}", _remove_stream)
    app.router.add_get("/streams/{stream_id}/preview.jpg", _preview)
    app.router.add_get("/streams/{stream_id}/timeline", _timeline)
    add_watch_routes(app.router, _ready_hub, config.server.max_watches_per_stream, state.websocket.webhooks)
    app.router.add_get("/ws", state.websocket.handle)
    offers = OfferHandler(state.add_browser_stream, ice_servers=config.server.stun_servers)
    app.router.add_post("/webrtc/offer", offers.handle_offer)
    app.on_shutdown.append(offers.close)
    return app


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    state.tasks.append(asyncio.create_task(state.start(), name="load model"))
    state.tasks.append(asyncio.create_task(state.tick_status(), name="stream status"))


async def _on_shutdown(app: web.Application) -> None:
    await app[STATE].stop()


def warm_up(engine: Engine) -> None:
    """Run every model once on a throwaway stream, so the first real frame and question are not slow."""
    stream_id = f"warmup-{uuid.uuid4().hex[:8]}"
    engine.add_stream(stream_id)
    try:
        grey = np.full((240, 320, 3), 128, np.uint8)
        engine.push_frame(stream_id, Frame(grey, 0.0, time.time(), 0))
        stop_after_one_token = threading.Event()
        stop_after_one_token.set()
        engine.ask(stream_id, "What is on screen?", cancel=stop_after_one_token).result()
    finally:
        engine.remove_stream(stream_id)


# Handlers


async def _session(request: web.Request) -> web.Response:
    """`POST /session` (with the token): the token as an HttpOnly, same-site cookie, so the page can
    drop it from its URL and every later request, image and websocket carries it without showing it."""
    reply = web.Response(status=204)
    token = request.app[STATE].config.server.token
    if token is not None:
        reply.set_cookie(
            SESSION_COOKIE,
            token.get_secret_value(),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
    return reply


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.failure is not None:
        return web.json_response({"status": "failed", "reason": state.failure}, status=503)
    if state.hub is None:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ready", "model": state.hub.model_name, "streams": len(state.hub.stream_ids())})


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await state.metrics.scrape(state.hub)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _ready_hub(request: web.Request) -> Hub:
    hub = request.app[STATE].hub
    if hub is None:
        raise ApiError(503, "not_ready", "The model is still loading; try again when /health/ready is 200.")
    return hub


def _hosted_id(request: web.Request, hub: Hub) -> str:
    stream_id = request.match_info["stream_id"]
    if not hub.has(stream_id):
        raise ApiError(404, "unknown_stream", "There is no such stream; GET /streams lists them.")
    return stream_id


async def _list_streams(request: web.Request) -> web.Response:
    hub = _ready_hub(request)
    reports = await hub.reports()
    return web.json_response({"streams": [reports[stream_id].as_json() for stream_id in sorted(reports)]})


async def _get_stream(request: web.Request) -> web.Response:
    hub = _ready_hub(request)
    return web.json_response((await hub.report(_hosted_id(request, hub))).as_json())


async def _add_stream(request: web.Request) -> web.Response:
    hub = _ready_hub(request)
    try:
        body = StreamRequest.model_validate(json.loads(await request.text()))
    except ValidationError as error:
        raise ApiError(400, "invalid_request", validation_sentence(error, "POST /streams")) from None
    except (ValueError, RecursionError):
        raise ApiError(
            400,
            "invalid_request",
            'POST /streams takes a JSON object like {"source": "rtsp://...", "stream_id": "door"}.',
        ) from None
    state = request.app[STATE]
    server = state.config.server
    if len(hub.stream_ids()) >= server.max_streams:
        raise ApiError(
            429, "too_many_streams", f"This server ingests at most {server.max_streams} streams; remove one first."
        )
    stream_id = body.stream_id or _free_stream_id(hub)
    check_api_source(body.source, server)
    try:
        report = await hub.add_stream(stream_id, body.source, body.fps, body.loop)
    except SourceError as error:
        if source_kind(body.source) == "file":  # one answer for every file: nothing about the disk leaks out
            raise ApiError(422, "source_error", unopenable_file(body.source, server)) from None
        raise ApiError(422, "source_error", str(error)) from None
    except TimeoutError:
        raise ApiError(
            504, "source_timeout", f"The source did not open within {server.source_open_timeout_s:g} s; check it."
        ) from None
    except StreamExists as error:
        raise ApiError(409, "stream_exists", str(error)) from None
    except USER_ERRORS as error:
        raise ApiError(422, "stream_error", str(error)) from None
    return web.json_response(report.as_json(), status=201)


async def _remove_stream(request: web.Request) -> web.Response:
    hub = _ready_hub(request)
    stream_id = _hosted_id(request, hub)
    if stream_id in request.app[STATE].operator_streams:
        raise ApiError(
            403,
            "operator_stream",
            f"'{stream_id}' is one of the server's configured streams; the operator removes it from the config.",
        )
    await hub.remove(stream_id)
    return web.Response(status=204)


async def _preview(request: web.Request) -> web.Response:
    hub = _ready_hub(request)
    jpeg = await hub.preview_jpeg(_hosted_id(request, hub))
    if jpeg is None:
        raise ApiError(503, "no_frame_yet", "The stream has not delivered a frame yet.")
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def _timeline(request: web.Request) -> web.Response:
    hub = _ready_hub(request)
    stream_id = _hosted_id(request, hub)
    try:
        limit = min(_TIMELINE_LIMIT, max(1, int(request.query.get("limit", _TIMELINE_LIMIT))))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit must be a whole number of frames.") from None
    return web.json_response(await hub.timeline(stream_id, limit))


def _free_stream_id(hub: Hub) -> str:
    taken = set(hub.stream_ids())
    number = len(taken) + 1
    while f"stream{number}" in taken:
        number += 1
    return f"stream{number}"


# Running in a thread


class ServerThread:
    """Runs an application on its own event loop in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        app[STATE].config.check_exposure(host)  # the address listened on decides, not the configured one
        self.ssl_context = app[STATE].config.server.ssl_context()
        self.app = app
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._thread = threading.Thread(target=self.loop.run_forever, name="server", daemon=True)

    @property
    def state(self) -> ServerState:
        return self.app[STATE]

    @property
    def thread_id(self) -> int | None:
        """The operating system's id of the thread running the event loop (None before it starts)."""
        return self._thread.native_id

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, ready_timeout: float = 120.0) -> ServerThread:
        """Listen, then (unless told not to) wait until the model is ready.

        Raises RuntimeError when the model failed to load.
        """
        self._thread.start()
        self.call(self._listen())
        if wait_ready:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.call(asyncio.wait_for(self.state.started.wait(), timeout))
        if self.state.failure is not None:
            self.stop()
            raise RuntimeError(self.state.failure)

    def call(self, work: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the server's loop and wait for its result."""

        async def run() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self._runner.cleanup())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
        self.loop.close()

    async def _listen(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[0][1])
