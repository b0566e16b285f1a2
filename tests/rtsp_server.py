"""A real RTSP server for tests: Debian's GStreamer gst-rtsp-server, run as a subprocess on 127.0.0.1.

The project's Python has no `gi`; the system Python (/usr/bin/python3) does, so this module is both
the test-side handle (`RtspServer`: start, freeze with SIGSTOP, thaw, kill, restart on the same
port) and, run as a script by the system Python, the server itself. It serves two mounts:

- `/live`: a live synthetic pattern (videotestsrc is-live=true), H.264 320x240 at 15 fps.
- `/clip`: a real video file (H.264 in MP4) replayed in real time without re-encoding.

The system packages come from `scripts/install_system.sh`; when they are missing `RtspServer.start`
raises with that instruction, so the RTSP tests fail loudly instead of skipping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
LIVE_FPS = 15
LIVE_SIZE = (320, 240)
_READY = "rtsp-server-ready"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RtspServer:
    """Handle on a gst-rtsp-server subprocess serving `/live` and, with `clip`, `/clip`."""

    def __init__(self, clip: Path | None = None, port: int | None = None) -> None:
        self.clip = clip
        self.port = port or free_port()
        self._process: subprocess.Popen[str] | None = None

    def url(self, mount: str = "live") -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "server not started"
        return self._process.pid

    def start(self, timeout_s: float = 15.0) -> RtspServer:
        """Start the server and wait until it listens."""
        if not Path(SYSTEM_PYTHON).exists():
            raise RuntimeError(f"{SYSTEM_PYTHON} is missing; run scripts/install_system.sh as root.")
        command = [SYSTEM_PYTHON, __file__, str(self.port)]
        if self.clip is not None:
            command.append(str(self.clip))
        # A file, not a pipe, for stderr: nobody reads it while the server runs, and a full pipe would block it.
        with tempfile.TemporaryFile("w+") as errors:
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=errors, text=True, env=_system_python_env()
            )
            assert self._process.stdout is not None
            line = self._process.stdout.readline()
            if line.strip() != _READY:
                self._process.kill()
                self._process.wait(timeout_s)
                errors.seek(0)
                raise RuntimeError(
                    f"The GStreamer RTSP server did not start ({errors.read().strip()[-400:]}); "
                    "run scripts/install_system.sh as root to install it."
                )
        # The process prints ready once the main loop is about to run; the port then accepts.
        _wait_for_port(self.port, timeout_s)
        return self

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): connections stay open but no data flows, as a hung camera."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self._process is None:
            return
        self.thaw()
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None

    def restart(self) -> None:
        """Kill the server and start a new one on the same port, as a camera that reboots."""
        self.kill()
        self.start()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.kill()


def _system_python_env() -> dict[str, str]:
    # The venv's variables would point the system Python at the wrong site-packages.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["GST_DEBUG"] = "0"
    return env


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"The GStreamer RTSP server did not listen on 127.0.0.1:{port} within {timeout_s} s.")


def _serve(port: int, clip: str | None) -> None:
    """Run the server until terminated (system Python with gi only)."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    mounts = server.get_mount_points()

    width, height = LIVE_SIZE
    live = GstRtspServer.RTSPMediaFactory()
    live.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={LIVE_FPS}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={LIVE_FPS} "
        "! rtph264pay name=pay0 pt=96 )"
    )
    # One pipeline shared by all clients, as a camera: a second client sees the same live stream.
    live.set_shared(True)
    mounts.add_factory("/live", live)

    if clip is not None:
        replay = GstRtspServer.RTSPMediaFactory()
        replay.set_launch(
            f'( filesrc location="{clip}" ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )'
        )
        mounts.add_factory("/clip", replay)

    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print(_READY, flush=True)
    # SIGTERM's default action ends the process; the kernel then closes every client connection.
    GLib.MainLoop().run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
