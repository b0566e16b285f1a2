"""Snapshots: a restored memory answers exactly as before, and a kill -9 never leaves a broken one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from engine_probes import first_token_logits
from server_helpers import wait_for_frames

from sources.file import FileSource
from sources.frame import Frame
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import MemoryConfig, SnapshotConfig
from streamer.evaluation.needles import Needle, build_stream
from streamer.server.app import InitialStream, ServerThread, create_app
from streamer.server.config import StreamerConfig
from streamer.server.streams import open_source

QUESTION = "What is on screen?"


def read_frames(clip: Path, count: int) -> list[Frame]:
    async def read() -> list[Frame]:
        source = FileSource(clip, fps=2.0)
        try:
            return [await source.recv() for _ in range(count)]
        finally:
            source.close()

    return asyncio.run(read())


def test_restored_memory_answers_exactly_as_before(
    embedded_adapter: EmbeddedAdapter, bikes_clip: Path, tmp_path: Path
) -> None:
    frames = read_frames(bikes_clip, 20)
    config = EngineConfig(
        memory=MemoryConfig(budget_tokens=360, evict_chunk=20, host_budget_tokens=200, window_seconds=2.0),
        snapshot=SnapshotConfig(dir=tmp_path),
    )
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    for frame in frames:
        engine.push_frame("cam", frame)
    before = engine.memory("cam")
    assert {r.location for r in before.records} >= {"host", "device"}, "the snapshot covers both tiers"
    engine.close()
    assert not list(tmp_path.glob("*.partial")), "no staging file is left behind"

    restored = Engine(embedded_adapter, config)
    restored.add_stream("cam")
    after = restored.memory("cam")
    assert [(r.frame_id, r.text, r.location, r.tier, r.tokens) for r in after.records] == [
        (r.frame_id, r.text, r.location, r.tier, r.tokens) for r in before.records
    ]
    assert after.resident_tokens == before.resident_tokens and after.host_tokens == before.host_tokens
    assert after.places == before.places == Counter((r.tier, r.location) for r in before.records)
    torch.testing.assert_close(
        first_token_logits(restored, "cam", QUESTION), first_token_logits(engine, "cam", QUESTION), atol=0, rtol=0
    )


def test_after_a_restore_the_clock_goes_on_and_snapshots_stay_due(
    embedded_adapter: EmbeddedAdapter, bikes_clip: Path, tmp_path: Path
) -> None:
    frames = read_frames(bikes_clip, 8)  # 0 to 3.5 s at 2 fps
    config = EngineConfig(snapshot=SnapshotConfig(dir=tmp_path, every_s=3.0))
    engine = Engine(embedded_adapter, config)
    engine.add_stream("cam")
    for frame in frames[:8]:
        engine.push_frame("cam", frame)
    engine.close()
    last = engine.memory("cam").records[-1].stream_time
    assert last == frames[7].stream_time

    restarted = Engine(embedded_adapter, config)
    restarted.add_stream("cam")
    path = restarted.snapshot_path("cam")
    assert path is not None
    written = path.stat().st_mtime_ns
    # The source starts again at 0 s; its frames continue the memory's clock.
    records = [restarted.push_frame("cam", frame) for frame in frames[:8]]
    assert [r.t for r in records] == pytest.approx([last + 1.0 + f.stream_time for f in frames[:8]])
    times = [r.stream_time for r in restarted.memory("cam").records]
    assert times == sorted(times) and len(times) == 16
    assert path.stat().st_mtime_ns > written, (
        "a snapshot was due 3 s after the last one, not 3 s after 3.5 s of new stream"
    )


def test_a_snapshot_that_cannot_be_written_leaves_ingest_going_and_is_retried(
    embedded_adapter: EmbeddedAdapter, bikes_clip: Path, tmp_path: Path
) -> None:
    frames = read_frames(bikes_clip, 8)  # 0 to 3.5 s at 2 fps
    blocked = tmp_path / "snapshots"
    blocked.write_text("a file where the snapshot folder should be")  # as a full disk would, makes writing fail
    engine = Engine(embedded_adapter, EngineConfig(snapshot=SnapshotConfig(dir=blocked, every_s=2.0)))
    engine.add_stream("cam")
    for frame in frames[:2]:
        engine.push_frame("cam", frame)
    assert engine.status("cam").snapshot_failures == 1
    blocked.unlink()  # the disk has room again
    for frame in frames[2:]:
        engine.push_frame("cam", frame)
    status = engine.status("cam")
    assert status.frames == 8 and status.snapshot_failures == 1
    assert (blocked / "cam.memory.pt").is_file(), "retried 2 s of stream later, and written"


def test_a_damaged_snapshot_is_set_aside_and_the_stream_starts_empty(
    embedded_adapter: EmbeddedAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cam.memory.pt").write_bytes(b"not a snapshot")
    (tmp_path / "cam.memory.pt.k2j4.partial").write_bytes(b"half written")
    engine = Engine(embedded_adapter, EngineConfig(snapshot=SnapshotConfig(dir=tmp_path)))
    with caplog.at_level("WARNING", logger="streamer.engine"):
        status = engine.add_stream("cam")
    assert status.frames == 0 and engine.memory("cam").records == []
    [aside] = [path.name for path in tmp_path.iterdir()]
    assert aside.startswith("cam.memory.pt.unreadable-"), "kept for inspection, the partial file removed"
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == (
        f"cam: Snapshot '{tmp_path / 'cam.memory.pt'}' cannot be read (UnpicklingError); moved it to {aside} "
        "and started the stream empty."
    )


def test_a_server_saves_every_stream_on_shutdown_and_forgets_a_deleted_one(
    embedded_adapter: EmbeddedAdapter, bikes_clip: Path, tmp_path: Path
) -> None:
    config = StreamerConfig.model_validate({"server": {"port": 0}, "snapshot": {"dir": str(tmp_path)}})
    initial = [InitialStream(name, open_source(str(bikes_clip), 2.0, loop=True), 2.0) for name in ("kept", "gone")]
    server = ServerThread(create_app(config, lambda: Engine(embedded_adapter, config.engine_config()), initial))
    server.start()
    try:
        wait_for_frames(server, 4, "kept")
        assert server.call(_remove(server, "gone"))
        assert not (tmp_path / "gone.memory.pt").exists(), "a deleted stream's memory is not restored later"
    finally:
        engine = server.state.engine
        ingested = engine.status("kept").frames if engine is not None and engine.has_stream("kept") else 0
        server.stop()
    restored = Engine(embedded_adapter, config.engine_config())
    restored.add_stream("kept")
    # The periodic snapshot came after the first frame only (every 60 s of stream); shutdown wrote the rest.
    assert len(restored.memory("kept").records) >= ingested >= 4


async def _remove(server: ServerThread, stream_id: str) -> bool:
    hub = server.state.hub
    assert hub is not None
    return await hub.remove(stream_id)


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_restores_the_last_snapshot(
    embedded_adapter: EmbeddedAdapter, tmp_path: Path
) -> None:
    word = "KESTREL"
    needle = Needle("sign", 6.0, 10.0, word)
    stream = build_stream(tmp_path / "needle.mp4", [needle], [], duration=70.0, fps=5.0, seed=3)
    snapshots = tmp_path / "snapshots"
    repo = Path(__file__).resolve().parents[1]
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.snapshot_worker", str(stream.video), str(snapshots)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = 0.0
    try:
        assert worker.stdout is not None
        deadline = time.monotonic() + 600
        for line in worker.stdout:
            if line.startswith("frame "):
                seen = float(line.split()[1])
            if seen >= 37.0 or line.startswith("ended") or time.monotonic() > deadline:
                break
        os.kill(worker.pid, signal.SIGKILL)  # mid-stream, possibly mid-write
    finally:
        worker.kill()
        worker.wait()
    assert 37.0 <= seen < 69.0, f"the worker was killed mid-stream (last frame at {seen} s)"

    engine = Engine(
        embedded_adapter,
        EngineConfig(snapshot=SnapshotConfig(dir=snapshots, every_s=5.0), memory=MemoryConfig(policy="equal")),
    )
    engine.add_stream("cam")
    records = engine.memory("cam").records
    # Snapshots come every 5 s of stream time: the last one is at most 5 frames behind the kill.
    assert records and seen - 6.0 <= records[-1].stream_time <= seen
    answer = "".join(engine.ask("cam", "What word was written on the sign?"))
    assert word.lower() in answer.lower(), answer
