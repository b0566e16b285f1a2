"""The engine options every command shares: their defaults are EngineConfig's, and the command line
offers them without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamer.cli import build_parser
from streamer.engine_config import DEFAULT_FPS, AnswerConfig, EngineConfig
from streamer.errors import UserError
from streamer.evaluation.options import EVAL_MAX_NEW_TOKENS
from streamer.options import engine_config, engine_settings

COMMANDS = {
    "demo": ["demo"],
    "replay": ["replay", "clip.mp4", "--questions", "q.jsonl", "--out", "out.jsonl"],
    "bench": ["bench", "rvs", "--file", "rvs.json", "--videos", "videos"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_left_out_options_are_the_engine_defaults(command: str) -> None:
    args = build_parser().parse_args(COMMANDS[command])

    assert engine_config(args) == EngineConfig()
    assert args.fps == DEFAULT_FPS


def test_eval_options_left_out_are_the_engine_defaults_but_its_answer_length() -> None:
    args = build_parser().parse_args(["eval"])

    assert engine_config(args) == EngineConfig(answer=AnswerConfig(max_new_tokens=EVAL_MAX_NEW_TOKENS))
    assert set(engine_settings(args)) == {"retrieval", "answer"}, "only the sections its options touch"
    assert args.fps == [DEFAULT_FPS]


def test_help_shows_the_engine_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    defaults = EngineConfig()

    assert f"longest answer in tokens (default {defaults.answer.max_new_tokens})" in help_text
    assert f"KV tokens resident per stream (default {defaults.memory.budget_tokens})" in help_text
    assert f"(default {defaults.memory.curvature.k:g})" in help_text
    assert f"(default {defaults.memory.curvature.window})" in help_text
    assert f"besides the last {defaults.memory.window_seconds:g} s (default {defaults.retrieval.top_k};" in help_text


def test_given_options_reach_the_config_and_bad_ones_are_named() -> None:
    argv = [*COMMANDS["replay"], "--budget", "2048", "--k", "1.2", "--policy", "fifo", "--max-new-tokens", "0"]
    config = engine_config(build_parser().parse_args(argv))

    assert (config.memory.budget_tokens, config.memory.policy, config.answer.max_new_tokens) == (2048, "fifo", 1)
    assert config.memory.curvature == EngineConfig().memory.curvature.model_copy(update={"k": 1.2})
    with pytest.raises(UserError, match=r"^Invalid --curvature-window: .*2; fix it and run again\.$"):
        engine_config(build_parser().parse_args([*COMMANDS["replay"], "--curvature-window", "1"]))


def test_the_command_line_loads_neither_torch_nor_itself_twice(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "import streamer.evaluation.cli, streamer.server.cli\n"
        "assert 'streamer.cli' not in sys.modules, 'the subcommands import the main command'\n"
        "from streamer.cli import build_parser\n"
        "build_parser().parse_args(['demo'])\n"
        "assert 'torch' not in sys.modules, 'torch loaded to offer the options'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
