"""What stands between a client and the server: JSON errors, the names the server answers to, same-origin
requests only, the token, and the sources a client may open.

Requests from a web page of another origin are refused, so a page on the internet cannot drive a server
on localhost; a request addressed to a name the server does not answer to is refused, so a page whose
name resolves to 127.0.0.1 cannot either.
"""

from __future__ import annotations

import hmac
import logging
import re
import stat
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import SecretStr

from sources.frame import SourceError
from sources.open import file_path, source_kind
from streamer.engine import UnknownStream
from streamer.server.config import ServerConfig
from streamer.server.hub import StreamRestarting
from streamer.server.protocol import http_error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "streamer_token"
PUBLIC_PATHS = frozenset({"/", "/favicon.ico"})
_PUBLIC_PREFIXES = ("/health/", "/static/")


class ApiError(Exception):
    """Ends a request with a JSON error: an HTTP status, a code and one sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a JSON error in one sentence; tracebacks stay in the server log."""
    try:
        return await handler(request)
    except ApiError as error:
        return http_error(error.status, error.code, error.message)
    except StreamRestarting as error:
        return http_error(
            503, "stream_restarting", f"The worker holding '{error}' stopped; the stream is coming back, retry shortly."
        )
    except UnknownStream:  # removed while the request ran
        return http_error(404, "unknown_stream", "There is no such stream; GET /streams lists them.")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return http_error(error.status, error.reason.lower().replace(" ", "_"), f"{error.reason}.")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return http_error(500, "internal_error", "The request failed on the server; the server log has the details.")


def known_host(allowed_hosts: Callable[[], Collection[str] | None]) -> Middleware:
    """Refuses a request addressed to a name the server does not answer to (`allowed_hosts()`, None: any)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = allowed_hosts()
        if allowed is None or request.path.startswith("/health/") or request_host_name(request.host) in allowed:
            return await handler(request)
        name = request_host_name(request.host)
        shown = name if re.fullmatch(r"[\w.:-]{1,253}", name) else "that name"
        return http_error(
            403,
            "forbidden_host",
            f"This server does not answer to {shown}; add it to server.allowed_hosts to reach it by that name.",
        )

    return check


def request_host_name(host: str) -> str:
    """The name in a Host header, lower case, without its port: "Evil.example:80" -> "evil.example"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


@web.middleware
async def same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin is not None and request.path not in PUBLIC_PATHS and urlsplit(origin).netloc != request.host:
        return http_error(403, "forbidden_origin", "Requests from other web sites are not accepted.")
    return await handler(request)


def token_check(server_token: Callable[[], SecretStr | None]) -> Middleware:
    """Requires the token `server_token()` on every path but the public ones (None: no token needed)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = server_token()
        public = request.path in PUBLIC_PATHS or request.path.startswith(_PUBLIC_PREFIXES)
        if token is None or public:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header.removeprefix("Bearer ").strip()
        else:
            given = request.query.get("token") or request.cookies.get(SESSION_COOKIE, "")
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            return http_error(
                401,
                "unauthorized",
                "This server requires a token: send `Authorization: Bearer <token>` or add ?token=<token> to the URL.",
            )
        return await handler(request)

    return check


def check_api_source(source: str, server: ServerConfig) -> None:
    """Refuse a source a client may not open (see ServerConfig.api_sources and api_file_folders)."""
    try:
        kind = source_kind(source)
    except SourceError as error:
        raise ApiError(422, "source_error", str(error)) from None
    if kind == "file":
        if not _allowed_file(source, server.api_file_folders):
            raise ApiError(422, "source_error", unopenable_file(source, server))
    elif kind not in server.api_sources:
        allowed = ", ".join(server.api_sources) or "none"
        raise ApiError(
            403,
            "source_not_allowed",
            f"Clients may open only these kinds of source here: {allowed}; the operator can allow {kind} in "
            "server.api_sources.",
        )


def _allowed_file(source: str, folders: Sequence[Path]) -> bool:
    """Whether `source` is a regular file inside one of `folders` (links resolved: no way out by ..)."""
    try:
        path = file_path(source).resolve(strict=True)
        regular = stat.S_ISREG(path.stat().st_mode)  # a FIFO or a device would block the reader forever
    except (OSError, RuntimeError, SourceError):
        return False
    return regular and any(path.is_relative_to(folder.resolve()) for folder in folders)


def unopenable_file(source: str, server: ServerConfig) -> str:
    where = (
        "the folders in server.api_file_folders" if server.api_file_folders else "no folder (server.api_file_folders)"
    )
    return f"Cannot open '{source}' as a video: clients may open video files only from {where}."
