"""Environment checks: a package that lacks what the engine needs is one sentence and exit 2, before any work."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from streamer import cli, environment
from streamer.environment import EnvironmentProblem, check_environment, check_versions, needed_versions
from streamer.vision.detector import ObjectDetector


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
