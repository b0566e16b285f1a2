"""A node of a Ray cluster goes away: the streams of the worker it held are re-added on another node from
their snapshots and answer again within 30 s. Three nodes on this machine (`ray.cluster_utils.Cluster`):
a head with the gateway and the directory, and two nodes with one worker slot each, running a tiny
random VLM checkpoint (answers are gibberish; the machinery is what is tested)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from server_helpers import ask, connect, ws_url

from streamer.adapters.tiny import save_tiny_vlm
from streamer.cluster import NAMESPACE, WORKER_RESOURCE
from streamer.cluster.gateway import ClusterSettings, RayHub
from streamer.cluster.worker import engine_loader
from streamer.server.app import InitialStream, ServerThread, create_app
from streamer.server.config import StreamerConfig

ray = pytest.importorskip("ray", reason="Ray is not installed: `bash scripts/setup.sh --ray` (the test setup has it)")
pytestmark = pytest.mark.slow

FAILOVER_AFTER_S = 5.0


@pytest.fixture
def three_nodes() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={WORKER_RESOURCE: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_removed_node_s_streams_answer_from_another_node_within_30_s(three_nodes: Any, tmp_path: Path) -> None:
    folder = save_tiny_vlm(tmp_path / "tiny-smolvlm", "smolvlm")
    config = StreamerConfig.model_validate(
        {"model": {"name": str(folder)}, "snapshot": {"dir": str(tmp_path / "snapshots"), "every_s": 2.0}}
    )
    settings = ClusterSettings(None, 2, tmp_path / "snapshots", failover_after_s=FAILOVER_AFTER_S)
    initial = [InitialStream(name, None, 2.0, url="synthetic:ball") for name in ("left", "right")]
    app = create_app(config, None, initial, make_hub=lambda: RayHub.start(settings, engine_loader(config)))
    server = ServerThread(app).start(ready_timeout=300)
    try:
        hub = server.state.hub
        assert isinstance(hub, RayHub)
        deadline = time.monotonic() + 60
        while min(report.memory.last_snapshot or 0 for report in server.call(hub.reports()).values()) < 4:
            assert time.monotonic() < deadline, "no snapshot of both streams within 60 s"
            time.sleep(0.2)
        placed = dict(hub.placements)
        assert sorted(placed.values()) == ["streamer-worker-0", "streamer-worker-1"]
        doomed = placed["left"]
        doomed_node = ray.get(ray.get_actor(doomed, namespace=NAMESPACE).ping.remote())["node"]
        frames_before = server.call(hub.report("left")).memory.frames
        node = next(node for node in three_nodes.worker_nodes if node.node_id == doomed_node)
        three_nodes.remove_node(node)
        removed = time.monotonic()

        async def answered() -> list[dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                ws = await connect(session, ws_url(server))
                attempt = 0
                while True:
                    attempt += 1
                    messages = await ask(ws, f"q{attempt}", "What is in the video?", stream_id="left")
                    if messages[-1]["type"] == "answer.done":
                        return messages
                    assert messages[-1]["code"] in ("stream_restarting", "unknown_stream"), messages[-1]
                    assert time.monotonic() - removed < 30, "the stream did not answer within 30 s"
                    await asyncio.sleep(0.5)

        messages = server.call(answered(), timeout=60)
        recovered_s = time.monotonic() - removed
        assert recovered_s < 30 and messages[-1]["as_of"] > 0
        assert hub.placements["left"] != doomed, "the stream moved to the worker that is left"
        after = server.call(hub.report("left"))
        restored = after.memory.frames - after.frames_ingested  # frames not ingested since the move
        assert after.worker != doomed and restored >= frames_before - 5, "restored from its snapshot"
        print(f"answered from another node {recovered_s:.1f} s after the node was removed")
    finally:
        server.stop()
