"""`streamer serve --ray` on this machine: a local Ray cluster, two worker processes with the real embedded
model, the server as their gateway. Streams are placed on different workers and answer over the
websocket; a worker killed with SIGKILL gets its streams back from their snapshots (a needle seen before
the last snapshot is still answered); the directory and the gateway restart without losing a stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from server_helpers import answer_done, ask, connect, receive_until, ws_url

from sources.synthetic import SyntheticSource, SyntheticTrack
from streamer.cluster import DIRECTORY_NAME, NAMESPACE, WORKER_RESOURCE
from streamer.cluster.gateway import ClusterSettings, RayHub
from streamer.cluster.worker import engine_loader
from streamer.evaluation.needles import Needle, build_stream
from streamer.server.app import InitialStream, ServerThread, create_app
from streamer.server.config import StreamerConfig

ray = pytest.importorskip("ray", reason="Ray is not installed: `bash scripts/setup.sh --ray` (the test setup has it)")
pytestmark = pytest.mark.slow

WORD = "KESTREL"
SNAPSHOT_EVERY_S = 5.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, bikes_clip: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cluster-videos")
    sign = build_stream(folder / "sign.mp4", [Needle("sign", 6.0, 10.0, WORD)], [], duration=90.0, fps=5.0, seed=3)
    return {"sign": sign.video, "bikes": bikes_clip}


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray cluster with two worker slots, for this module; its snapshot folder."""
    ray.init(
        num_cpus=2,
        resources={WORKER_RESOURCE: 2},
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield tmp_path_factory.mktemp("cluster-snapshots")
    ray.shutdown()


def gateway(snapshots: Path, videos: dict[str, Path]) -> ServerThread:
    """A server whose streams run on two Ray workers loading the embedded default model."""
    config = StreamerConfig.model_validate(
        {
            "snapshot": {"dir": str(snapshots), "every_s": SNAPSHOT_EVERY_S},
            "memory": {"policy": "equal"},
            "answer": {"max_new_tokens": 96},
            "server": {"port": 0},
        }
    )
    settings = ClusterSettings(None, 2, snapshots, failover_after_s=30.0)
    initial = [
        InitialStream("sign", None, 1.0, url=str(videos["sign"])),
        InitialStream("bikes", None, 1.0, url=str(videos["bikes"]), loop=True),
    ]
    app = create_app(config, None, initial, make_hub=lambda: RayHub.start(settings, engine_loader(config)))
    return ServerThread(app).start(ready_timeout=600)


@pytest.fixture(scope="module")
def server(snapshots: Path, videos: dict[str, Path]) -> Iterator[ServerThread]:
    server = gateway(snapshots, videos)
    yield server
    server.stop()


def get_json(server: ServerThread, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=30) as reply:
        return json.loads(reply.read())


def report(server: ServerThread, stream_id: str) -> Any:
    hub = server.state.hub
    assert hub is not None
    return server.call(hub.report(stream_id))


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.2)


def test_two_streams_on_two_workers_answer_over_the_gateway(server: ServerThread) -> None:
    wait_until(lambda: min(report(server, s).frames_ingested for s in ("sign", "bikes")) >= 3, 120, "ingest")
    streams = {stream["stream_id"]: stream for stream in get_json(server, "/streams")["streams"]}
    assert set(streams) == {"sign", "bikes"}
    assert streams["sign"]["worker"] != streams["bikes"]["worker"], "one stream per worker"
    assert get_json(server, "/health/ready")["model"] == "SmolLM2-135M-Instruct"  # the workers' model

    async def both() -> list[list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(server))
            return [await ask(ws, f"q-{stream}", "What is in the video?", stream_id=stream) for stream in streams]

    for messages in server.call(both(), timeout=300):
        kinds = [message["type"] for message in messages]
        assert kinds[0] == "answer.started" and kinds[-1] == "answer.done", kinds
        assert "answer.delta" in kinds and messages[-1]["text"].strip()
        assert messages[-1]["as_of"] > 0


def test_a_killed_worker_gets_its_streams_back_from_its_snapshots(server: ServerThread) -> None:
    wait_until(lambda: (report(server, "sign").memory.last_snapshot or 0) >= 15, 240, "a snapshot after the sign")
    before = report(server, "sign")
    worker = ray.get_actor(before.worker, namespace=NAMESPACE)
    pid = ray.get(worker.ping.remote())["pid"]

    async def kill_mid_answer() -> tuple[list[dict[str, Any]], float, list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(server))
            question = {"type": "question.ask", "question_id": "cut", "stream_id": "sign"}
            await ws.send_json({**question, "text": "Describe the video in detail."})
            started = await receive_until(ws, lambda m: m["type"] in ("answer.delta", "answer.done", "error"))
            assert started[-1]["type"] == "answer.delta", started[-1]
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            cut = await receive_until(ws, answer_done("cut"))
            # Ask until the stream is back and answers.
            attempt = 0
            while True:
                attempt += 1
                messages = await ask(ws, f"sign-{attempt}", "What word was written on the sign?", stream_id="sign")
                if messages[-1]["type"] == "answer.done":
                    return cut, time.monotonic() - killed, messages
                assert messages[-1]["code"] in ("stream_restarting", "unknown_stream"), messages[-1]
                assert time.monotonic() - killed < 120, "the stream did not come back within 120 s"
                await asyncio.sleep(0.5)

    cut, recovery_s, messages = server.call(kill_mid_answer(), timeout=400)
    assert cut[-1]["type"] == "error" and cut[-1]["code"] == "stream_restarting", cut[-1]
    after = report(server, "sign")
    assert ray.get(worker.ping.remote())["pid"] != pid, "Ray restarted the worker in a new process"
    # The sign (6-10 s) is in memory from the snapshot: the file started again from 0 and has not reached it.
    assert after.frames_ingested < 6, after
    restored = after.memory.frames - after.frames_ingested  # frames not ingested since the restart
    assert restored >= before.memory.frames - SNAPSHOT_EVERY_S - 1, (restored, before.memory.frames)
    answer = messages[-1]["text"]
    assert WORD.lower() in answer.lower(), answer
    print(f"recovered in {recovery_s:.1f} s")


def test_a_browser_webcam_is_relayed_to_a_worker(server: ServerThread) -> None:
    """WebRTC ends at the gateway; its frames go on to the worker holding the stream."""

    async def send_camera() -> dict[str, Any]:
        peer = RTCPeerConnection()
        peer.addTrack(SyntheticTrack(SyntheticSource(fps=15.0)))
        try:
            await peer.setLocalDescription(await peer.createOffer())
            offer = {"sdp": peer.localDescription.sdp, "type": peer.localDescription.type, "stream_id": "browser"}
            async with aiohttp.ClientSession() as session, session.post(f"{server.url}/webrtc/offer", json=offer) as r:
                answer = await r.json()
                assert r.status == 200, answer
            await peer.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            deadline = time.monotonic() + 60
            while (await server.state.hub.report("browser")).frames_ingested < 3:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the webcam's frames did not reach its worker"
                await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as session:
                ws = await connect(session, ws_url(server))
                messages = await ask(ws, "cam", "What is in the video?", stream_id="browser")
            report = (await server.state.hub.report("browser")).as_json()  # type: ignore[union-attr]
            return {"answer": messages[-1], "report": report}
        finally:
            await peer.close()

    seen = server.call(send_camera(), timeout=240)
    assert seen["report"]["worker"].startswith("streamer-worker-") and seen["report"]["state"] == "live"
    assert seen["answer"]["type"] == "answer.done" and seen["answer"]["as_of"] > 0
    hub = server.state.hub
    assert hub is not None and server.call(hub.remove("browser"))


def test_the_directory_and_the_gateway_restart_without_losing_a_stream(
    server: ServerThread, snapshots: Path, videos: dict[str, Path]
) -> None:
    directory = ray.get_actor(DIRECTORY_NAME, namespace=NAMESPACE)
    placed = ray.get(directory.placements.remote())
    assert set(placed) == {"sign", "bikes"}
    pid = ray.get(directory.process_id.remote())
    ray.kill(directory, no_restart=False)
    wait_until(lambda: _directory_process() not in (None, pid), 60, "the directory restarting")
    assert ray.get(directory.placements.remote()) == placed, "the restarted directory read its map back"

    server.stop()  # a gateway stopping leaves a cluster it joined running
    again = gateway(snapshots, videos)
    try:
        streams = {stream["stream_id"]: stream["worker"] for stream in get_json(again, "/streams")["streams"]}
        assert streams == placed

        async def question() -> list[dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                ws = await connect(session, ws_url(again))
                return await ask(ws, "again", "What is in the video?", stream_id="bikes")

        assert again.call(question(), timeout=300)[-1]["type"] == "answer.done"
    finally:
        again.stop()


def _directory_process() -> int | None:
    try:
        found: int = ray.get(ray.get_actor(DIRECTORY_NAME, namespace=NAMESPACE).process_id.remote(), timeout=5)
    except Exception:  # restarting
        return None
    return found
