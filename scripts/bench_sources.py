"""Benchmark: how fast each kind of live source delivers frames, alone and into the engine, 1 to 8 at once,
and what encoding the frames of several streams as one batch changes.

For each source kind (RTSP from a local GStreamer server, a file played in real time, synthetic
video, WebRTC from an in-process aiortc peer) and 1, 2, 4 and 8 concurrent streams:

- sources only: a consumer per stream takes frames as fast as the source gives them; reports
  frames decoded and delivered per second per stream, frames dropped as stale, and the lag
  (capture to delivery);
- into the engine: a StreamRunner per stream ingests into its own memory of one Engine with the
  embedded CPU adapter (one model loaded, one encoding worker, the engine's shared ingest
  scheduler); reports frames ingested per second per stream and in total, frames dropped (by the
  source or as stale in ingest), and the lag from capture to the end of the frame's prefill.

Then, for 1, 2, 4 and 8 streams, batched against per-frame encoding:

- same frames: rounds of one frame per stream (real clip and synthetic frames) pushed with
  `Engine.push_frames`, once with every batchable stage batched and once with none, alternating
  round by round; reports milliseconds per frame by stage and in all (medians over rounds);
- live: half real clips looping in real time, half synthetic streams, into one engine: each
  stream pushing its own frames (as before the scheduler), the scheduler one frame at a time, and
  the scheduler with batches (the default batched stages) of up to 4 frames and of all the
  streams; reports frames ingested per second in total, frames dropped, the lag, the engine's
  milliseconds per frame and the mean batch size.

Every live source runs at 15 fps, 320x240 (the file is the 25 fps, 640x272 bikes clip).

    python scripts/bench_sources.py [--seconds 5] [--streams 1 2 4 8] [--rounds 6] [--repeats 2]
        [--parts sources engine encoder live] [--out scripts/results/bench_sources.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

import cv2
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from sources.base import Source
from sources.file import FileSource
from sources.frame import Frame, SourceEnded, SourceError
from sources.looping import LoopingFile
from sources.rtsp import RtspOptions, RtspSource
from sources.synthetic import PATTERNS, SyntheticSource, SyntheticTrack, render
from sources.webrtc import WebRTCSource, accept_offer
from streamer.adapters.embedded import BATCHABLE_STAGES, BATCHED_STAGES, EmbeddedAdapter
from streamer.batching import DEFAULT_MAX_BATCH, IngestScheduler
from streamer.engine import Engine
from streamer.evaluation.needles import footage_dir
from streamer.ingest import StreamRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rtsp_server import RtspServer

KINDS = ("rtsp", "file", "synthetic", "webrtc")
PARTS = ("sources", "engine", "encoder", "live")
LIVE_FPS = 15.0
SAMPLE_EVERY_S = 0.25
# A frame's encoding stages in the embedded adapter (before its prefill), as IngestStats names them.
ENCODER_STAGES = ("features", "detector", "ocr", "colours", "text_embedding")
MIDDLE_BATCH = 4  # a batch size between one frame and all the streams, for the live comparison
MODES = ("per-frame", "batched")  # the same frames: no stage batched, or every batchable stage


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


@dataclass(frozen=True)
class EncoderRow:
    """The same rounds of frames, one per stream, pushed with batched or per-frame encoding.

    stage_ms: milliseconds per frame of each encoding stage and of the prefill, the median over rounds;
    also "encoder" (all encoding stages) and "cpu" (CPU time of the process during `push_frames`,
    all threads, which another process's load inflates less than wall time).
    wall_ms: wall milliseconds of `push_frames` per frame (encoding and prefill), the median over rounds.
    """

    streams: int
    mode: str
    rounds: int
    stage_ms: dict[str, float]
    wall_ms: float

    @property
    def encoder_ms(self) -> float:
        return self.stage_ms["encoder"]


def clip_pictures(count: int) -> list[np.ndarray]:
    """`count` frames of the bikes clip, spread evenly over it."""
    capture = cv2.VideoCapture(str(footage_dir() / "bikes.mp4"))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    pictures: list[np.ndarray] = []
    for index in range(frames):
        ok, pixels = capture.read()
        if not ok:
            break
        if index % max(1, frames // count) == 0 and len(pictures) < count:
            pictures.append(pixels)
    capture.release()
    return pictures


def round_frames(pictures: Sequence[np.ndarray], count: int, round_index: int) -> list[Frame]:
    """Round `round_index` of frames, one per stream: clip frames for even streams, synthetic for odd ones."""
    frames = []
    for stream in range(count):
        if stream % 2 == 0:
            pixels = pictures[(round_index + stream) % len(pictures)]
        else:
            pixels = render(PATTERNS[stream // 2 % len(PATTERNS)], round_index * 15, LIVE_FPS, 320, 240)
        frames.append(Frame(pixels, float(round_index), time.time(), round_index))
    return frames


def measure_encoder(
    adapter: EmbeddedAdapter, pictures: Sequence[np.ndarray], count: int, rounds: int
) -> list[EncoderRow]:
    """Each mode has its own engine and streams, fed the same frames. The modes alternate round by round
    (and which goes first), so both see the same machine load, and each figure is the median over rounds,
    so a round slowed by another process does not decide it. The first round of each is a warm-up."""
    engines = {mode: Engine(adapter) for mode in MODES}
    ids = [f"encoder-{count}-{i}" for i in range(count)]
    for engine in engines.values():
        for stream_id in ids:
            engine.add_stream(stream_id)
    per_round: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_index in range(rounds + 1):
        frames = round_frames(pictures, count, round_index)
        for mode in MODES if round_index % 2 == 0 else MODES[::-1]:
            engine = engines[mode]
            before = [dict(engine.status(stream_id).ingest_ms_total) for stream_id in ids]
            adapter.batched_stages = BATCHABLE_STAGES if mode == "batched" else frozenset()
            started, cpu_started = time.perf_counter(), time.process_time()
            engine.push_frames(list(zip(ids, frames, strict=True)))
            wall_ms = (time.perf_counter() - started) * 1000
            cpu_ms = (time.process_time() - cpu_started) * 1000
            adapter.batched_stages = BATCHED_STAGES
            if round_index == 0:
                continue
            stage_ms = {"wall": wall_ms / count, "cpu": cpu_ms / count}
            for stream_id, earlier in zip(ids, before, strict=True):
                for stage, total in engine.status(stream_id).ingest_ms_total.items():
                    stage_ms[stage] = stage_ms.get(stage, 0.0) + (total - earlier.get(stage, 0.0)) / count
            stage_ms["encoder"] = sum(stage_ms.get(stage, 0.0) for stage in ENCODER_STAGES)
            per_round[mode].append(stage_ms)
    rows = []
    for mode in MODES:
        stages = {stage for measured in per_round[mode] for stage in measured}
        medians = {stage: statistics.median(m.get(stage, 0.0) for m in per_round[mode]) for stage in stages}
        wall = medians.pop("wall")
        rows.append(EncoderRow(count, mode, rounds, medians, wall))
    return rows


@dataclass(frozen=True)
class LiveRow:
    """Streams into one engine for `seconds`: ingest rate, lag and the encoder's cost."""

    streams: int
    mode: str
    ingested_fps: float  # all streams together
    stale_per_s: float  # per stream: frames dropped by the source or as stale in ingest
    lag_mean_s: float
    lag_max_s: float
    encoder_ms: float  # per frame: wall time in the engine (encoding and prefill)
    batch_size: float  # mean frames per batch


class OwnFramePusher:
    """Ingest as it was before the shared scheduler: a stream takes a frame, then waits its turn at the encoder."""

    def __init__(self, engine: Engine, stream_id: str, source: Source, encoder: ThreadPoolExecutor) -> None:
        self.engine, self.stream_id, self.source, self.encoder = engine, stream_id, source, encoder
        self.frames_ingested = 0
        self.lag_s = 0.0
        self.encode_seconds = 0.0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.encoder, self.engine.add_stream, self.stream_id)
        while True:
            frame = await self.source.recv()
            await loop.run_in_executor(self.encoder, self.push, frame)
            self.frames_ingested += 1
            self.lag_s = time.time() - frame.capture_time

    def push(self, frame: Frame) -> None:
        started = time.perf_counter()
        self.engine.push_frame(self.stream_id, frame)
        self.encode_seconds += time.perf_counter() - started

    async def stop(self) -> None:
        self.source.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def live_sources(count: int) -> list[Source]:
    """Half the streams the bikes clip looping in real time, half synthetic video."""
    return [
        LoopingFile(footage_dir() / "bikes.mp4", 25.0) if i % 2 == 0 else SyntheticSource("ball", fps=LIVE_FPS)
        for i in range(count)
    ]


@dataclass(frozen=True)
class LiveMode:
    """How streams ingest: each pushing its own frames, or the shared scheduler with batches of at most max_batch."""

    name: str
    max_batch: int = 0  # 0: each stream pushes its own frames
    stages: frozenset[str] = frozenset()


def live_modes(count: int) -> list[LiveMode]:
    """Own frames; the scheduler one frame at a time; batches of up to MIDDLE_BATCH frames and of all streams."""
    modes = [LiveMode("own frames"), LiveMode("one at a time", 1)]
    for size in sorted({min(count, MIDDLE_BATCH), count} - {1}):
        modes.append(LiveMode(f"batches of <= {size}", size, BATCHED_STAGES))
    return modes


async def measure_live(
    adapter: EmbeddedAdapter, encoder: ThreadPoolExecutor, count: int, mode: LiveMode, seconds: float
) -> LiveRow:
    engine = Engine(adapter)
    adapter.batched_stages = mode.stages
    sources = live_sources(count)
    ids = [f"live-{count}-{i}" for i in range(count)]
    scheduler = IngestScheduler(engine, encoder, max(1, mode.max_batch))
    runners: list[StreamRunner | OwnFramePusher] = [
        OwnFramePusher(engine, stream_id, source, encoder)
        if not mode.max_batch
        else StreamRunner(engine, stream_id, source, executor=encoder, scheduler=scheduler)
        for stream_id, source in zip(ids, sources, strict=True)
    ]
    pushers = [runner for runner in runners if isinstance(runner, OwnFramePusher)]
    scheduled = [runner for runner in runners if isinstance(runner, StreamRunner)]

    def encoded() -> tuple[int, float, int]:
        """Frames encoded, seconds spent encoding them and batches, so far."""
        if pushers:
            frames = sum(p.frames_ingested for p in pushers)
            return frames, sum(p.encode_seconds for p in pushers), frames
        return scheduler.frames_encoded, scheduler.encode_seconds, scheduler.batches

    def dropped() -> int:
        """Frames the sources skipped, or ingest dropped as stale, so far."""
        if pushers:
            return sum(source.status().frames_dropped for source in sources)
        return sum(runner.status().source.frames_dropped for runner in scheduled)

    for runner in runners:
        runner.start()
    try:
        await _until(lambda: all(runner.frames_ingested > 0 for runner in runners), 120, mode.name)
        ingested_before = sum(runner.frames_ingested for runner in runners)
        encoded_before, dropped_before = encoded(), dropped()
        lags: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(SAMPLE_EVERY_S)
            lags.extend(runner.lag_s for runner in runners)
        elapsed = time.monotonic() - started
        ingested = sum(runner.frames_ingested for runner in runners) - ingested_before
        frames_after, spent_after, batches_after = encoded()
        frames = frames_after - encoded_before[0]
        spent = spent_after - encoded_before[1]
        batches = batches_after - encoded_before[2]
        stale = dropped() - dropped_before
    finally:
        await asyncio.gather(*(runner.stop() for runner in runners))
        adapter.batched_stages = BATCHED_STAGES
    return LiveRow(
        count,
        mode.name,
        ingested / elapsed,
        stale / elapsed / count,
        statistics.fmean(lags),
        max(lags),
        spent * 1000 / max(1, frames),
        frames / max(1, batches),
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


def encoder_table(rows: Sequence[EncoderRow]) -> str:
    """Per stream count, per-frame / batched: ms per frame of each batchable stage, all encoding and the push."""
    columns = ("features", "detector", "text_embedding")
    lines = [
        "| streams | "
        + " | ".join(f"{stage} ms" for stage in columns)
        + " | encoder ms / frame | prefill ms / frame | push ms / frame | push CPU ms / frame | frames / s "
        "| encoder batched / per-frame |",
        "|---:|" + "---:|" * (len(columns) + 6),
    ]
    by_count: dict[int, dict[str, EncoderRow]] = {}
    for row in rows:
        by_count.setdefault(row.streams, {})[row.mode] = row
    for count, modes in by_count.items():
        single, batched = modes["per-frame"], modes["batched"]

        def pair(single_ms: float, batched_ms: float) -> str:
            return f"{single_ms:.1f} / {batched_ms:.1f}"

        cells = [pair(single.stage_ms.get(stage, 0.0), batched.stage_ms.get(stage, 0.0)) for stage in columns]
        cells += [
            pair(single.encoder_ms, batched.encoder_ms),
            pair(single.stage_ms.get("prefill", 0.0), batched.stage_ms.get("prefill", 0.0)),
            pair(single.wall_ms, batched.wall_ms),
            pair(single.stage_ms["cpu"], batched.stage_ms["cpu"]),
            f"{1000 / single.wall_ms:.2f} / {1000 / batched.wall_ms:.2f}",
            f"{batched.encoder_ms / single.encoder_ms:.2f}",
        ]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_row(rows: Sequence[LiveRow]) -> LiveRow:
    """Repeated measurements of one mode: the median of each figure, the largest lag."""
    return LiveRow(
        rows[0].streams,
        rows[0].mode,
        statistics.median(row.ingested_fps for row in rows),
        statistics.median(row.stale_per_s for row in rows),
        statistics.median(row.lag_mean_s for row in rows),
        max(row.lag_max_s for row in rows),
        statistics.median(row.encoder_ms for row in rows),
        statistics.median(row.batch_size for row in rows),
    )


def live_table(rows: Sequence[LiveRow]) -> str:
    lines = [
        "| streams | ingest | ingested fps total | dropped / s / stream | lag mean s | lag max s "
        "| engine ms / frame | frames / batch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.streams} | {row.mode} | {row.ingested_fps:.2f} | {row.stale_per_s:.1f} | {row.lag_mean_s:.3f} "
            f"| {row.lag_max_s:.3f} | {row.encoder_ms:.0f} | {row.batch_size:.1f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    adapter = EmbeddedAdapter.load()
    engine = Engine(adapter)
    # One worker: the streams share one model, and its OpenCV detector must not run two frames at once.
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    source_rows: list[Row] = []
    engine_rows: list[Row] = []
    encoder_rows: list[EncoderRow] = []
    live_rows: list[LiveRow] = []
    if "sources" in args.parts or "engine" in args.parts:
        with RtspServer() as server:
            sources = Sources(server)
            for kind in KINDS:
                for count in args.streams:
                    if "sources" in args.parts:
                        source_rows.append(await measure_sources(sources, kind, count, args.seconds))
                        print(table(source_rows[-1:], "delivered").splitlines()[-1], flush=True)
                    if "engine" in args.parts:
                        engine_rows.append(await measure_engine(sources, engine, encoder, kind, count, args.seconds))
                        print(table(engine_rows[-1:], "ingested").splitlines()[-1], flush=True)
    if "encoder" in args.parts:
        pictures = clip_pictures(20)
        for count in args.streams:
            encoder_rows.extend(measure_encoder(adapter, pictures, count, args.rounds))
            print(encoder_table(encoder_rows[-2:]).splitlines()[-1], flush=True)
    if "live" in args.parts:
        for count in args.streams:
            measured: dict[str, list[LiveRow]] = {}
            modes = live_modes(count)
            for repeat in range(args.repeats):
                for mode in modes if repeat % 2 == 0 else modes[::-1]:
                    row = await measure_live(adapter, encoder, count, mode, args.seconds)
                    measured.setdefault(mode.name, []).append(row)
                    print(live_table([row]).splitlines()[-1], flush=True)
            live_rows.extend(median_row(measured[mode.name]) for mode in modes)
    encoder.shutdown()
    command = "python scripts/bench_sources.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Live sources: frames per second, alone and into the engine",
        "",
        f"`{command.strip()}` — {datetime.now().astimezone().isoformat(timespec='seconds')}, "
        f"{args.seconds:g} s per measurement, whole run {time.monotonic() - began:.0f} s, model {adapter.name}; "
        f"{os.cpu_count()} CPUs, load average (1 min) {load_before:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        "Live sources run at 15 fps, 320x240; the file is the 25 fps, 640x272 bikes clip in real time.",
        "Lag: wall time from a frame's capture to its delivery (sources only) or to the end of its prefill.",
        "",
    ]
    if source_rows:
        lines += [
            "## Sources only (a consumer per stream takes frames as fast as they come)",
            "",
            table(source_rows, "delivered"),
            "",
        ]
    if engine_rows:
        lines += [
            "## Into one engine (embedded CPU adapter, one encoding worker, one memory per stream)",
            "",
            "Dropped: frames the source skipped, plus those a newer frame replaced before the encoder was free.",
            "",
            table(engine_rows, "ingested"),
            "",
        ]
    if encoder_rows:
        lines += [
            "## Batched against per-frame encoding: the same frames",
            "",
            f"{args.rounds} rounds of one frame per stream (bikes clip frames for even streams, synthetic for odd "
            "ones) through `Engine.push_frames`; the two modes alternate round by round, each with its own "
            f"streams. Batched: {', '.join(sorted(BATCHABLE_STAGES))}. Cells: per-frame / batched, milliseconds "
            "per frame, medians over rounds (a batched stage's time is shared by the frames it covered; the "
            "detector and OCR run only for the frames the curvature scorer keeps in full). Push CPU: CPU time of "
            "the process, all threads, during the push.",
            "",
            encoder_table(encoder_rows),
            "",
        ]
    if live_rows:
        lines += [
            "## Batched against per-frame encoding: live streams into one engine",
            "",
            "Half the streams are the bikes clip looping in real time, half synthetic video at 15 fps. Ingest: "
            "`own frames`, each stream takes a frame and waits its turn at the encoder (as before the "
            "scheduler); `one at a time`, the shared scheduler encoding the newest frame of one stream at a time; "
            "`batches of <= n`, the scheduler taking the newest frames of up to n streams and batching "
            f"{', '.join(sorted(BATCHED_STAGES))} (the scheduler's default is {DEFAULT_MAX_BATCH}). "
            "Engine ms / frame: wall time in the engine per frame (encoding and prefill). Each mode was measured "
            f"{args.repeats} times, the modes interleaved; the table gives the medians and the largest lag.",
            "",
            live_table(live_rows),
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent stream counts")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of frames per stream count (same frames)")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each live mode, interleaved")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
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
