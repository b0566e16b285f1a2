"""The streams a server hosts: for each, its source, its ingest runner and the newest frame for previews.

The hub adds and removes streams at run time (from the config at start, from `POST /streams`, from
a browser's WebRTC offer) and answers the read-only views the HTTP API and the page need: status,
memory timeline and a JPEG of the newest frame. It reads the engine's memories without taking their
locks, so a view never waits for a frame's prefill on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

import sources.open
from sources.base import Source
from sources.frame import Frame, SourceError
from sources.looping import LoopingFile
from sources.preview import PreviewTap
from streamer.engine import Engine
from streamer.ingest import IngestStatus, StreamRunner

log = logging.getLogger(__name__)

PREVIEW_WIDTH = 640
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
PREVIEW_QUALITY = 80


class StreamExists(ValueError):
    pass


def open_source(url: str, fps: float, loop: bool = False) -> Source:
    """The live source behind `url` (see `sources.open`); files play in real time, looping if asked.

    Raises SourceError with one sentence when it cannot be opened.
    """
    if loop:
        if _URL_SCHEME.match(url) and not url.startswith("file://"):
            raise SourceError(f"Only video files can loop, and '{url}' is not one; leave loop off for it.")
        return LoopingFile(Path(url.removeprefix("file://")), fps)
    return sources.open.open_source(url, fps=fps, realtime=True)


@dataclass
class HostedStream:
    stream_id: str
    tap: PreviewTap
    runner: StreamRunner
    # The newest frame's JPEG by sequence number, so clients polling the preview share one encoding.
    preview: tuple[int, bytes] | None = None

    def status(self) -> IngestStatus:
        return self.runner.status()


class StreamHub:
    """The engine's streams as the server runs them."""

    def __init__(self, engine: Engine, executor: Executor | None = None) -> None:
        self.engine = engine
        self.executor = executor
        self.streams: dict[str, HostedStream] = {}
        self._reserved: set[str] = set()

    def get(self, stream_id: str) -> HostedStream | None:
        return self.streams.get(stream_id)

    async def add(self, stream_id: str, source: Source, fps: float | None = None) -> HostedStream:
        """Start ingesting `source` as `stream_id`; the hub owns the source from here on."""
        if stream_id in self.streams or stream_id in self._reserved or self.engine.has_stream(stream_id):
            source.close()
            raise StreamExists(f"A stream named '{stream_id}' already exists; pick another stream_id.")
        self._reserved.add(stream_id)
        try:
            # The sink prefill is a forward pass: keep it off the event loop.
            await asyncio.get_running_loop().run_in_executor(self.executor, self.engine.add_stream, stream_id)
        except BaseException:
            source.close()
            raise
        finally:
            self._reserved.discard(stream_id)
        tap = PreviewTap(source)
        runner = StreamRunner(self.engine, stream_id, tap, fps=fps, executor=self.executor)
        hosted = HostedStream(stream_id, tap, runner)
        self.streams[stream_id] = hosted
        runner.start()
        log.info("%s: ingesting %s", stream_id, source.name)
        return hosted

    async def remove(self, stream_id: str, keep_snapshot: bool = False) -> bool:
        """Stop the stream; False when there is no such stream.

        With snapshots on, `keep_snapshot` writes the memory to its snapshot first (a shutdown: the
        next start restores it); otherwise the snapshot is deleted with the stream (a client removed
        it: a new stream of the same name starts empty).
        """
        hosted = self.streams.pop(stream_id, None)
        if hosted is None:
            return False
        await hosted.runner.stop()
        # Writing the snapshot is disk work: never on the event loop.
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.engine.remove_stream, stream_id, keep_snapshot
        )
        log.info("%s: removed", stream_id)
        return True

    async def close(self) -> None:
        """Stop every stream, saving each one's memory when snapshots are on."""
        for stream_id in list(self.streams):
            await self.remove(stream_id, keep_snapshot=True)

    def describe(self, stream_id: str) -> dict[str, Any]:
        """Status, counters and memory use of one hosted stream, as JSON."""
        hosted = self.streams[stream_id]
        status = hosted.status()
        source = status.source
        memory = self.engine.status(stream_id)
        return {
            "stream_id": stream_id,
            "source": hosted.tap.name,
            "state": source.state.value,
            "reason": source.reason or status.error,
            "ingest_fps": round(status.ingest_fps, 3),
            "lag_ms": round(status.lag_s * 1000, 1),
            "frames_ingested": status.frames_ingested,
            "frames_decoded": source.frames_decoded,
            "frames_dropped": source.frames_dropped,
            "reconnects": source.reconnects,
            "resident_tokens": memory.resident_tokens,
            "budget_tokens": memory.budget_tokens,
            "frames_in_memory": memory.frames,
        }

    def timeline(self, stream_id: str, limit: int) -> dict[str, Any]:
        """The newest `limit` frame records: time, tier, where the KV block is, and the description."""
        self.streams[stream_id]  # KeyError for a stream the hub does not host
        memory = self.engine.status(stream_id)
        frames = self.engine.frames(stream_id, last=limit)
        return {
            "stream_id": stream_id,
            "as_of": frames[-1].t if frames else 0.0,
            "total_frames": memory.frames,
            "resident_tokens": memory.resident_tokens,
            "budget_tokens": memory.budget_tokens,
            "frames": [
                {
                    "t": round(frame.t, 3),
                    "sequence": frame.sequence,
                    "tier": frame.tier,
                    "location": frame.location,
                    "tokens": frame.tokens,
                    "margin": round(frame.margin, 4),
                    "text": frame.text,
                }
                for frame in frames
            ],
        }

    async def preview_jpeg(self, stream_id: str) -> bytes | None:
        """The newest frame as a JPEG at most PREVIEW_WIDTH wide; None before the first frame."""
        hosted = self.streams[stream_id]
        frame = hosted.tap.latest
        if frame is None:
            return None
        if hosted.preview is not None and hosted.preview[0] == frame.sequence:
            return hosted.preview[1]
        jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_jpeg, frame)
        hosted.preview = (frame.sequence, jpeg)
        return jpeg


def encode_jpeg(frame: Frame) -> bytes:
    pixels = frame.pixels
    height, width = pixels.shape[:2]
    if width > PREVIEW_WIDTH:
        pixels = cv2.resize(
            pixels, (PREVIEW_WIDTH, round(height * PREVIEW_WIDTH / width)), interpolation=cv2.INTER_AREA
        )
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY])
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return bytes(data)
