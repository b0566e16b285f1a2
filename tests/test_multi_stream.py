"""Four live sources of four kinds ingest at once into their own memories of one engine with one model loaded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from rtsp_server import RtspServer, free_port

from sources.base import Source, SourceState
from sources.file import FileSource
from sources.rtsp import RtspOptions, RtspSource
from sources.synthetic import SyntheticSource, SyntheticTrack
from sources.webrtc import accept_offer
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.ingest import StreamRunner

OPTIONS = RtspOptions(open_timeout_s=2.0, read_timeout_s=5.0, watchdog_s=3.0, backoff_initial_s=0.1, max_attempts=2)


@pytest.fixture
def server() -> Iterator[RtspServer]:
    with RtspServer() as running:
        yield running


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_four_kinds_of_source_ingest_side_by_side(
    embedded_adapter: EmbeddedAdapter, server: RtspServer, bikes_clip: Path
) -> None:
    async def scenario() -> None:
        browser = RTCPeerConnection()
        browser.addTrack(SyntheticTrack(SyntheticSource("checkers", fps=15.0)))
        await browser.setLocalDescription(await browser.createOffer())
        webrtc, answer = await accept_offer(browser.localDescription.sdp, browser.localDescription.type)
        await browser.setRemoteDescription(RTCSessionDescription(**answer))

        sources: dict[str, Source] = {
            "rtsp": RtspSource(server.url("live"), OPTIONS),
            "file": FileSource(bikes_clip, fps=None, realtime=True),
            "synthetic": SyntheticSource("bars", fps=15.0),
            "webrtc": webrtc,
            # A camera that is not there: it must fail on its own without disturbing the others.
            "gone": RtspSource(f"rtsp://127.0.0.1:{free_port()}/cam", OPTIONS),
        }
        engine = Engine(embedded_adapter)
        # One model, one encoding worker: the streams' frames go through the engine's shared
        # scheduler, which encodes the newest frame of each stream in turn.
        encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        runners = {
            name: StreamRunner(engine, name, source, fps=2.0, executor=encoder) for name, source in sources.items()
        }
        for runner in runners.values():
            runner.start()
        live = [name for name in runners if name != "gone"]
        try:
            await _until(lambda: runners["gone"].status().source.state == SourceState.FAILED, 60, "the failure")
            ingested_at_failure = {name: runners[name].frames_ingested for name in live}
            await _until(
                lambda: all(runners[name].frames_ingested >= max(3, ingested_at_failure[name] + 1) for name in live),
                90,
                "three frames per live stream",
            )
            for name in live:
                status = runners[name].status()
                # The 10 s clip plays in real time whatever the encoder keeps up with, so it may be over.
                playing = (SourceState.LIVE, SourceState.ENDED) if name == "file" else (SourceState.LIVE,)
                assert status.source.state in playing, (name, status)
                assert status.error is None
                records = engine.memory(name).records
                assert [record.stream_time for record in records] == sorted(r.stream_time for r in records)
            gone = runners["gone"].status()
            assert gone.error is not None and "connection refused" in gone.error
            assert engine.memory("gone").records == []
            assert len({id(engine.memory(name)) for name in runners}) == len(runners), "one memory each"
        finally:
            await asyncio.gather(*(runner.stop() for runner in runners.values()))
            await webrtc.wait_closed()
            await browser.close()
            encoder.shutdown()
        assert all(source.status().state in (SourceState.ENDED, SourceState.FAILED) for source in sources.values())
        # Stopping waits for the frames being encoded, so every frame in memory has been counted.
        for name in live:
            assert len(engine.memory(name).records) == runners[name].frames_ingested

    asyncio.run(scenario())
