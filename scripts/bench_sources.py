"""Benchmark: how fast each kind of live source delivers frames, alone and into the engine, 1 to 8 at once.

For each source kind (RTSP from a local GStreamer server, a file played in real time, synthetic
video, WebRTC from an in-process aiortc peer) and 1, 2, 4 and 8 concurrent streams:

- sources only: a consumer per stream takes frames as fast as the source gives them; reports
  frames decoded and delivered per second per stream, frames dropped as stale, and the lag
  (capture to delivery);
- into the engine: a StreamRunner per stream ingests into its own memory of one Engine with the
  embedded CPU adapter (one model loaded, one encoding worker); reports frames ingested per second
  per stream and in total, and the lag from capture to the end of the frame's prefill.

Every live source runs at 15 fps, 320x240 (the file is the 25 fps, 640x272 bikes clip).

    python scripts/bench_sources.py [--seconds 5] [--streams 1 2 4 8] [--out scripts/results/bench_sources.md]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription

from sources.base import Source
from sources.file import FileSource
from sources.frame import SourceEnded, SourceError
from sources.rtsp import RtspOptions, RtspSource
from sources.synthetic import SyntheticSource, SyntheticTrack
from sources.webrtc import WebRTCSource, accept_offer
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.ingest import StreamRunner
from streamer.needles import footage_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rtsp_server import RtspServer

KINDS = ("rtsp", "file", "synthetic", "webrtc")
LIVE_FPS = 15.0
SAMPLE_EVERY_S = 0.25


@dataclass(frozen=True)
class Row:
    """One measurement: `streams` sources of one kind for `seconds`, with or without the engine."""

    kind: str
    streams: int
    decoded_fps: float  # per stream
    delivered_fps: float  # per stream: frames handed to the consumer, or ingested into memory
    dropped_per_s: float  # per stream
    lag_mean_s: float
    lag_max_s: float


class Sources:
    """Opens sources of each kind; owns the RTSP server and the WebRTC sending peers."""

    def __init__(self, server: RtspServer) -> None:
        self.server = server
        self.peers: list[RTCPeerConnection] = []

    async def open(self, kind: str) -> Source:
        if kind == "rtsp":
            return RtspSource(self.server.url("live"), RtspOptions(watchdog_s=5.0))
        if kind == "file":
            return FileSource(footage_dir() / "bikes.mp4", fps=None, realtime=True)
        if kind == "synthetic":
            return SyntheticSource("ball", fps=LIVE_FPS)
        return await self._webrtc()

    async def _webrtc(self) -> WebRTCSource:
        peer = RTCPeerConnection()
        peer.addTrack(SyntheticTrack(SyntheticSource("ball", fps=LIVE_FPS)))
        await peer.setLocalDescription(await peer.createOffer())
        source, answer = await accept_offer(peer.localDescription.sdp, peer.localDescription.type)
        await peer.setRemoteDescription(RTCSessionDescription(**answer))
        self.peers.append(peer)
        return source

    async def close_peers(self) -> None:
        peers, self.peers = self.peers, []
        await asyncio.gather(*(peer.close() for peer in peers))


@asynccontextmanager
async def opened(sources: Sources, kind: str, count: int) -> AsyncIterator[list[Source]]:
    opened_sources = [await sources.open(kind) for _ in range(count)]
    try:
        yield opened_sources
    finally:
        for source in opened_sources:
            source.close()
        for source in opened_sources:
            if isinstance(source, WebRTCSource):
                await source.wait_closed()
        await sources.close_peers()


async def measure_sources(sources: Sources, kind: str, count: int, seconds: float) -> Row:
    """Consumers that take every frame they can; counts start once every source delivered a frame."""
    async with opened(sources, kind, count) as streams:
        lags: list[float] = []

        async def consume(source: Source) -> None:
            try:
                while True:
                    frame = await source.recv()
                    lags.append(time.time() - frame.capture_time)
            except (SourceEnded, SourceError):
                return

        consumers = [asyncio.create_task(consume(source)) for source in streams]
        await _until(lambda: all(source.status().frames_delivered > 0 for source in streams), 30, kind)
        lags.clear()
        before = [source.status() for source in streams]
        await asyncio.sleep(seconds)
        after = [source.status() for source in streams]
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    return Row(
        kind,
        count,
        _rate([a.frames_decoded - b.frames_decoded for a, b in zip(after, before, strict=True)], seconds),
        _rate([a.frames_delivered - b.frames_delivered for a, b in zip(after, before, strict=True)], seconds),
        _rate([a.frames_dropped - b.frames_dropped for a, b in zip(after, before, strict=True)], seconds),
        statistics.fmean(lags) if lags else float("nan"),
        max(lags, default=float("nan")),
    )


async def measure_engine(
    sources: Sources, engine: Engine, encoder: ThreadPoolExecutor, kind: str, count: int, seconds: float
) -> Row:
    """StreamRunners into one engine; counts start once every stream has ingested a frame."""
    async with opened(sources, kind, count) as streams:
        ids = [f"{kind}-{count}-{i}" for i in range(count)]
        runners = [
            StreamRunner(engine, stream_id, source, executor=encoder)
            for stream_id, source in zip(ids, streams, strict=True)
        ]
        for runner in runners:
            runner.start()
        try:
            await _until(lambda: all(runner.frames_ingested > 0 for runner in runners), 60, kind)
            before = [runner.status() for runner in runners]
            lags: list[float] = []
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                await asyncio.sleep(SAMPLE_EVERY_S)
                lags.extend(runner.lag_s for runner in runners)
            after = [runner.status() for runner in runners]
        finally:
            await asyncio.gather(*(runner.stop() for runner in runners))
            for stream_id in ids:
                engine.remove_stream(stream_id)
    return Row(
        kind,
        count,
        _rate([a.source.frames_decoded - b.source.frames_decoded for a, b in zip(after, before, strict=True)], seconds),
        _rate([a.frames_ingested - b.frames_ingested for a, b in zip(after, before, strict=True)], seconds),
        _rate([a.source.frames_dropped - b.source.frames_dropped for a, b in zip(after, before, strict=True)], seconds),
        statistics.fmean(lags),
        max(lags),
    )


def _rate(counts: Sequence[int], seconds: float) -> float:
    return statistics.fmean(counts) / seconds


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no frames within {timeout:g} s")
        await asyncio.sleep(0.05)


def table(rows: Sequence[Row], delivered: str) -> str:
    lines = [
        f"| source | streams | decoded fps / stream | {delivered} fps / stream | {delivered} fps total "
        "| dropped / s / stream | lag mean s | lag max s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.kind} | {row.streams} | {row.decoded_fps:.1f} | {row.delivered_fps:.1f} "
            f"| {row.delivered_fps * row.streams:.1f} | {row.dropped_per_s:.1f} | {row.lag_mean_s:.3f} "
            f"| {row.lag_max_s:.3f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    began = time.monotonic()
    adapter = EmbeddedAdapter.load()
    engine = Engine(adapter)
    # One worker: the streams share one model, and its OpenCV detector must not run two frames at once.
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    source_rows: list[Row] = []
    engine_rows: list[Row] = []
    with RtspServer() as server:
        sources = Sources(server)
        for kind in KINDS:
            for count in args.streams:
                source_rows.append(await measure_sources(sources, kind, count, args.seconds))
                print(table(source_rows[-1:], "delivered").splitlines()[-1], flush=True)
                engine_rows.append(await measure_engine(sources, engine, encoder, kind, count, args.seconds))
                print(table(engine_rows[-1:], "ingested").splitlines()[-1], flush=True)
    encoder.shutdown()
    command = "python scripts/bench_sources.py " + shlex.join(sys.argv[1:])
    return "\n".join(
        [
            "# Live sources: frames per second, alone and into the engine",
            "",
            f"`{command.strip()}` — {datetime.now().astimezone().isoformat(timespec='seconds')}, "
            f"{args.seconds:g} s per measurement, whole run {time.monotonic() - began:.0f} s, model {adapter.name}",
            "",
            "Live sources run at 15 fps, 320x240; the file is the 25 fps, 640x272 bikes clip in real time.",
            "Lag: wall time from a frame's capture to its delivery (sources only) or to the end of its prefill.",
            "",
            "## Sources only (a consumer per stream takes frames as fast as they come)",
            "",
            table(source_rows, "delivered"),
            "",
            "## Into one engine (embedded CPU adapter, one encoding worker, one memory per stream)",
            "",
            table(engine_rows, "ingested"),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent stream counts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_sources.md")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
