"""`streamer serve` (the server) and `streamer ask` (a websocket client that prints one streamed answer).

Both check their input before anything slow happens: `serve` reads the config and opens every
source before the model loads, so a typo costs a second, not a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.clock import clock
from streamer.engine_config import DEFAULT_FPS
from streamer.errors import UserError
from streamer.models import add_model_options

if TYPE_CHECKING:
    from aiohttp import web

    from streamer.engine import Engine
    from streamer.server.app import InitialStream
    from streamer.server.config import SourceConfig, StreamerConfig
    from streamer.watches import WatchSpec

SERVER_COMMANDS = ("serve", "ask")
DEFAULT_WS_URL = "ws://127.0.0.1:8080/ws"
EXIT_FAILED = 1


def add_server_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="ingest live streams and answer questions over a websocket, with an HTTP API and a web page",
        description="Without --source or a config file, serves a demo stream built from packaged footage.",
    )
    serve.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="[ID=]URL",
        help="rtsp://..., webcam:N, synthetic:PATTERN or a video file; repeat for several streams",
    )
    serve.add_argument("--config", type=Path, help="YAML config: sources, memory, model, server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; others need a token)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument(
        "--fps", type=float, help=f"frames ingested per second for --source streams (default {DEFAULT_FPS:g})"
    )
    serve.add_argument("--loop", action="store_true", help="play --source video files again when they end")
    serve.add_argument(
        "--no-token",
        action="store_true",
        help="on loopback, let clients in without a token (local development; otherwise one is made at start)",
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS and WSS (with --tls-key)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the streams on Ray workers; ADDRESS joins a cluster (e.g. auto), none starts one here",
    )
    serve.add_argument("--workers", type=int, help="Ray worker processes, one GPU or streamer_worker slot each")
    add_model_options(serve, defaults=False)

    ask = commands.add_parser("ask", help="ask a running server a question and print the streamed answer")
    ask.add_argument("question")
    ask.add_argument("--stream", help="stream id (default: the server's only stream)")
    ask.add_argument("--url", default=DEFAULT_WS_URL, help=f"the server's websocket (default {DEFAULT_WS_URL})")
    ask.add_argument("--token", help="the server's token (default: $STREAMER_TOKEN)")
    ask.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer (default 300)")


def run_server_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args)
    return ask(args)


# streamer serve


def serve(args: argparse.Namespace) -> int:
    from streamer.server.app import create_app

    config = serve_config(args)
    give_local_token(config)
    if config.cluster.ray:
        return _serve_on_ray(config)
    initial = open_initial_streams(config)
    try:
        app = create_app(config, lambda: load_engine(config), initial)
    except BaseException:
        for stream in initial:
            if stream.source is not None:
                stream.source.close()
        raise
    return asyncio.run(_run(app, config))


def serve_config(args: argparse.Namespace) -> StreamerConfig:
    """The config file with the command line's options on top; the demo stream when no source is given.

    Refuses a bind address other machines can reach without a token before building anything.
    """
    from streamer.server.config import SourceConfig, build_config, read_config_file

    config = build_config(read_config_file(args.config), str(args.config)) if args.config else build_config({}, "")
    tree = config.model_dump()
    for number, text in enumerate(args.source, start=len(config.sources) + 1):
        stream_id, url = _split_source(text, number)
        source: dict[str, Any] = {"id": stream_id, "url": url, "loop": args.loop}
        if args.fps is not None:
            source["fps"] = args.fps
        tree["sources"].append(source)
    if args.host is not None:
        tree["server"]["host"] = args.host
    if args.port is not None:
        tree["server"]["port"] = args.port
    for option in ("tls_cert", "tls_key"):
        if getattr(args, option) is not None:
            tree["server"][option] = getattr(args, option)
    for option, field in (("model", "name"), ("llm", "llm"), ("device", "device"), ("dtype", "dtype")):
        if getattr(args, option) is not None:
            tree["model"][field] = getattr(args, option)
    if args.download:
        tree["model"]["download"] = True
    if args.ray is not None:
        tree["cluster"].update(ray=True, address=args.ray or None)
    if args.workers is not None:
        tree["cluster"]["workers"] = args.workers
    if args.no_token:
        tree["server"]["local_token"] = False
    config = build_config(tree, "streamer serve")
    config.check_exposure()
    config.server.ssl_context()  # a bad certificate or key is named before anything loads
    from streamer.models import check_choice

    check_choice(config.model.choice())
    if not config.sources:
        config.sources.append(SourceConfig(id="demo", url=str(_demo_video()), loop=True))
    return config


def _split_source(text: str, number: int) -> tuple[str, str]:
    """`door=rtsp://...` -> ("door", "rtsp://..."); a URL alone is named stream<number>."""
    name, separator, url = text.partition("=")
    if separator and name and not any(c in name for c in ":/\\") and url:
        return name, url
    return f"stream{number}", text


def _demo_video() -> Path:
    from streamer.evaluation.needles import build_demo_stream
    from streamer.llm import cache_dir

    print("No --source given: serving the demo stream (built once from packaged footage)...", file=sys.stderr)
    return build_demo_stream(cache_dir() / "demo").video


def give_local_token(config: StreamerConfig) -> None:
    """A server on loopback with no token gets one made now (unless `local_token` is off): other users and
    programs on this machine cannot use it without reading the token (the ready URL, or the file
    `streamer ask` reads, which only this user can read)."""
    import secrets

    from streamer.server.config import is_loopback

    server = config.server
    if server.token is None and server.local_token and is_loopback(server.host):
        server.make_token(secrets.token_urlsafe(24))


def token_file(port: int) -> Path:
    """Where `streamer serve` keeps the token it made for the loopback server on `port`."""
    from streamer.llm import cache_dir

    return cache_dir() / "tokens" / f"{port}"


def open_initial_streams(config: StreamerConfig) -> list[InitialStream]:
    from sources.rtsp import RtspOptions
    from streamer.server.app import InitialStream
    from streamer.server.streams import open_source

    opened: list[InitialStream] = []
    try:
        for source in config.sources:
            opened.append(
                InitialStream(
                    source.id,
                    open_source(
                        source.url,
                        source.fps,
                        source.loop,
                        source.speed,
                        RtspOptions(tls_verify=source.tls_verify, tls_ca_file=source.tls_ca_file),
                    ),
                    source.fps,
                    initial_watches(source),
                    source.url,
                    source.loop,
                )
            )
    except BaseException:
        for stream in opened:
            if stream.source is not None:
                stream.source.close()
        raise
    return opened


def _serve_on_ray(config: StreamerConfig) -> int:
    """Serve with the streams on Ray workers: the sources open on the workers, the server is their gateway."""
    from streamer.cluster import require_ray
    from streamer.cluster.gateway import ClusterSettings, RayHub
    from streamer.cluster.worker import engine_loader
    from streamer.llm import cache_dir
    from streamer.server.app import InitialStream, create_app

    require_ray()
    cluster = config.cluster
    if config.snapshot.dir is None:
        if cluster.address is not None:
            raise UserError(
                "Joining a Ray cluster needs snapshot.dir in the config: a folder every node reads and writes "
                "(a shared mount), where streams are saved and found again after a worker or node fails."
            )
        config.snapshot.dir = cache_dir() / "ray-snapshots"
    settings = ClusterSettings(
        cluster.address,
        cluster.workers,
        config.snapshot.dir,
        cluster.gpus_per_worker,
        cluster.failover_after_s,
        config.server.source_open_timeout_s,
        config.server.answer_workers,
    )
    loader = engine_loader(config)
    local = [s.id for s in config.sources if s.speed != 1.0 or not s.tls_verify or s.tls_ca_file is not None]
    if local:
        raise UserError(
            f"Source '{local[0]}' sets speed or TLS options, which one-process servers take; leave them out for --ray."
        )
    initial = [
        InitialStream(source.id, None, source.fps, initial_watches(source), source.url, source.loop)
        for source in config.sources
    ]
    app = create_app(config, None, initial, make_hub=lambda: RayHub.start(settings, loader))
    return asyncio.run(_run(app, config))


def initial_watches(source: SourceConfig) -> list[tuple[str, WatchSpec, str | None]]:
    """A configured stream's watches: (watch id, spec, webhook)."""
    from streamer.watches import WatchSpec

    return [(w.id, WatchSpec.of(w), w.webhook) for w in source.watches]


def load_engine(config: StreamerConfig) -> Engine:
    from streamer.engine import Engine
    from streamer.models import load_adapter

    return Engine(load_adapter(config.model.choice()), config.engine_config())


async def _run(app: web.Application, config: StreamerConfig) -> int:
    from aiohttp import web

    from streamer.server.app import STATE

    host, port = config.server.host, config.server.port
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    secure = config.server.ssl_context()
    try:
        await web.TCPSite(runner, host, port, ssl_context=secure).start()
    except OSError as error:
        await runner.cleanup()
        raise UserError(
            f"Cannot listen on {host}:{port} ({error.strerror or error}); pick another --port or stop what uses it."
        ) from None
    port = int(runner.addresses[0][1])
    page = f"{'https' if secure else 'http'}://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    hint = " (add ?token=<your token>)" if config.server.token is not None else ""
    saved = None
    if config.server.token_made and config.server.token is not None:
        token = config.server.token.get_secret_value()
        page, hint = f"{page}?token={token}", ""
        saved = _save_token(port, token)
    print(f"Listening on {host}:{port}; loading the model...", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    state = app[STATE]
    started = asyncio.create_task(state.started.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({started, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if state.failure is not None:
            print(f"streamer: error: {state.failure}", file=sys.stderr)
            return EXIT_FAILED
        if not stop.is_set():
            print(f'Ready: open {page}{hint} or run `streamer ask "..."`.', file=sys.stderr, flush=True)
        await stopping
        print("Shutting down...", file=sys.stderr, flush=True)
        return 0
    finally:
        started.cancel()
        stopping.cancel()
        await runner.cleanup()
        if saved is not None:
            saved.unlink(missing_ok=True)


def _save_token(port: int, token: str) -> Path | None:
    """Keep the made token where `streamer ask` finds it, readable by this user only; None if that fails."""
    path = token_file(port)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(token)
    except OSError as error:
        print(f"streamer: the token could not be saved for `streamer ask` ({error})", file=sys.stderr)
        return None
    return path


# streamer ask


def ask(args: argparse.Namespace) -> int:
    from streamer.server.config import TOKEN_ENV

    if not args.url.startswith(("ws://", "wss://")):
        raise UserError(f"--url {args.url} is not a websocket URL; give one like {DEFAULT_WS_URL}.")
    token = args.token or os.environ.get(TOKEN_ENV) or saved_token(args.url)
    return asyncio.run(_ask(args.url, args.question, args.stream, token, args.timeout))


def saved_token(url: str) -> str | None:
    """The token `streamer serve` made for a loopback server at `url`, if this user can read it."""
    from urllib.parse import urlsplit

    from streamer.server.config import is_loopback

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        return None
    if not parts.hostname or not is_loopback(parts.hostname):
        return None
    try:
        return token_file(port).read_text().strip() or None
    except OSError:
        return None


async def _ask(url: str, question: str, stream_id: str | None, token: str | None, timeout: float) -> int:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    message: dict[str, Any] = {"type": "question.ask", "question_id": "cli-1", "text": question}
    if stream_id is not None:
        message["stream_id"] = stream_id
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.ws_connect(url, headers=headers) as ws,
        ):
            await ws.send_str(json.dumps(message))
            printed = False
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                reply = json.loads(frame.data)
                if reply.get("question_id") != "cli-1" and reply.get("type") != "error":
                    continue
                if reply["type"] == "answer.delta":
                    print(reply["text"], end="", flush=True)
                    printed = True
                elif reply["type"] == "answer.done":
                    print("" if printed else reply["text"])
                    evidence = ", ".join(f"{clock(t0)}-{clock(t1)}" for t0, t1 in reply["evidence"]) or "none"
                    print(
                        f"TTFT {reply['ttft_ms']:.0f} ms, total {reply['latency_ms']:.0f} ms, "
                        f"memory up to {clock(reply['as_of'])}, evidence {evidence}"
                    )
                    return 0
                elif reply["type"] == "error":
                    raise UserError(f"The server did not answer: {reply['message']}")
    except aiohttp.WSServerHandshakeError as error:
        if error.status == 401:
            raise UserError(f"{url} requires a token; pass --token or set STREAMER_TOKEN.") from None
        raise UserError(f"{url} did not accept a websocket (HTTP {error.status}); check the URL.") from None
    except aiohttp.ClientConnectorError as error:
        code = error.os_error.errno
        reason = "connection refused" if code == errno.ECONNREFUSED else os.strerror(code) if code else "unreachable"
        raise UserError(f"Cannot connect to {url} ({reason.lower()}); start a server with `streamer serve`.") from None
    except aiohttp.InvalidURL:
        raise UserError(f"--url {url} is not a valid websocket URL; give one like {DEFAULT_WS_URL}.") from None
    except TimeoutError:
        raise UserError(f"No answer from {url} within {timeout:.0f} s; raise --timeout or check the server.") from None
    raise UserError(f"{url} closed the connection before the answer was complete; check the server's log.")
