"""An RTSP camera as a live source that survives the camera: reconnects, backoff and a watchdog.

The stream is read with PyAV (FFmpeg) over TCP, drained by a capture thread into a latest-frame
slot. A supervisor owns the connection: open, watch, and on end, error or silence close it and
reopen after an exponential backoff with jitter, reset once a connection has stayed healthy. While
it waits after a refused connection, it knocks on the camera's port twice a second, so a camera that
comes back is read again within a second or two, however long the backoff had grown.
FFmpeg's own timeouts are honoured but fire late (a 3 s read timeout took 6-9 s against a frozen
server), so the supervisor also watches the age of the newest frame and abandons a connection
that has gone quiet for `watchdog_s`.

FFmpeg's RTSP reader opens `rtsps://` over TLS without checking the camera's certificate and takes no
option to make it. So before each connection the camera's certificate is checked with Python's TLS
(the system's trusted authorities, or `tls_ca_file`, and the host name), and a camera that fails is
not read (`tls_verify: false` turns this off for a camera trusted on a closed network). The check is
its own handshake: it proves who answers at the camera's address, not that FFmpeg's later connection
reaches the same party.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import av
import av.error
from pydantic import BaseModel, Field

from sources.base import SourceState
from sources.capture import CaptureSource, CaptureThread, Picture, run_in_own_thread
from sources.frame import SourceError

RTSP_SCHEMES = ("rtsp", "rtsps")
_DEFAULT_PORT = {"rtsp": 554, "rtsps": 322}


class RtspOptions(BaseModel):
    """How an RTSP source connects and when it gives up on a connection."""

    open_timeout_s: float = Field(5.0, gt=0, description="FFmpeg's limit on connecting and reading the stream header")
    read_timeout_s: float = Field(5.0, gt=0, description="FFmpeg's limit on one blocking read")
    watchdog_s: float = Field(10.0, gt=0, description="reconnect when no frame arrived for this long")
    backoff_initial_s: float = Field(1.0, gt=0, description="wait before the first retry")
    backoff_max_s: float = Field(30.0, gt=0, description="longest wait between retries")
    backoff_jitter: float = Field(0.2, ge=0, lt=1, description="each wait is scaled by a random 1 +/- jitter")
    healthy_after_s: float = Field(10.0, ge=0, description="a connection live this long resets the backoff")
    port_probe_s: float = Field(
        0.5,
        ge=0,
        description="while waiting after a failure with the camera's port closed, try the port this often and "
        "reconnect as soon as it accepts (0: wait out the backoff)",
    )
    max_attempts: int | None = Field(
        None, ge=1, description="consecutive connections without a frame before the source fails (None: never)"
    )
    tls_verify: bool = Field(
        True, description="rtsps: check the camera's certificate and host name before reading (false: trust it)"
    )
    tls_ca_file: Path | None = Field(
        None, description="rtsps: PEM file of the authorities (or the camera's own certificate) to trust"
    )


class Backoff:
    """Exponential delays with jitter: initial, 2x initial, ... capped at `maximum`, each scaled by 1 +/- jitter.

    Jitter keeps many cameras that dropped together from reconnecting in lockstep.
    """

    def __init__(self, initial: float, maximum: float, jitter: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * 2.0**self.failures)
        self.failures += 1
        return base * (1.0 + self.jitter * self.rng.uniform(-1.0, 1.0))

    def reset(self) -> None:
        self.failures = 0


class RtspSource(CaptureSource):
    """Frames from the RTSP stream at `url`, kept live across disconnects.

    States: connecting (first connection), live (frames flow), reconnecting (after a loss, with the
    reason), failed (after `max_attempts` connections in a row without a frame), ended (closed).
    Counters: frames decoded, frames dropped as stale (overwritten before the consumer took them,
    or discarded with a lost connection), reconnects (connection attempts after the first), lag.
    """

    def __init__(self, url: str, options: RtspOptions | None = None) -> None:
        self.parts = parse_rtsp_url(url)
        self.url = url
        self.options = options or RtspOptions()
        super().__init__(f"RTSP stream {redact(self.parts)}")
        self.attempts = 0
        self._failed_in_a_row = 0
        self.backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s, self.options.backoff_jitter)

    def failure(self) -> SourceError:
        return SourceError(
            f"{self.name} failed after {self._failed_in_a_row} attempts ({self.reason}); "
            "check that the camera is on and that the URL, port and credentials are right."
        )

    async def _supervise(self) -> None:
        options = self.options
        while True:
            self.attempts += 1
            if self.attempts > 1:
                self.reconnects += 1
            capture: CaptureThread | None = None
            try:
                reader = await run_in_own_thread(functools.partial(_PyAVReader, self.url, options))
                capture = CaptureThread(reader, self.slot, self.name).start()
                reason = await self._watch(capture)
            except (av.error.FFmpegError, OSError, SourceError) as error:
                reason = describe_error(error, options)
            finally:
                if capture is not None:
                    capture.stop()
            # Whatever is left in the slot came from the lost connection and is stale by now.
            self.slot.clear()
            if capture is None or capture.last_frame_at is None:
                self._failed_in_a_row += 1
                if options.max_attempts is not None and self._failed_in_a_row >= options.max_attempts:
                    self.set_state(SourceState.FAILED, reason)
                    return
            delay = self.backoff.next_delay()
            state = SourceState.CONNECTING if self.frames_decoded == 0 else SourceState.RECONNECTING
            self.set_state(state, f"{reason}; retrying in {delay:.1f} s")
            await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        """Sleep `delay` s, cut short once a port that was closed accepts again (see `port_probe_s`).

        Only a closed port is watched: a camera that accepts connections but fails to stream is
        retried on the backoff, not twice a second.
        """
        every = self.options.port_probe_s
        ends = time.monotonic() + delay
        if every <= 0 or await self._port_open():
            await asyncio.sleep(delay)
            return
        while (left := ends - time.monotonic()) > 0:
            await asyncio.sleep(min(every, left))
            if time.monotonic() < ends and await self._port_open():
                return

    async def _port_open(self) -> bool:
        """Whether a TCP connection to the camera's port is accepted now (within 0.5 s)."""
        port = self.parts.port or _DEFAULT_PORT[self.parts.scheme.lower()]
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.parts.hostname, port), 0.5)
        except (TimeoutError, OSError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _watch(self, capture: CaptureThread) -> str:
        """Return why the connection has to go: it ended, failed, or went quiet for `watchdog_s`."""
        options = self.options
        opened_at = time.monotonic()
        live_since: float | None = None
        poll_s = min(0.1, options.watchdog_s / 10)
        while True:
            await asyncio.sleep(poll_s)
            if capture.finished:
                if capture.error is not None:
                    return describe_error(capture.error, options)
                return "the server ended the stream"
            now = time.monotonic()
            last_frame_at = capture.last_frame_at
            silence = now - (last_frame_at if last_frame_at is not None else opened_at)
            if silence > options.watchdog_s:
                return f"no frame for {silence:.1f} s"
            if last_frame_at is None:
                continue
            if live_since is None:
                live_since = now
                self._failed_in_a_row = 0
                self.set_state(SourceState.LIVE)
            elif now - live_since >= options.healthy_after_s:
                self.backoff.reset()


class _PyAVReader:
    """One RTSP connection decoded by PyAV; opening blocks until the stream header has arrived."""

    def __init__(self, url: str, options: RtspOptions) -> None:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
        # FFmpeg reports an unknown host as a bare "Input/output error"; resolving first names it.
        try:
            socket.getaddrinfo(hostname, parts.port or _DEFAULT_PORT[parts.scheme.lower()])
        except socket.gaierror:
            raise SourceError(f"cannot resolve host '{hostname}'") from None
        if parts.scheme.lower() == "rtsps" and options.tls_verify:
            check_certificate(hostname, parts.port or _DEFAULT_PORT["rtsps"], options)
        self._container = av.open(
            url,
            options={
                "rtsp_transport": "tcp",
                # Probe little: the header (SDP) describes the stream; probing 5 s only delays the start.
                "analyzeduration": "200000",
                "probesize": "65536",
                "fflags": "nobuffer",
            },
            timeout=(options.open_timeout_s, options.read_timeout_s),
        )
        if not self._container.streams.video:
            self._container.close()
            raise SourceError("the stream has no video track")
        self._frames = self._container.decode(self._container.streams.video[0])

    def read(self) -> Picture | None:
        frame = next(self._frames, None)
        if frame is None:
            return None
        return functools.partial(frame.to_ndarray, format="bgr24")

    def close(self) -> None:
        self._container.close()


def check_certificate(hostname: str, port: int, options: RtspOptions) -> None:
    """Raise SourceError unless the TLS server at hostname:port shows a certificate for `hostname` signed by a
    trusted authority (`options.tls_ca_file`, else the system's)."""
    try:
        context = ssl.create_default_context(cafile=options.tls_ca_file)
    except (OSError, ssl.SSLError) as error:
        raise SourceError(f"cannot read tls_ca_file '{options.tls_ca_file}' ({error})") from None
    try:
        with (
            socket.create_connection((hostname, port), timeout=options.open_timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=hostname),
        ):
            pass
    except ssl.SSLCertVerificationError as error:
        raise SourceError(
            f"the camera's TLS certificate cannot be verified ({error.verify_message}); give its authority as "
            "tls_ca_file, or set tls_verify: false for a camera you trust"
        ) from None


def parse_rtsp_url(url: str) -> SplitResult:
    """Split an rtsp:// or rtsps:// URL, or raise SourceError saying what is wrong with it."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in RTSP_SCHEMES:
        raise SourceError(f"'{url}' is not an RTSP URL; it must start with rtsp:// or rtsps://.")
    try:
        valid_port = parts.port is None or parts.port > 0
    except ValueError:  # urlsplit checks the port only when it is read
        valid_port = False
    if not valid_port:
        raise SourceError(f"RTSP URL '{url}' has an invalid port; write it as rtsp://host:554/path.")
    if not parts.hostname:
        raise SourceError(f"RTSP URL '{url}' has no host; write it as rtsp://host:554/path.")
    return parts


def redact(parts: SplitResult) -> str:
    """The URL without its password, for names and logs."""
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def describe_error(error: BaseException, options: RtspOptions) -> str:
    """A short reason for a failed connection, worded for an operator."""
    if isinstance(error, SourceError):
        return str(error)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, av.error.HTTPNotFoundError):
        return "the server has no stream at this path (404 Not Found)"
    if isinstance(error, av.error.HTTPUnauthorizedError):
        return "the server rejected the credentials (401 Unauthorized)"
    if isinstance(error, av.error.ExitError):
        limits = f"open {options.open_timeout_s:g} s, read {options.read_timeout_s:g} s"
        return f"no data within FFmpeg's timeouts ({limits})"
    if isinstance(error, av.error.FFmpegError):
        return str(error.strerror).rstrip(".").lower()
    return str(error)
