"""WebRTC sources: a real aiortc peer posts its offer to the real HTTP endpoint and streams synthetic video."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection, RTCSessionDescription

import sources.webrtc
from sources.base import SourceState
from sources.frame import SourceEnded
from sources.synthetic import SyntheticSource, SyntheticTrack, read_frame_number
from sources.webrtc import OfferHandler, SourceCallback, WebRTCSource
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.ingest import StreamRunner

FPS = 15.0


@dataclass
class Endpoint:
    server: TestServer
    handler: OfferHandler
    sources: dict[str, WebRTCSource]

    async def post(self, body: Any) -> tuple[int, dict[str, str]]:
        async with ClientSession() as http:
            kwargs = {"data": body} if isinstance(body, str) else {"json": body}
            async with http.post(self.server.make_url("/webrtc/offer"), **kwargs) as response:
                return response.status, await response.json()


@asynccontextmanager
async def endpoint(on_source: SourceCallback | None = None) -> AsyncIterator[Endpoint]:
    """A real HTTP server on 127.0.0.1 with the offer handler mounted at POST /webrtc/offer."""
    sources: dict[str, WebRTCSource] = {}
    handler = OfferHandler(on_source or sources.__setitem__)
    app = web.Application()
    app.router.add_post("/webrtc/offer", handler.handle_offer)
    app.on_shutdown.append(handler.close)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Endpoint(server, handler, sources)
    finally:
        await server.close()


async def _offer(peer: RTCPeerConnection) -> dict[str, str]:
    await peer.setLocalDescription(await peer.createOffer())
    return {"sdp": peer.localDescription.sdp, "type": peer.localDescription.type}


@asynccontextmanager
async def camera_peer(endpoint: Endpoint, stream_id: str, camera: SyntheticSource) -> AsyncIterator[RTCPeerConnection]:
    """A browser stand-in: sends `camera` as its video track and completes the offer/answer exchange."""
    peer = RTCPeerConnection()
    peer.addTrack(SyntheticTrack(camera))
    try:
        status, answer = await endpoint.post({**await _offer(peer), "stream_id": stream_id})
        assert status == 200, answer
        assert answer["type"] == "answer" and answer["stream_id"] == stream_id
        await peer.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        yield peer
    finally:
        await peer.close()


def test_frames_arrive_and_a_stalled_consumer_gets_the_newest() -> None:
    async def scenario() -> None:
        camera = SyntheticSource(fps=FPS)
        async with endpoint() as server, camera_peer(server, "cam", camera):
            source = server.sources["cam"]
            started = time.monotonic()
            frames = [await asyncio.wait_for(source.recv(), 10) for _ in range(10)]
            assert time.monotonic() - started < 5
            assert source.state == SourceState.LIVE
            assert all(frame.pixels.shape == (240, 320, 3) for frame in frames)
            numbers = [read_frame_number(frame.pixels) for frame in frames]
            assert numbers == sorted(numbers) and len(set(numbers)) == 10, numbers

            dropped_before = source.frames_dropped
            await asyncio.sleep(2.0)  # a consumer busy elsewhere; the receiving task keeps draining
            after_stall = await source.recv()
            newest_sent = camera.frames_delivered - 1
            # A backlog would start 30 frames behind; encode, send and decode may hold back a few.
            assert read_frame_number(after_stall.pixels) >= newest_sent - 4, "the newest frame, not a backlog"
            assert time.time() - after_stall.capture_time < 0.25
            assert source.frames_dropped - dropped_before >= 2.0 * FPS * 0.7

    asyncio.run(scenario())


def test_peer_hanging_up_ends_the_source() -> None:
    async def scenario() -> None:
        async with endpoint() as server:
            async with camera_peer(server, "cam", SyntheticSource(fps=FPS)):
                source = server.sources["cam"]
                await asyncio.wait_for(source.recv(), 10)
            with pytest.raises(SourceEnded):
                for _ in range(100):
                    await asyncio.wait_for(source.recv(), 10)
            assert source.state == SourceState.ENDED
            assert source.reason == "the peer closed the stream"

    asyncio.run(scenario())


def test_offer_becomes_an_engine_stream(embedded_adapter: EmbeddedAdapter) -> None:
    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        runners: dict[str, StreamRunner] = {}

        def start_ingest(stream_id: str, source: WebRTCSource) -> None:
            runners[stream_id] = StreamRunner(engine, stream_id, source, fps=2.0)
            runners[stream_id].start()

        async with endpoint(start_ingest) as server, camera_peer(server, "browser", SyntheticSource(fps=FPS)):
            deadline = time.monotonic() + 60
            while runners["browser"].frames_ingested < 2:
                assert time.monotonic() < deadline, "two frames should be ingested within a minute"
                await asyncio.sleep(0.1)
            status = runners["browser"].status()
            assert status.source.state == SourceState.LIVE
            assert status.error is None
            records = engine.memory("browser").records
            assert len(records) >= 2
            assert records[1].stream_time > records[0].stream_time
            await runners["browser"].stop()

    asyncio.run(scenario())


def test_bad_offers_are_refused_in_one_sentence() -> None:
    async def scenario() -> None:
        async with endpoint() as server:
            no_video = RTCPeerConnection()
            no_video.createDataChannel("chat")
            data_only = await _offer(no_video)
            await no_video.close()
            cases: list[tuple[Any, str]] = [
                ("not json", "not JSON"),
                ({"type": "offer"}, "needs string fields 'sdp' and 'type'"),
                ({**data_only, "type": "answer"}, "Expected an SDP offer"),
                ({"sdp": "hello", "type": "offer"}, "not SDP"),
                (data_only, "no video track"),
                ({**data_only, "stream_id": 7}, "'stream_id' must be a string"),
                ({**data_only, "stream_id": "cam\nERROR forged line"}, "A stream_id is 1-64 letters"),
                ({"sdp": "v=0\r\nm=video x\r\n", "type": "offer"}, "The SDP offer is malformed (AssertionError)"),
            ]
            for body, fragment in cases:
                status, reply = await server.post(body)
                assert status == 400, (body, reply)
                assert fragment in reply["error"]
                assert reply["error"].endswith(".") and "\n" not in reply["error"]
            assert server.sources == {}

    asyncio.run(scenario())


def test_refusal_by_the_server_closes_the_peer() -> None:
    async def scenario() -> None:
        refused: list[WebRTCSource] = []

        def refuse(stream_id: str, source: WebRTCSource) -> None:
            refused.append(source)
            raise ValueError(f"Stream '{stream_id}' already exists; pick another stream_id.")

        async with endpoint(refuse) as server:
            peer = RTCPeerConnection()
            peer.addTrack(SyntheticTrack(SyntheticSource(fps=FPS)))
            status, reply = await server.post({**await _offer(peer), "stream_id": "taken"})
            await peer.close()
        assert status == 409
        assert reply["error"] == "Stream 'taken' already exists; pick another stream_id."
        assert refused[0].peer.connectionState == "closed"
        assert refused[0].state == SourceState.ENDED

    asyncio.run(scenario())


def test_peers_contact_no_stun_server_unless_configured_and_ended_peers_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configurations: list[Any] = []

    class Recording(RTCPeerConnection):
        def __init__(self, configuration: Any = None) -> None:
            configurations.append(configuration)
            super().__init__(configuration)

    monkeypatch.setattr(sources.webrtc, "RTCPeerConnection", Recording)

    async def scenario() -> None:
        async with endpoint() as server:
            for stream_id in ("first", "second"):
                async with camera_peer(server, stream_id, SyntheticSource(fps=FPS)):
                    source = server.sources[stream_id]
                    await asyncio.wait_for(source.recv(), 10)
                with pytest.raises(SourceEnded):
                    for _ in range(100):
                        await asyncio.wait_for(source.recv(), 10)
            assert list(server.handler.sources) == ["second"], "the ended first peer was dropped at the next offer"
            server.handler.ice_servers = ["stun:stun.example.org:3478"]
            async with camera_peer(server, "third", SyntheticSource(fps=FPS)):
                pass

    asyncio.run(scenario())
    assert [c.iceServers for c in configurations[:2]] == [[], []], "no STUN server by default"
    assert [server.urls for server in configurations[2].iceServers] == [["stun:stun.example.org:3478"]]
