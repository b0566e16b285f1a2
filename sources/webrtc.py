"""A browser's webcam over WebRTC (aiortc): accept an SDP offer, receive its video track as a source.

The page POSTs its offer (with every ICE candidate gathered, no trickle) and gets the answer back.
A task consumes `track.recv()` and keeps only the newest frame: doing slow work between two
`recv` calls makes the sender's congestion control cut the bitrate and the delay grow, so no
model work happens there. `OfferHandler` is the aiohttp endpoint for `POST /webrtc/offer`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import av
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from sources.base import SourceState
from sources.capture import Captured, CaptureSource
from sources.frame import SourceError

log = logging.getLogger(__name__)
# The stream ids an offer may ask for: what the server's API accepts, and safe in a log line.
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class WebRTCSource(CaptureSource):
    """Frames of the remote video `track` of the peer connection `peer`.

    Ends when the peer hangs up; fails when the connection fails (ICE or DTLS). Closing the source
    closes the peer connection.
    """

    def __init__(self, peer: RTCPeerConnection, track: MediaStreamTrack, name: str = "WebRTC stream") -> None:
        super().__init__(name)
        self.peer = peer
        self.track = track
        self._peer_closed: asyncio.Task[None] | None = None
        peer.on("connectionstatechange", self._on_connection_state)

    async def _supervise(self) -> None:
        """Receive frames as fast as the track delivers them; the slot keeps the newest."""
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                if self.state != SourceState.FAILED:
                    self.set_state(SourceState.ENDED, "the peer closed the stream")
                return
            if not isinstance(frame, av.VideoFrame):
                continue
            now = time.monotonic()
            self.frames_decoded += 1
            # Conversion to BGR waits until the frame is delivered: most frames are replaced first.
            self.slot.put(Captured(functools.partial(frame.to_ndarray, format="bgr24"), time.time(), now))

    def close(self) -> None:
        """Stop receiving and close the peer connection (on the running loop; see `wait_closed`)."""
        super().close()
        if self._peer_closed is None:
            self._peer_closed = asyncio.get_running_loop().create_task(self.peer.close())

    async def wait_closed(self) -> None:
        """Wait until the peer connection has shut down after `close()`."""
        if self._peer_closed is not None:
            await self._peer_closed

    async def _on_connection_state(self) -> None:
        if self.peer.connectionState == "failed":
            self.set_state(SourceState.FAILED, "the connection failed (ICE or DTLS)")
            await self.peer.close()


async def accept_offer(
    sdp: str, type: str, name: str = "WebRTC stream", ice_servers: Sequence[str] = ()
) -> tuple[WebRTCSource, dict[str, str]]:
    """Answer a peer's SDP offer; return the source receiving its video and the answer to send back.

    ice_servers: STUN URLs (`stun:host:port`) for reaching peers beyond the LAN; none by default, so
    nothing is contacted outside the two peers. Raises SourceError when the offer is not an offer,
    cannot be parsed, or carries no video.
    """
    if type != "offer":
        raise SourceError(f"Expected an SDP offer but got type '{type}'; send the result of createOffer().")
    if not sdp.lstrip().startswith("v="):
        raise SourceError(
            "The offer is not SDP (it must start with 'v='); send the offer exactly as createOffer() made it."
        )
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(urls=list(ice_servers))] if ice_servers else []))
    tracks: list[MediaStreamTrack] = []
    peer.on("track", lambda track: tracks.append(track) if track.kind == "video" else None)
    try:
        await peer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type))
        if not tracks:
            raise SourceError("The offer has no video track; add a camera track before calling createOffer().")
        # Candidates are gathered here, so the answer is complete: the page needs no trickle ICE.
        await peer.setLocalDescription(await peer.createAnswer())
    except SourceError:
        await peer.close()
        raise
    except Exception as error:  # the SDP parser fails in many ways (ValueError, KeyError, AssertionError...)
        await peer.close()
        detail = str(error).splitlines()[0][:200] if str(error).strip() else error.__class__.__name__
        raise SourceError(
            f"The SDP offer is malformed ({detail}); send the offer exactly as createOffer() made it."
        ) from None
    except BaseException:
        await peer.close()
        raise
    source = WebRTCSource(peer, tracks[0], name)
    # Start draining now: aiortc queues every frame it receives until someone reads the track.
    source.start()
    local = peer.localDescription
    return source, {"sdp": local.sdp, "type": local.type}


SourceCallback = Callable[[str, WebRTCSource], Awaitable[None] | None]


class OfferHandler:
    """`POST /webrtc/offer` with JSON `{sdp, type, stream_id?}`; answers `{sdp, type, stream_id}`.

    on_source(stream_id, source) is called with each new source, e.g. to start ingesting it; if it
    raises ValueError or SourceError (say, the stream id is taken) the offer is refused with 409.
    Mount `handle_offer` on an aiohttp app and call `close()` on shutdown.
    """

    def __init__(self, on_source: SourceCallback, ice_servers: Sequence[str] = ()) -> None:
        self.on_source = on_source
        self.ice_servers = list(ice_servers)
        self.sources: dict[str, WebRTCSource] = {}
        self._numbers = itertools.count(1)

    async def handle_offer(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except json.JSONDecodeError:
            return _error(400, 'The request body is not JSON; send {"sdp": ..., "type": "offer"}.')
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or not isinstance(body.get("type"), str):
            return _error(400, "The offer needs string fields 'sdp' and 'type'; send the result of createOffer().")
        stream_id = body.get("stream_id") or f"webrtc-{next(self._numbers)}"
        if not isinstance(stream_id, str):
            return _error(400, "'stream_id' must be a string; leave it out to get one assigned.")
        if not STREAM_ID.fullmatch(stream_id):  # checked before it reaches a log line or a peer's name
            return _error(400, "A stream_id is 1-64 letters, digits, '_', '.' or '-'; pick another.")
        # Peers that have ended are forgotten, so the list holds only live ones.
        self.sources = {k: v for k, v in self.sources.items() if v.state not in (SourceState.ENDED, SourceState.FAILED)}
        try:
            source, answer = await accept_offer(
                body["sdp"], body["type"], name=f"WebRTC stream {stream_id}", ice_servers=self.ice_servers
            )
        except SourceError as error:
            return _error(400, str(error))
        try:
            started = self.on_source(stream_id, source)
            if inspect.isawaitable(started):
                await started
        except (ValueError, SourceError) as error:
            source.close()
            await source.wait_closed()
            return _error(409, str(error))
        self.sources[stream_id] = source
        log.info("%s: offer accepted", source.name)
        return web.json_response({**answer, "stream_id": stream_id})

    async def close(self, _app: web.Application | None = None) -> None:
        """Close every source this handler created; usable as an aiohttp on_shutdown hook."""
        sources, self.sources = list(self.sources.values()), {}
        for source in sources:
            source.close()
        await asyncio.gather(*(source.wait_closed() for source in sources))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
