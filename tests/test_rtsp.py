"""RtspSource against a real GStreamer RTSP server: live frames, a real clip, stalls, freezes, restarts, bad URLs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import numpy as np
import pytest
from certificates import self_signed
from rtsp_server import LIVE_FPS, LIVE_SIZE, RtspServer, free_port

from sources.base import SourceState
from sources.file import FileSource
from sources.frame import Frame, SourceEnded, SourceError
from sources.rtsp import Backoff, RtspOptions, RtspSource, _PyAVReader, check_certificate
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.ingest import StreamRunner

pytestmark = pytest.mark.slow  # a real GStreamer RTSP server per module or test

# Short limits so faults are noticed and recovered from within a few seconds. FFmpeg's read
# timeout is long on purpose: the watchdog, not the library, must notice a frozen server.
FAST = RtspOptions(
    open_timeout_s=1.0,
    read_timeout_s=10.0,
    watchdog_s=1.5,
    backoff_initial_s=0.2,
    backoff_max_s=1.0,
    healthy_after_s=0.5,
)
INTERVAL = 1.0 / LIVE_FPS


@pytest.fixture(scope="module")
def server(bikes_clip: Path) -> Iterator[RtspServer]:
    """A server shared by the tests that do not fault it."""
    with RtspServer(clip=bikes_clip) as running:
        yield running


@pytest.fixture
def own_server() -> Iterator[RtspServer]:
    """A server a test may freeze or kill."""
    with RtspServer() as running:
        yield running


async def _wait_for_state(source: RtspSource, state: SourceState, timeout: float) -> float:
    """Wait until the source reports `state`; return the wall time it did."""
    deadline = time.monotonic() + timeout
    while source.state != state:
        assert time.monotonic() < deadline, f"{source.name} is {source.state} ({source.reason}), not {state}"
        await asyncio.sleep(0.01)
    return time.time()


async def _first_frame_after(source: RtspSource, wall_time: float, timeout: float) -> Frame:
    async def read() -> Frame:
        while True:
            frame = await source.recv()
            if frame.capture_time > wall_time:
                return frame

    return await asyncio.wait_for(read(), timeout)


def test_live_stream_delivers_frames_with_state_and_counters(server: RtspServer) -> None:
    async def scenario() -> list[Frame]:
        source = RtspSource(server.url("live"), FAST)
        assert source.state == SourceState.CONNECTING
        try:
            return [await asyncio.wait_for(source.recv(), 10) for _ in range(15)]
        finally:
            status = source.status()
            source.close()
            assert status.state == SourceState.LIVE
            assert status.frames_delivered == 15
            assert status.frames_decoded >= 15
            assert status.reconnects == 0
            assert 0 <= status.lag_s < 0.5
            assert source.state == SourceState.ENDED

    frames = asyncio.run(scenario())
    width, height = LIVE_SIZE
    assert all(frame.pixels.shape == (height, width, 3) for frame in frames)
    assert [frame.sequence for frame in frames] == list(range(15))
    times = [frame.stream_time for frame in frames]
    assert times[0] == 0.0
    assert all(later > earlier for earlier, later in itertools.pairwise(times))
    # Frames come at the camera's rate: never faster, and no more than a few lost to a busy machine.
    assert 14 * INTERVAL - 0.1 <= times[-1] <= 14 * INTERVAL + 1.0
    assert len({frame.pixels.tobytes() for frame in frames}) == 15, "the ball moves: every frame differs"


def test_real_clip_arrives_intact(server: RtspServer, bikes_clip: Path) -> None:
    async def scenario() -> tuple[np.ndarray, list[np.ndarray]]:
        source = RtspSource(server.url("clip"), FAST)
        file = FileSource(bikes_clip, fps=None)
        try:
            received = (await asyncio.wait_for(source.recv(), 10)).pixels
            originals = [(await file.recv()).pixels for _ in range(50)]
            return received, originals
        finally:
            source.close()
            file.close()

    received, originals = asyncio.run(scenario())
    assert received.shape == (272, 640, 3)
    # The server does not re-encode: the frame matches one of the clip's first two seconds.
    differences = [float(np.abs(received.astype(int) - original).mean()) for original in originals]
    assert min(differences) < 3.0
    assert max(differences) > 10.0, "the clip's frames differ from each other, so the match means something"


def test_consumer_stall_gets_the_newest_frame_not_a_backlog(server: RtspServer) -> None:
    async def scenario() -> None:
        source = RtspSource(server.url("live"), FAST)
        try:
            for _ in range(5):
                await asyncio.wait_for(source.recv(), 10)
            dropped_before = source.frames_dropped
            time.sleep(3.0)  # the consumer blocks; the capture thread keeps draining the connection
            after_stall = await source.recv()
            age = time.time() - after_stall.capture_time
            # One frame interval plus decoding time; a backlog would hand back a frame 3 s old.
            assert age < INTERVAL + 0.15, f"the frame after a 3 s stall is {age:.3f} s old"
            assert source.frames_dropped - dropped_before >= 3.0 * LIVE_FPS * 0.8
            following = [await source.recv() for _ in range(10)]
        finally:
            source.close()
        # No burst of buffered frames: each next frame arrives fresh, about one interval apart.
        times = [frame.capture_time for frame in [after_stall, *following]]
        gaps = np.diff(times)
        assert float(np.median(gaps)) == pytest.approx(INTERVAL, abs=0.03)

    asyncio.run(scenario())


def test_frozen_server_trips_the_watchdog_and_recovers(own_server: RtspServer) -> None:
    async def scenario() -> None:
        source = RtspSource(own_server.url("live"), FAST)
        changes: list[tuple[float, SourceState, str | None]] = []
        source.on_state(lambda state, reason: changes.append((time.time(), state, reason)))
        last: list[Frame] = [await asyncio.wait_for(source.recv(), 10)]

        async def consume() -> None:
            while True:
                last.append(await source.recv())

        consumer = asyncio.create_task(consume())
        try:
            await asyncio.sleep(0.5)
            own_server.freeze()
            noticed_at = await _wait_for_state(source, SourceState.RECONNECTING, timeout=FAST.watchdog_s + 5)
            silence = noticed_at - last[-1].capture_time
            # Well before FFmpeg's own 10 s read timeout (which fires at 2-3x anyway).
            assert FAST.watchdog_s - 0.05 <= silence < FAST.watchdog_s + 1.0, f"watchdog fired after {silence:.2f} s"
            assert source.reason is not None and source.reason.startswith("no frame for")
            await asyncio.sleep(1.0)  # reconnect attempts meet the frozen server and time out
            consumer.cancel()
            thawed_at = time.time()
            own_server.thaw()
            recovered = await _first_frame_after(source, thawed_at, timeout=8)
            assert source.state == SourceState.LIVE
            assert recovered.stream_time > last[-1].stream_time + FAST.watchdog_s
            assert source.reconnects >= 1
        finally:
            consumer.cancel()
            source.close()
        states = [state for _, state, _ in changes]
        assert states[:2] == [SourceState.LIVE, SourceState.RECONNECTING]
        assert SourceState.LIVE in states[2:], "live again after the thaw"

    asyncio.run(scenario())


def test_killed_server_restarted_on_the_same_port_is_read_again(own_server: RtspServer) -> None:
    async def scenario() -> None:
        source = RtspSource(own_server.url("live"), FAST)
        try:
            await asyncio.wait_for(source.recv(), 10)
            await asyncio.sleep(FAST.healthy_after_s + 0.3)
            own_server.kill()
            await _wait_for_state(source, SourceState.RECONNECTING, timeout=5)
            await asyncio.sleep(1.5)
            assert source.reason is not None and "connection refused" in source.reason
            assert source.backoff.failures >= 2, "retries against a dead server back off"
            own_server.start()
            back_at = time.time()
            frame = await _first_frame_after(source, back_at, timeout=10)
            assert frame.capture_time - back_at < 5.0
            assert source.state == SourceState.LIVE
            assert source.reconnects >= 2
            await asyncio.sleep(FAST.healthy_after_s + 0.3)
            assert source.backoff.failures == 0, "a healthy connection resets the backoff"
        finally:
            source.close()

    asyncio.run(scenario())


def test_a_camera_back_after_a_long_outage_is_read_within_seconds(own_server: RtspServer) -> None:
    # The backoff as deployed (1 s doubling to 30 s): after 8 s down the next full retry would be about
    # 7 s after the camera's return; the port probe reconnects as soon as the port accepts.
    options = RtspOptions(open_timeout_s=2.0, watchdog_s=1.5, healthy_after_s=0.5, backoff_jitter=0.0)

    async def scenario() -> None:
        source = RtspSource(own_server.url("live"), options)
        try:
            await asyncio.wait_for(source.recv(), 10)
            await asyncio.sleep(options.healthy_after_s + 0.3)
            own_server.kill()
            await asyncio.sleep(8.0)
            assert source.backoff.failures >= 3, "the backoff had grown past the outage's first seconds"
            own_server.start()
            back_at = time.time()
            frame = await _first_frame_after(source, back_at, timeout=15)
            assert frame.capture_time - back_at < 5.0, "live again within 5 s of the camera's return"
        finally:
            source.close()

    asyncio.run(scenario())


def test_unreachable_camera_fails_after_max_attempts_and_the_engine_goes_on(
    embedded_adapter: EmbeddedAdapter,
) -> None:
    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        options = FAST.model_copy(update={"max_attempts": 3, "backoff_initial_s": 0.05})
        source = RtspSource(f"rtsp://127.0.0.1:{free_port()}/cam", options)
        runner = StreamRunner(engine, "cam", source)
        await asyncio.wait_for(runner.run(), 10)
        status = runner.status()
        assert status.source.state == SourceState.FAILED
        assert status.source.reconnects == 2
        assert status.error is not None
        assert "connection refused" in status.error and "after 3 attempts" in status.error
        assert engine.has_stream("cam"), "the stream stays, marked failed"

    asyncio.run(scenario())


def test_unreachable_camera_keeps_retrying_without_a_limit() -> None:
    async def scenario() -> None:
        source = RtspSource(f"rtsp://127.0.0.1:{free_port()}/cam", FAST)
        pending = asyncio.ensure_future(source.recv())
        await asyncio.sleep(1.5)
        assert not pending.done(), "recv waits while the source retries"
        assert source.state == SourceState.CONNECTING
        assert source.reason is not None and source.reason.startswith("connection refused; retrying in")
        assert source.reconnects >= 2
        source.close()
        with pytest.raises(SourceEnded):
            await pending

    asyncio.run(scenario())


def test_missing_stream_path_is_reported(server: RtspServer) -> None:
    async def scenario() -> None:
        source = RtspSource(server.url("no-such-stream"), FAST.model_copy(update={"max_attempts": 1}))
        with pytest.raises(SourceError, match=r"404 Not Found.*check that the camera is on"):
            await asyncio.wait_for(source.recv(), 10)
        assert source.state == SourceState.FAILED

    asyncio.run(scenario())


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert len({round(delay / base, 6) for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True)}) > 1
    backoff.reset()
    assert backoff.next_delay() <= 1.2


def test_malformed_urls_are_refused_in_one_sentence() -> None:
    for url, fragment in [
        ("rtsp://", "has no host"),
        ("rtsp://:8554/cam", "has no host"),
        ("rtsp://camera:99999/cam", "invalid port"),
        ("rtsp://camera:port/cam", "invalid port"),
        ("http://camera/cam", "is not an RTSP URL"),
    ]:
        with pytest.raises(SourceError, match=fragment) as caught:
            RtspSource(url)
        message = str(caught.value)
        assert url in message and message.endswith(".") and "\n" not in message


def test_names_and_logs_hide_the_password() -> None:
    source = RtspSource("rtsp://admin:secret@127.0.0.1:8554/cam")
    assert "secret" not in source.name
    assert source.name == "RTSP stream rtsp://admin:***@127.0.0.1:8554/cam"


@contextlib.contextmanager
def tls_listener(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that completes each handshake and hangs up (no RTSP behind it); its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_an_rtsps_camera_must_show_a_certificate_the_engine_trusts(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    quick = {"open_timeout_s": 2.0, "read_timeout_s": 2.0}
    with tls_listener(cert, key) as port:
        url = f"rtsps://127.0.0.1:{port}/live"
        with pytest.raises(SourceError, match=r"TLS certificate cannot be verified \(self.signed certificate\)"):
            _PyAVReader(url, RtspOptions(**quick))
        check_certificate("127.0.0.1", port, RtspOptions(tls_ca_file=cert))  # its authority given: trusted

        # Past the check (trusted, or checking turned off), FFmpeg connects and finds no RTSP server behind TLS.
        for options in (RtspOptions(tls_ca_file=cert, **quick), RtspOptions(tls_verify=False, **quick)):
            with pytest.raises((av.error.FFmpegError, OSError)):
                _PyAVReader(url, options)

    (tmp_path / "other").mkdir()
    other, other_key = self_signed(tmp_path / "other", hosts=("camera.example",))
    with tls_listener(other, other_key) as port, pytest.raises(SourceError, match=r"cannot be verified.*mismatch"):
        check_certificate("127.0.0.1", port, RtspOptions(tls_ca_file=other))
    with pytest.raises(SourceError, match="cannot read tls_ca_file"):
        check_certificate("127.0.0.1", port, RtspOptions(tls_ca_file=tmp_path / "missing.pem"))
