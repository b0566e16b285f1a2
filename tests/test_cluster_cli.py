"""`streamer serve --ray` as a user runs it: two worker processes on this machine serve two streams, answer
`streamer ask`, and on Ctrl-C save both streams and stop the cluster; and the one-sentence refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rtsp_server import free_port
from server_helpers import serve_process

from streamer.adapters.tiny import save_tiny_vlm
from streamer.cli import main
from streamer.cluster import INSTALL_HINT, require_ray
from streamer.errors import UserError

ERROR = "streamer: error:"


def test_without_ray_the_install_command_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError) as refused:
        require_ray()
    assert str(refused.value) == (
        f"Serving on Ray needs the ray package, which is not installed; run `{INSTALL_HINT}`."
    )


def test_joining_a_cluster_needs_a_shared_snapshot_folder(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: `bash scripts/setup.sh --ray`")
    assert main(["serve", "--ray", "auto", "--source", "synthetic:ball"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"{ERROR} Joining a Ray cluster needs snapshot.dir in the config"), error


def test_a_bad_worker_count_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--ray", "--workers", "0", "--source", "synthetic:ball"]) == 2
    assert "cluster.workers" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_ray_with_two_workers(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: `bash scripts/setup.sh --ray`")
    model = save_tiny_vlm(tmp_path / "tiny", "smolvlm")
    port = free_port()
    command = [sys.executable, "-m", "streamer.cli", "serve", "--ray", "--workers", "2", "--port", str(port)]
    command += ["--model", str(model), "--source", "a=synthetic:ball", "--source", "b=synthetic:bars"]
    env = {**os.environ, "STREAMER_CACHE": str(tmp_path / "cache")}
    env.pop("STREAMER_TOKEN", None)  # `streamer ask` finds the token the server made in the cache folder
    with serve_process(command, env, ready_timeout=180, stop_timeout=60) as served:
        time.sleep(2)  # a few frames
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/streams?token={served.token}", timeout=10) as reply:
            streams = {stream["stream_id"]: stream for stream in json.loads(reply.read())["streams"]}
        assert {s: streams[s]["worker"] for s in ("a", "b")} == {"a": "streamer-worker-0", "b": "streamer-worker-1"}
        url = f"ws://127.0.0.1:{port}/ws"
        asked = subprocess.run(
            [sys.executable, "-m", "streamer.cli", "ask", "What is there?", "--stream", "b", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip().splitlines()[-1].startswith("TTFT"), asked.stdout
    snapshots = tmp_path / "cache" / "ray-snapshots"
    assert (snapshots / "a.memory.pt").exists() and (snapshots / "b.memory.pt").exists(), "saved on shutdown"
    assert json.loads((snapshots / "directory.json").read_text())["streams"] == {}
