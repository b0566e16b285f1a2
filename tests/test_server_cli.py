"""`streamer serve` and `streamer ask` as a user runs them, and the config file behind `serve --config`.

The commands run as real subprocesses. `ask` talks to a real server (in this process, on the bikes
clip with the real models); `serve` is started once for real and stopped with Ctrl-C.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from rtsp_server import free_port
from server_helpers import serve_process, start_server, wait_for_frames, ws_url

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.cli import build_parser, main
from streamer.errors import UserError
from streamer.server.app import ServerThread
from streamer.server.cli import give_local_token, saved_token, serve_config
from streamer.server.config import TOKEN_ENV, StreamerConfig, build_config, read_config_file

TOKEN = "cli-test-token-0123"
ERROR = "streamer: error:"
# Loading the models would take far longer.
FAIL_FAST_SECONDS = 5.0


def streamer(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith(ERROR), stderr
    assert "Traceback" not in stderr
    return lines[-1]


@pytest.fixture(scope="module")
def server(embedded_adapter: EmbeddedAdapter, bikes_clip: Path) -> Iterator[ServerThread]:
    """A server on loopback that still demands its configured token."""
    server = start_server(embedded_adapter, bikes_clip, token=TOKEN)
    wait_for_frames(server, 3)
    yield server
    server.stop()


# streamer ask


def test_ask_prints_the_streamed_answer_ttft_and_evidence(server: ServerThread) -> None:
    result = streamer("ask", "What vehicles are on the street?", "--url", ws_url(server), "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    answer, timing = result.stdout.strip().splitlines()[-2:]
    assert answer.strip(), "the answer text comes first"
    match = re.fullmatch(
        r"TTFT (\d+) ms, total (\d+) ms, memory up to \d\d:\d\d, evidence (none|\d\d:\d\d-\d\d:\d\d(, .+)?)", timing
    )
    assert match, timing
    assert 0 < int(match.group(1)) <= int(match.group(2))


# The variants below run the same command in this process: importing torch in a fresh process
# costs seconds each time, and the command path is the same.


def test_ask_reads_the_token_from_the_environment_and_names_the_stream(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["ask", "What is on screen?", "--url", ws_url(server), "--stream", "bikes"]) == 0
    assert "TTFT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "requires a token; pass --token"),
        (["--token", TOKEN, "--stream", "nope"], "There is no stream 'nope'"),
        (["--token", TOKEN, "--url", "http://127.0.0.1/ws"], "is not a websocket URL"),
    ],
)
def test_ask_failures_are_one_sentence(
    server: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    says: str,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["ask", "Anything?", "--url", ws_url(server), *extra]) == 2
    assert says in one_error_line(capsys.readouterr().err)


def test_ask_with_no_server_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "Anything?", "--url", f"ws://127.0.0.1:{free_port()}/ws"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Cannot connect to ws://127.0.0.1:" in line and "connection refused" in line


# streamer serve


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--host", "0.0.0.0"], "a token is required"),
        (["--source", "/no/such/video.mp4"], "does not exist"),
        (["--source", "ftp://camera/stream"], "Unsupported source"),
        (["--port", "70000"], "server.port"),
        (["--config", "/no/such/config.yaml"], "does not exist"),
    ],
)
def test_serve_refuses_bad_input_before_loading_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    started = time.perf_counter()
    assert main(["serve", *args]) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert time.perf_counter() - started < FAIL_FAST_SECONDS


@pytest.mark.slow
def test_serve_runs_until_interrupted(bikes_clip: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(f"sources:\n  - {{id: street, url: '{bikes_clip}', loop: true}}\nserver: {{port: {port}}}\n")
    env = {**os.environ, "STREAMER_CACHE": str(tmp_path / "cache")}
    env.pop(TOKEN_ENV, None)
    saved = tmp_path / "cache" / "tokens" / str(port)
    with serve_process([sys.executable, "-m", "streamer.cli", "serve", "--config", str(config)], env) as served:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=10) as reply:
            assert reply.status == 200
        # On loopback too, the server made a token: no way in without it.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/streams", timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/streams?token={served.token}", timeout=10) as reply:
            assert b'"street"' in reply.read()
        # Kept for `streamer ask`, readable by this user alone.
        assert saved.read_text() == served.token and saved.stat().st_mode & 0o777 == 0o600
    assert not saved.exists(), "the token file goes with the server"


def test_a_loopback_server_makes_its_token_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    parser = build_parser()

    def config_of(*args: str) -> StreamerConfig:
        config = serve_config(parser.parse_args(["serve", "--source", "synthetic:ball", *args]))
        give_local_token(config)
        return config

    made = config_of().server
    assert made.token is not None and made.token_made and len(made.token.get_secret_value()) >= 32
    assert config_of().server.token != made.token, "a new one at each start"
    assert config_of("--no-token").server.token is None
    monkeypatch.setenv(TOKEN_ENV, "the-operators-own-token")
    given = config_of().server
    assert given.token is not None and given.token.get_secret_value() == "the-operators-own-token"
    assert not given.token_made


def test_ask_reads_the_token_a_loopback_server_saved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMER_CACHE", str(tmp_path))
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "8123").write_text("saved-token\n")
    assert saved_token("ws://127.0.0.1:8123/ws") == "saved-token"
    assert saved_token("ws://localhost:8123/ws") == "saved-token"
    assert saved_token("ws://127.0.0.1:8124/ws") is None, "another port, another server"
    assert saved_token("ws://cams.lan:8123/ws") is None, "never sent off this machine"


# The config file


def test_config_file_with_environment_references(tmp_path: Path) -> None:
    path = tmp_path / "streamer.yaml"
    path.write_text(
        "sources:\n"
        "  - {id: door, url: 'rtsp://${CAMERA_HOST}/stream1', fps: 2}\n"
        "memory: {budget_tokens: 2048}\n"
        "retrieval: {top_k: 2}\n"
        "server: {host: 0.0.0.0, token: '${SECRET}', behind_tls_proxy: true}\n"
    )
    config = build_config(
        read_config_file(path, {"CAMERA_HOST": "10.0.0.5", "SECRET": "s3-long-enough-secret"}), str(path), {}
    )
    assert config.sources[0].url == "rtsp://10.0.0.5/stream1" and config.sources[0].fps == 2
    engine = config.engine_config()
    assert engine.memory.budget_tokens == 2048 and engine.retrieval.top_k == 2
    assert config.server.token is not None and config.server.token.get_secret_value() == "s3-long-enough-secret"
    assert "s3-long" not in repr(config), "the token must not show up in logs"
    config.check_exposure()


def test_the_token_comes_from_the_environment_when_the_file_has_none() -> None:
    proxied = {"server": {"host": "0.0.0.0", "behind_tls_proxy": True}}
    config = build_config(proxied, "test", {TOKEN_ENV: "from-env-0123456789"})
    assert config.server.token is not None and config.server.token.get_secret_value() == "from-env-0123456789"
    config.check_exposure()
    exposed = build_config(proxied, "test", {})
    with pytest.raises(UserError, match="token is required"):
        exposed.check_exposure()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("server: {port: 99999}\n", "cfg.yaml: server.port: input should be less than or equal to 65535."),
        ("server: {prot: 80}\n", "cfg.yaml: 'server.prot' is not a known setting; check its spelling."),
        ("memory: {budget_tokens: 10}\n", "cfg.yaml: memory.budget_tokens: input should be greater than or equal"),
        ("memory: {retrieval_top_k: 2}\n", "memory.retrieval_top_k is now retrieval.top_k: write it as `retrieval: {"),
        ("sources:\n  - {id: 'a b', url: x}\n", "cfg.yaml: sources.0.id: string should match pattern"),
        ("sources:\n  - {id: a, url: x}\n  - {id: a, url: y}\n", "two sources are named 'a'"),
        ("server: {token: '${NOT_SET_ANYWHERE}'}\n", "uses ${NOT_SET_ANYWHERE} at server.token"),
        ("server: [unclosed\n", "is not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        build_config(read_config_file(path, {}), path.name, {})
    assert says in str(error.value)


def test_serve_with_a_bad_config_file_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("server: {port: -1}\n")
    assert main(["serve", "--config", str(path)]) == 2
    expected = f"{path}: server.port: input should be greater than or equal to 0."
    assert expected in one_error_line(capsys.readouterr().err)
