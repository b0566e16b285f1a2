"""Ingests a video into an engine that snapshots its memory, printing each frame; killed by a test."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sources.file import FileSource
from sources.frame import SourceEnded
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import MemoryConfig, SnapshotConfig


async def main(video: Path, snapshots: Path) -> None:
    engine = Engine(
        EmbeddedAdapter.load(),
        EngineConfig(snapshot=SnapshotConfig(dir=snapshots, every_s=5.0), memory=MemoryConfig(policy="equal")),
    )
    engine.add_stream("cam")
    source = FileSource(video, fps=1.0)
    while True:
        try:
            frame = await source.recv()
        except SourceEnded:
            break
        engine.push_frame("cam", frame)
        print(f"frame {frame.stream_time:.1f}", flush=True)
    print("ended", flush=True)
    await asyncio.Event().wait()  # stay alive until killed


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
