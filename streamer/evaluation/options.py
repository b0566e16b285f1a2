"""What `streamer eval` runs: the grid of configurations and the options shared by every run.

Kept free of heavy imports, so the command line can offer the defaults without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.models import ModelChoice

# The names of streamer.engine.MemoryPolicyName (kept here so the command line loads without torch).
POLICIES: tuple[str, ...] = ("curvature", "uniform", "fifo", "equal")
DEFAULT_POLICIES = ("curvature", "uniform", "fifo", "equal")
DEFAULT_BUDGETS = (5.0, 10.0, 25.0)


@dataclass(frozen=True)
class Variant:
    """A named set of engine settings (`streamer.engine.EngineConfig` fields) that runs beside the others."""

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
