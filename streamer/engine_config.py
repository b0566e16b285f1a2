"""What an engine is configured by: limits, memory policy and retrieval, shared by every stream.

Free of torch, so a command line shows these defaults and checks its options without loading a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memory.curvature import ENGINE_DEFAULT_K, ENGINE_HEARTBEAT_S, CurvatureConfig
from memory.settings import CompressionMethod, MemoryPolicyName

AnswerSource = Literal["cache", "text"]
# How a multiple-choice question picks its option (see `streamer.query.generate_answer`).
ChoiceScoring = Literal["grounded", "letter", "text", "generate"]
# Frames per second a stream is sampled at unless told otherwise.
DEFAULT_FPS = 1.0
# The curvature scorer's settings in the engine, where they differ from the scorer's own defaults.
ENGINE_CURVATURE: dict[str, float] = {"k": ENGINE_DEFAULT_K, "heartbeat_s": ENGINE_HEARTBEAT_S}


class MemoryConfig(BaseModel):
    """`memory:` how much each stream keeps, and what gives way when the budget is full."""

    model_config = ConfigDict(extra="forbid")

    budget_tokens: int = Field(4096, ge=256, description="KV tokens resident on the device per stream, sink included")
    host_budget_tokens: int = Field(
        65536, ge=0, description="KV tokens per stream kept in host memory after leaving the device (0: drop them)"
    )
    evict_chunk: int = Field(256, ge=1, description="tokens freed at once when the budget is full")
    window_seconds: float = Field(
        8.0, ge=0, description="the recent frames: read by every question, given way only when nothing older is left"
    )
    policy: MemoryPolicyName = Field(
        "curvature",
        description="what gives way when the budget is full: curvature tiers, uniform sampling, fifo window, "
        "or equal (tiers without curvature: every frame clear)",
    )
    curvature: CurvatureConfig = Field(default_factory=lambda: CurvatureConfig(**ENGINE_CURVATURE))
    compression: CompressionMethod = Field("value_norm", description="how a demoted frame's KV block is compressed")
    compress_ratio: float = Field(0.5, gt=0, le=1, description="share of a block's tokens its compression keeps")

    @field_validator("curvature", mode="before")
    @classmethod
    def _engine_curvature(cls, value: Any) -> Any:
        """A partial `curvature:` section keeps the engine's own defaults for what it leaves out."""
        return {**ENGINE_CURVATURE, **value} if isinstance(value, Mapping) else value

    compact_after_s: float = Field(
        7200.0,
        ge=0,
        description="stream seconds a frame's record (description, retrieval vectors, host KV) is kept; older "
        "frames live on in the event timeline only, so memory per stream stays bounded (0: keep every record)",
    )
    heap_trim_every_s: float = Field(
        5.0,
        ge=0,
        description="wall seconds between giving the heap's freed pages back to the system (glibc malloc_trim), "
        "so a long-running process's resident memory tracks what it holds (0: never)",
    )


class RetrievalConfig(BaseModel):
    """`retrieval:` which frames and timeline lines a question reads."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(4, ge=0, description="frames a question reads by relevance (0: every resident frame)")
    anchor_seconds: float = Field(3.0, ge=0, description="frames read around a time the question names")
    internal_weight: float = Field(
        0.0, ge=0, description="weight of the key/query (internal) retrieval score; 0 skips its LM pass"
    )
    text_weight: float = Field(1.0, ge=0, description="weight of the description/question (MiniLM) score")
    lexical_weight: float = Field(
        1.0, ge=0, description="weight of the BM25 score of frame descriptions against the question's words"
    )
    coverage: bool = Field(
        False, description="choose relevant frames by adaptive keyframe sampling (relevance and coverage)"
    )
    read_intent: bool = Field(
        True,
        description="questions read what they ask for (recency, order, counts, the present) and the event "
        "timeline; False: named times, the recent window and the most relevant frames only",
    )


class AnswerConfig(BaseModel):
    """`answer:` how the answer is produced from what the question read."""

    model_config = ConfigDict(extra="forbid")

    source: AnswerSource = Field(
        "cache",
        description="what a question reads for its chosen frames: their KV as cached at ingest ('cache'), or "
        "their tokens read again after the cached sink ('text'; frames without token ids are read from the cache)",
    )
    choice_scoring: ChoiceScoring = Field(
        "grounded",
        description="how a multiple-choice question picks its option: among those the frames and timeline lines "
        "it read support best, the likeliest letter ('grounded'); the likeliest letter ('letter') or option text "
        "('text') alone; or free text like an open question ('generate')",
    )
    grounded: bool = Field(
        True,
        description="open questions that what they read answers (a count, one of the alternatives they offer, "
        "written text) are answered from it rather than by free generation",
    )
    controls: bool = Field(
        True, description="free answers: the answer's own repeats penalised and one line at most (no loops)"
    )
    max_question_tokens: int = Field(64, ge=8)
    max_new_tokens: int = Field(48, ge=1)
    batched: bool = Field(
        True,
        description="answers of all streams decoded together, one token per step for every answer, on one "
        "model thread that also runs ingest's passes first (False: each answer pass by pass in its own thread)",
    )
    max_rows: int = Field(16, ge=1, description="answers decoded in one step; more wait to join")
    max_step_tokens: int = Field(
        128, ge=1, description="the longest prefill chunk between two decode steps (longer prefills are split)"
    )
    hold_s: float = Field(
        0.1, ge=0, le=1, description="how long a decode step waits for the first pass of a question being prepared"
    )

    @property
    def reserve(self) -> int:
        """Tokens each stream's budget keeps free for one question and its answer."""
        return self.max_question_tokens + self.max_new_tokens


class SnapshotConfig(BaseModel):
    """`snapshot:` where each stream's memory is saved, so a restart goes on from it."""

    model_config = ConfigDict(extra="forbid")

    dir: Path | None = Field(None, description="write each stream's memory here and restore it on start")
    every_s: float = Field(60.0, gt=0, description="stream seconds between snapshots")


class EngineConfig(BaseModel):
    """Everything an engine is configured by, in the sections of the YAML file: memory, retrieval, answer and
    snapshot. Shared by every stream of the engine."""

    model_config = ConfigDict(extra="forbid")

    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)

    @property
    def answer_reserve(self) -> int:
        return self.answer.reserve


# Where each setting of the earlier, flat configuration went: for one-sentence hints and for callers that
# name settings by their section path ("retrieval.top_k").
MOVED: dict[str, str] = {
    **{name: f"memory.{name}" for name in MemoryConfig.model_fields},
    **{name: f"retrieval.{name}" for name in RetrievalConfig.model_fields if name != "top_k"},
    "retrieval_top_k": "retrieval.top_k",
    "answer_from": "answer.source",
    "grounded_answers": "answer.grounded",
    "answer_controls": "answer.controls",
    "choice_scoring": "answer.choice_scoring",
    "max_question_tokens": "answer.max_question_tokens",
    "max_new_tokens": "answer.max_new_tokens",
    "snapshot_dir": "snapshot.dir",
    "snapshot_every_s": "snapshot.every_s",
}


def nested(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings named by section path ("retrieval.top_k": 2), or by their earlier flat name (`MOVED`), as the
    nested dict EngineConfig takes ({"retrieval": {"top_k": 2}}); a nested value is merged into what is
    already there."""
    tree: dict[str, Any] = {}
    for name, value in settings.items():
        path = MOVED.get(name, name)
        *parents, name = path.split(".")
        branch = tree
        for parent in parents:
            branch = branch.setdefault(parent, {})
        if isinstance(value, dict) and isinstance(branch.get(name), dict):
            branch[name].update(value)
        else:
            branch[name] = value
    return tree
