"""Environment checks: a package that lacks what the engine needs is one sentence and exit 2, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from streamer import cli, environment
from streamer.environment import EnvironmentProblem, check_environment, check_versions, needed_versions
from streamer.vision.detector import ObjectDetector

ROOT = Path(__file__).resolve().parent.parent


def test_installed_environment_passes() -> None:
    check_environment()
    assert "opencv-python" in needed_versions()


def test_detector_without_the_tensorflow_importer_names_package_versions_and_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What OpenCV 5.1 looks like to the detector's loader.
    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow")
    with pytest.raises(EnvironmentProblem) as raised:
        ObjectDetector()
    message = str(raised.value)
    installed = environment.installed_version("opencv-python")
    assert message == (
        f"opencv-python {installed} has no cv2.dnn.readNetFromTensorflow, which the SSD-MobileNet-v2 COCO "
        "object detector needs; streamer needs opencv-python<5.1,>=4.9: fix it with "
        "`pip install 'opencv-python<5.1,>=4.9'` or `bash scripts/setup.sh`, which installs the locked versions."
    )


def test_wrong_version_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    real = environment.installed_version
    monkeypatch.setattr(
        environment,
        "installed_version",
        lambda package: "5.1.0.95" if package == "opencv-python" else real(package),
    )
    with pytest.raises(EnvironmentProblem, match=r"^opencv-python 5\.1\.0\.95 is installed but streamer needs "):
        check_versions()


def test_missing_package_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda package: None if package == "av" else real(package))
    with pytest.raises(EnvironmentProblem, match=r"^av is not installed but streamer needs av>=14; fix it with "):
        check_versions()


def test_cli_stops_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMER_CACHE", str(tmp_path))
    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow")
    assert cli.main(["demo", "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("streamer: error: opencv-python ") and "readNetFromTensorflow" in error[0]
    assert list(tmp_path.iterdir()) == []  # the demo stream was not built


def _setup(*args: str, venv: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMER_VENV": str(venv)}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_setup_never_puts_the_gpu_build_into_a_cpu_environment() -> None:
    # This test runs in an environment with the CPU build of torch: --gpu must refuse it, installing nothing.
    assert torch.version.cuda is None
    result = _setup("--gpu", venv=Path(sys.prefix))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"setup: {sys.prefix} has the CPU build of torch; the GPU install goes into an environment of its own: "
        "set STREAMER_VENV to a new folder (default .venv-gpu)."
    )
    assert "installing" not in result.stdout


def test_setup_names_its_options(tmp_path: Path) -> None:
    result = _setup("--cuda", venv=tmp_path / "venv")
    assert result.returncode == 2
    assert "unknown option '--cuda'; use no option, --ray for Ray too, --test for the test tools too, or --gpu" in (
        result.stderr
    )
    assert not (tmp_path / "venv").exists()


def test_the_gpu_lock_swaps_faiss_and_keeps_every_other_pin() -> None:
    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / "scripts" / "requirements" / name).read_text().splitlines()
        return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))

    cpu, gpu = pins("run.txt"), pins("gpu.txt")
    assert "faiss-cpu" in cpu and "faiss-cpu" not in gpu and "faiss-gpu-cu12" in gpu
    assert gpu["torch"] == (ROOT / "scripts" / "requirements" / "torch.txt").read_text().strip().split("==")[1]
    assert {name: gpu[name] for name in cpu if name in gpu} == {name: cpu[name] for name in cpu if name in gpu}
    assert any(name.startswith("nvidia-") for name in gpu), "the CUDA libraries torch needs are pinned too"
