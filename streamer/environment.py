"""Checks that the installed packages are the ones the engine needs, before any work starts.

A release that drops an API the engine uses (OpenCV 5.1 removed the TensorFlow importer the detector
loads its graph with) would otherwise end in a traceback minutes into a run. Each problem is reported
as one sentence: the package, the version installed, the version needed, and the command that fixes it.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from streamer.errors import UserError

DISTRIBUTION = "streamer"
SETUP_COMMAND = "bash scripts/setup.sh"


class EnvironmentProblem(UserError):
    """An installed package is missing, of the wrong version, or lacks an API the engine calls."""


def needed_versions() -> dict[str, Requirement]:
    """The engine's runtime requirements by canonical package name, as installed with it.

    Empty when the engine runs from a source tree that was never installed (nothing to compare with).
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    environment = {key: str(value) for key, value in default_environment().items()} | {"extra": ""}
    needed: dict[str, Requirement] = {}
    for line in declared:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            needed[canonicalize_name(requirement.name)] = requirement
    return needed


def installed_version(package: str) -> str | None:
    """The installed version of distribution `package`, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fix(requirement: str) -> str:
    return f"fix it with `pip install '{requirement}'` or `{SETUP_COMMAND}`, which installs the locked versions"


def check_versions() -> None:
    """Raise EnvironmentProblem for the first runtime requirement the installed packages do not meet."""
    for requirement in needed_versions().values():
        wanted = f"{requirement.name}{requirement.specifier}"
        version = installed_version(requirement.name)
        if version is None:
            raise EnvironmentProblem(
                f"{requirement.name} is not installed but streamer needs {wanted}; {_fix(wanted)}."
            )
        try:
            fits = requirement.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            fits = False
        if not fits:
            raise EnvironmentProblem(
                f"{requirement.name} {version} is installed but streamer needs {wanted}; {_fix(wanted)}."
            )


def require_api(package: str, module: Any, dotted: str, what: str, needed: str) -> None:
    """Raise EnvironmentProblem unless `module` has the attribute path `dotted` (e.g. "dnn.readNetFromTensorflow").

    package: the distribution that provides `module`; what: who needs the API; needed: the version
    specifier used when the installed engine declares none (a source tree).
    """
    found: Any = module
    for name in dotted.split("."):
        found = getattr(found, name, None)
        if found is None:
            break
    if found is not None:
        return
    requirement = needed_versions().get(canonicalize_name(package))
    wanted = f"{package}{requirement.specifier if requirement is not None else needed}"
    version = installed_version(package) or "(version unknown)"
    raise EnvironmentProblem(
        f"{package} {version} has no {module.__name__}.{dotted}, which {what} needs; "
        f"streamer needs {wanted}: {_fix(wanted)}."
    )


def check_environment() -> None:
    """Everything the embedded stack needs, checked in well under a second: versions, APIs, model files."""
    check_versions()
    from streamer.llm import packaged_gguf
    from streamer.vision.detector import check_detector
    from streamer.vision.efficientnet import efficientnet_weights
    from streamer.vision.ocr import check_ocr
    from streamer.vision.text_embedder import minilm_folder

    check_detector()
    efficientnet_weights()
    check_ocr()
    packaged_gguf()
    minilm_folder()
