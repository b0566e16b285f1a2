"""Standing questions over HTTP, and the one way both HTTP and the websocket create a watch.

`GET /watches` lists them (`?stream_id=` for one stream), `POST /watches` creates one
(`{"stream_id", "text", "watch_id"?, "every_s"?, "hold_s"?, "cooldown_s"?, "confirm"?, "on"?, "webhook"?}`, 201),
`DELETE /watches/ID` removes one (204), and `GET /events?since=N` gives the recent watch events numbered
after N (the engine keeps the newest `streamer.watches.EVENTS_KEPT`), with `last`, the number to pass next time.

A watch with a `webhook` has each of its events POSTed there as JSON (the `watch.event` fields), from the
event loop, never from ingest: each attempt times out after WEBHOOK_TIMEOUT_S, and a failed POST is tried
WEBHOOK_ATTEMPTS times in all, WEBHOOK_BACKOFF_S apart (doubling), then logged and dropped. Only URLs
that start with an entry of `server.webhook_urls` are accepted, so a client cannot make the server POST
into the network it sits in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import Field, ValidationError

from streamer.server.config import STREAM_ID_PATTERN, validation_sentence
from streamer.server.guards import ApiError
from streamer.server.hub import Hub
from streamer.server.protocol import QUESTION_ID_PATTERN, ErrorCode, WatchFields, WatchSummary
from streamer.watches import WatchEvent, WatchInfo, WatchSpec

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_S = 1.0


class WatchRequest(WatchFields):
    """The body of `POST /watches`."""

    stream_id: str = Field(pattern=STREAM_ID_PATTERN)
    watch_id: str | None = Field(None, pattern=QUESTION_ID_PATTERN)


class WatchRefused(Exception):
    """A watch that cannot be created: an error code, the HTTP status that goes with it, and one sentence."""

    def __init__(self, code: ErrorCode, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


class Webhooks:
    """Where each watch's events are POSTed, and the posting (see the module docstring)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.allowed = tuple(allowed)
        self.urls: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def check(self, url: str) -> None:
        if not url.startswith(("http://", "https://")) or not any(url.startswith(p) for p in self.allowed):
            where = ", ".join(self.allowed) if self.allowed else "none are configured"
            raise WatchRefused(
                ErrorCode.WEBHOOK_NOT_ALLOWED,
                403,
                f"Webhooks may go only to URLs that start with server.webhook_urls ({where}); ask the operator.",
            )

    def send(self, event: WatchEvent) -> None:
        """Start POSTing `event` if its watch has a webhook (call on the event loop)."""
        url = self.urls.get(event.watch_id)
        if url is not None:
            task = asyncio.create_task(self._post(url, dataclasses.asdict(event)), name=f"webhook {event.watch_id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        wait = WEBHOOK_BACKOFF_S
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
                try:
                    async with http.post(url, json=body) as reply:
                        if reply.status < 300:
                            self.delivered += 1
                            return
                        problem = f"HTTP {reply.status}"
                except (aiohttp.ClientError, TimeoutError) as error:
                    problem = type(error).__name__
                if attempt < WEBHOOK_ATTEMPTS:
                    await asyncio.sleep(wait)
                    wait *= 2
        self.failed += 1
        log.warning("webhook of watch %s: %s after %d attempts; event dropped", body["watch_id"], problem, attempt)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def create_watch(
    hub: Hub, stream_id: str, fields: WatchFields, watch_id: str, max_watches: int, webhooks: Webhooks
) -> WatchInfo:
    """Add a watch to a hosted stream, or raise WatchRefused saying why not."""
    if fields.webhook is not None:
        webhooks.check(fields.webhook)
    if not hub.has(stream_id):
        raise WatchRefused(ErrorCode.UNKNOWN_STREAM, 404, f"There is no stream '{stream_id}'; GET /streams lists them.")
    if len(await hub.watches(stream_id)) >= max_watches:
        raise WatchRefused(
            ErrorCode.TOO_MANY_WATCHES, 429, f"A stream holds at most {max_watches} watches; delete one first."
        )
    spec = WatchSpec.of(fields)
    try:
        info = await hub.add_watch(stream_id, spec, watch_id)
    except ValueError as error:
        raise WatchRefused(ErrorCode.DUPLICATE_WATCH, 409, str(error)) from None
    if fields.webhook is not None:
        webhooks.urls[watch_id] = fields.webhook
    return info


def watch_summary(info: WatchInfo) -> WatchSummary:
    spec = info.spec
    return WatchSummary(
        watch_id=info.watch_id,
        stream_id=info.stream_id,
        text=spec.text,
        every_s=spec.every_s,
        hold_s=spec.hold_s,
        cooldown_s=spec.cooldown_s,
        confirm=spec.confirm,
        on=spec.on,
        checks=info.checks,
        active=info.active,
    )


def add_watch_routes(
    router: web.UrlDispatcher, ready_hub: Callable[[web.Request], Hub], max_watches: int, webhooks: Webhooks
) -> None:
    """`/watches` and `/events` on `router`; `ready_hub` gives the hub or raises ApiError while loading."""

    async def list_watches(request: web.Request) -> web.Response:
        hub = ready_hub(request)
        stream_id = request.query.get("stream_id")
        watches = [watch_summary(info).model_dump() for info in await hub.watches(stream_id)]
        return web.json_response({"watches": watches})

    async def add(request: web.Request) -> web.Response:
        hub = ready_hub(request)
        try:
            body = WatchRequest.model_validate(json.loads(await request.text()))
        except ValidationError as error:
            raise ApiError(400, "invalid_request", validation_sentence(error, "POST /watches")) from None
        except (ValueError, RecursionError):
            example = '{"stream_id": "door", "text": "tell me when a person appears"}'
            raise ApiError(400, "invalid_request", f"POST /watches takes a JSON object like {example}.") from None
        watch_id = body.watch_id or f"w{uuid.uuid4().hex[:10]}"
        try:
            info = await create_watch(hub, body.stream_id, body, watch_id, max_watches, webhooks)
        except WatchRefused as refused:
            raise ApiError(refused.status, refused.code.value, refused.message) from None
        return web.json_response(watch_summary(info).model_dump(), status=201)

    async def remove(request: web.Request) -> web.Response:
        hub = ready_hub(request)
        watch_id = request.match_info["watch_id"]
        if not await hub.remove_watch(watch_id):
            raise ApiError(404, "unknown_watch", "There is no such watch; GET /watches lists them.")
        webhooks.urls.pop(watch_id, None)
        return web.Response(status=204)

    async def events(request: web.Request) -> web.Response:
        hub = ready_hub(request)
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise ApiError(
                400, "invalid_request", "since must be a whole number: the `last` of the previous call."
            ) from None
        found = await hub.watch_events(since)
        listed: list[dict[str, Any]] = [{"number": number, **dataclasses.asdict(event)} for number, event in found]
        return web.json_response({"events": listed, "last": found[-1][0] if found else since})

    router.add_get("/watches", list_watches)
    router.add_post("/watches", add)
    router.add_delete("/watches/{watch_id}", remove)
    router.add_get("/events", events)
