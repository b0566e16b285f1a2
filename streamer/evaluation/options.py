"""What `streamer eval` runs: the grid of configurations and the options shared by every run.

Kept free of heavy imports, so the command line can offer the defaults without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memory.settings import POLICIES
from streamer.models import ModelChoice

DEFAULT_POLICIES: tuple[str, ...] = POLICIES
DEFAULT_BUDGETS = (5.0, 10.0, 25.0)
# `streamer eval` answers in at most this many tokens, fewer than the engine's default (EngineConfig.max_new_tokens).
EVAL_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Variant:
    """A named set of engine settings (`streamer.engine_config.EngineConfig` fields) that runs beside the others."""

    name: str = "default"
    settings: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """One configuration of the grid."""

    policy: str
    budget_percent: float
    fps: float
    model: ModelChoice = field(default_factory=ModelChoice)
    variant: Variant = Variant()
    served_by: str | None = None  # the server's address, when a running server answers as it is configured

    @property
    def llm_name(self) -> str:
        """The name of the model that answers (the report's `llm` column)."""
        return f"as served by {self.served_by}" if self.served_by else self.model.name


@dataclass
class EvalOptions:
    policies: Sequence[str] = DEFAULT_POLICIES
    budgets: Sequence[float] = DEFAULT_BUDGETS
    fps: Sequence[float] = (1.0,)
    models: Sequence[ModelChoice] = (ModelChoice(),)
    top_k: int = 4
    max_new_tokens: int = 48
    host_budget_tokens: int = 0
    via_websocket: bool = False
    url: str | None = None
    token: str | None = None
    variants: Sequence[Variant] = (Variant(),)
