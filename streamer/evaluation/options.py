"""What `streamer eval` runs: the grid of configurations and the options shared by every run.

Kept free of heavy imports, so the command line can offer the defaults without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The names of streamer.engine.MemoryPolicyName (kept here so the command line loads without torch).
POLICIES: tuple[str, ...] = ("curvature", "uniform", "fifo", "equal")
DEFAULT_POLICIES = ("curvature", "uniform", "fifo", "equal")
DEFAULT_BUDGETS = (5.0, 10.0, 25.0)
DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Variant:
    """A named set of engine settings (`streamer.engine.EngineConfig` fields) that runs beside the others."""

    name: str = "default"
    settings: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """One configuration of the grid; `llm` None is the packaged default."""

    policy: str
    budget_percent: float
    fps: float
    llm: str | None = None
    llm_name: str = DEFAULT_LLM_NAME
    variant: Variant = Variant()


@dataclass
class EvalOptions:
    policies: Sequence[str] = DEFAULT_POLICIES
    budgets: Sequence[float] = DEFAULT_BUDGETS
    fps: Sequence[float] = (1.0,)
    llms: Sequence[str | None] = (None,)
    top_k: int = 4
    max_new_tokens: int = 48
    host_budget_tokens: int = 0
    via_websocket: bool = False
    url: str | None = None
    token: str | None = None
    variants: Sequence[Variant] = (Variant(),)


def llm_name(llm: str | None) -> str:
    return Path(llm).name if llm else DEFAULT_LLM_NAME
