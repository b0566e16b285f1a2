"""The streams of a server in one process: for each, its source, its ingest runner and the newest frame.

`LocalHub` is the `streamer.server.hub.Hub` of one engine: it adds and removes streams at run time
(from the config at start, from `POST /streams`, from a browser's WebRTC offer), answers questions on
worker threads and serves the read-only views the HTTP API and the page need (status, memory
timeline, a JPEG of the newest frame). Views read the engine's memories without taking their locks,
so a view never waits for a frame's prefill on the event loop. A Ray worker process holds one too
(`streamer.cluster.worker`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
from collections.abc import AsyncIterator, Sequence
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
from sources.rtsp import RtspOptions
from streamer.decoding import SchedulerStats
from streamer.engine import Engine, UnknownStream
from streamer.ingest import IngestStatus, StreamRunner
from streamer.query import Answer
from streamer.server.hub import AnswerItem, EventCallback, Hub, StreamExists, StreamReport
from streamer.watches import WatchEvent, WatchInfo, WatchSpec

log = logging.getLogger(__name__)

PREVIEW_WIDTH = 640
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
PREVIEW_QUALITY = 80


def open_source(
    url: str, fps: float, loop: bool = False, speed: float = 1.0, rtsp: RtspOptions | None = None
) -> Source:
    """The live source behind `url` (see `sources.open`); files play in real time (or `speed` times
    faster), looping if asked; an RTSP camera connects with `rtsp` (default RtspOptions).

    Raises SourceError with one sentence when it cannot be opened.
    """
    is_file = not _URL_SCHEME.match(url) or url.startswith("file://")
    if loop and not is_file:
        raise SourceError(f"Only video files can loop, and '{url}' is not one; leave loop off for it.")
    if speed != 1.0 and not (is_file and loop):
        raise SourceError(f"Only a looping video file can play faster than real time; leave speed off for '{url}'.")
    if loop:
        return LoopingFile(Path(url.removeprefix("file://")), fps, speed)
    return sources.open.open_source(url, fps=fps, realtime=True, rtsp_options=rtsp)


@dataclass
class HostedStream:
    stream_id: str
    tap: PreviewTap
    runner: StreamRunner
    # The newest frame's JPEG by sequence number, so clients polling the preview share one encoding.
    preview: tuple[int, bytes] | None = None

    def status(self) -> IngestStatus:
        return self.runner.status()


class LocalHub(Hub):
    """An engine's streams as one server process runs them.

    executor: where ingest runs (None: the loop's default executor); answer_executor: where answers
    are generated; open_executor: where sources are opened (opening may hang: never on ingest threads).
    """

    def __init__(
        self,
        engine: Engine,
        executor: Executor | None = None,
        answer_executor: Executor | None = None,
        open_executor: Executor | None = None,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.model_name = engine.adapter.name
        self.executor = executor
        self.answer_executor = answer_executor
        self.open_executor = open_executor
        self.open_timeout_s = open_timeout_s
        self.streams: dict[str, HostedStream] = {}
        self._reserved: set[str] = set()

    def stream_ids(self) -> list[str]:
        return sorted(self.streams)

    def has(self, stream_id: str) -> bool:
        return stream_id in self.streams

    def get(self, stream_id: str) -> HostedStream | None:
        return self.streams.get(stream_id)

    def _hosted(self, stream_id: str) -> HostedStream:
        hosted = self.streams.get(stream_id)
        if hosted is None:
            raise UnknownStream(stream_id)
        return hosted

    async def add_stream(
        self,
        stream_id: str,
        url: str,
        fps: float,
        loop: bool = False,
        source: Source | None = None,
        watches: Sequence[tuple[str, WatchSpec]] = (),
    ) -> StreamReport:
        if source is None:
            self._check_free(stream_id)
            opening = asyncio.get_running_loop().run_in_executor(self.open_executor, open_source, url, fps, loop)
            source = await asyncio.wait_for(opening, self.open_timeout_s)
        await self.add(stream_id, source, fps)
        for watch_id, spec in watches:
            self.engine.add_watch(stream_id, spec, watch_id)
        return await self.report(stream_id)

    def _check_free(self, stream_id: str) -> None:
        if stream_id in self.streams or stream_id in self._reserved or self.engine.has_stream(stream_id):
            raise StreamExists(f"A stream named '{stream_id}' already exists; pick another stream_id.")

    async def add(self, stream_id: str, source: Source, fps: float | None = None) -> HostedStream:
        """Start ingesting `source` as `stream_id`; the hub owns the source from here on."""
        try:
            self._check_free(stream_id)
        except StreamExists:
            source.close()
            raise
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
        # The source samples `fps` per second of stream time; a file played faster delivers them faster.
        rate = fps * source.speed if fps is not None and isinstance(source, LoopingFile) else fps
        runner = StreamRunner(self.engine, stream_id, tap, fps=rate, executor=self.executor)
        hosted = HostedStream(stream_id, tap, runner)
        self.streams[stream_id] = hosted
        runner.start()
        log.info("%s: ingesting %s", stream_id, source.name)
        return hosted

    async def remove(self, stream_id: str, keep_snapshot: bool = False, leave_snapshot: bool = False) -> bool:
        """Stop the stream; False when there is no such stream.

        With snapshots on, `keep_snapshot` writes the memory to its snapshot first (a shutdown: the
        next start restores it); otherwise the snapshot is deleted with the stream (a client removed
        it: a new stream of the same name starts empty); `leave_snapshot` leaves the file as it is.
        """
        hosted = self.streams.pop(stream_id, None)
        if hosted is None:
            return False
        await hosted.runner.stop()
        # Writing the snapshot is disk work: never on the event loop.
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.engine.remove_stream, stream_id, keep_snapshot, leave_snapshot
        )
        log.info("%s: removed", stream_id)
        return True

    async def close(self) -> None:
        """Stop every stream, saving each one's memory when snapshots are on."""
        for stream_id in list(self.streams):
            await self.remove(stream_id, keep_snapshot=True)

    async def reports(self, stream_ids: Sequence[str] | None = None) -> dict[str, StreamReport]:
        found: dict[str, StreamReport] = {}
        for stream_id in self.stream_ids() if stream_ids is None else stream_ids:
            try:
                found[stream_id] = self.describe(stream_id)
            except KeyError:  # not served, or removed meanwhile
                continue
        return found

    def describe(self, stream_id: str) -> StreamReport:
        """One hosted stream's source, ingest counters and memory use."""
        hosted = self._hosted(stream_id)
        status = hosted.status()
        source = status.source
        return StreamReport(
            stream_id=stream_id,
            source=hosted.tap.name,
            state=source.state.value,
            reason=source.reason or status.error,
            ingest_fps=status.ingest_fps,
            lag_s=status.lag_s,
            frames_ingested=status.frames_ingested,
            frames_decoded=source.frames_decoded,
            frames_dropped=source.frames_dropped,
            reconnects=source.reconnects,
            memory=self.engine.status(stream_id),
        )

    async def timeline(self, stream_id: str, limit: int) -> dict[str, Any]:
        """The newest `limit` frame records: time, tier, where the KV block is, and the description."""
        self._hosted(stream_id)
        memory = self.engine.status(stream_id)
        frames = self.engine.frames(stream_id, last=limit)
        return {
            "stream_id": stream_id,
            "as_of": frames[-1].t if frames else 0.0,
            "total_frames": memory.frames,
            "resident_tokens": memory.resident_tokens,
            "budget_tokens": memory.budget_tokens,
            "host_tokens": memory.host_tokens,
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
        hosted = self._hosted(stream_id)
        frame = hosted.tap.latest
        if frame is None:
            return None
        if hosted.preview is not None and hosted.preview[0] == frame.sequence:
            return hosted.preview[1]
        jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_jpeg, frame)
        hosted.preview = (frame.sequence, jpeg)
        return jpeg

    async def ask(
        self, stream_id: str, text: str, options: Sequence[str] | None, cancel: threading.Event
    ) -> AsyncIterator[AnswerItem]:
        """The answer runs on a worker thread; its deltas are handed to the event loop as they come."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[AnswerItem | None] = asyncio.Queue()

        def hand_over(item: AnswerItem) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def generate() -> Answer | None:
            if cancel.is_set():
                return None
            handle = self.engine.ask(stream_id, text, options=list(options or ()), cancel=cancel)
            hand_over(handle.as_of)
            return handle.result(hand_over)

        running = loop.run_in_executor(self.answer_executor, generate)
        # Scheduled after every hand-over of the thread, so the end comes last.
        running.add_done_callback(lambda _: items.put_nowait(None))
        while (item := await items.get()) is not None:
            yield item
        answer = running.result()
        if answer is not None:
            yield answer

    async def add_watch(self, stream_id: str, spec: WatchSpec, watch_id: str) -> WatchInfo:
        self._hosted(stream_id)
        return self.engine.add_watch(stream_id, spec, watch_id)

    async def remove_watch(self, watch_id: str) -> bool:
        return self.engine.remove_watch(watch_id)

    async def watches(self, stream_id: str | None = None) -> list[WatchInfo]:
        return self.engine.watches(stream_id)

    async def model_stats(self) -> dict[str, SchedulerStats]:
        scheduler = self.engine.adapter.scheduler
        return {} if scheduler is None else {"local": dataclasses.replace(scheduler.stats)}

    async def watch_events(self, since: int = 0) -> list[tuple[int, WatchEvent]]:
        return self.engine.watch_events(since)

    def on_watch_event(self, callback: EventCallback) -> None:
        loop = asyncio.get_running_loop()

        # Watch events arise on ingest threads; the callback runs on the loop.
        def hand_over(event: WatchEvent) -> None:
            loop.call_soon_threadsafe(callback, event)

        self.engine.on_watch_event(hand_over)


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
