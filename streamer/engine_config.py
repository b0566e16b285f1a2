"""What an engine is configured by: limits, memory policy and retrieval, shared by every stream.

Free of torch, so a command line shows these defaults and checks its options without loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from memory.curvature import ENGINE_DEFAULT_K, CurvatureConfig
from memory.settings import CompressionMethod, MemoryPolicyName

AnswerSource = Literal["cache", "text"]
# How a multiple-choice question picks its option (see `streamer.query.generate_answer`).
ChoiceScoring = Literal["grounded", "letter", "text", "generate"]
# Frames per second a stream is sampled at unless told otherwise.
DEFAULT_FPS = 1.0


class EngineConfig(BaseModel):
    """Limits, memory policy and retrieval settings shared by every stream of an engine."""

    model_config = ConfigDict(extra="forbid")

    budget_tokens: int = Field(4096, ge=256, description="KV tokens resident on the device per stream, sink included")
    host_budget_tokens: int = Field(
        65536, ge=0, description="KV tokens per stream kept in host memory after leaving the device (0: drop them)"
    )
    answer_from: AnswerSource = Field(
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
    grounded_answers: bool = Field(
        True,
        description="open questions that what they read answers (a count, one of the alternatives they offer, "
        "written text) are answered from it rather than by free generation",
    )
    answer_controls: bool = Field(
        True, description="free answers: the answer's own repeats penalised and one line at most (no loops)"
    )
    read_intent: bool = Field(
        True,
        description="questions read what they ask for (recency, order, counts, the present) and the event "
        "timeline; False: named times, the recent window and the most relevant frames only",
    )
    max_question_tokens: int = Field(64, ge=8)
    max_new_tokens: int = Field(48, ge=1)
    evict_chunk: int = Field(256, ge=1, description="tokens freed at once when the budget is full")
    retrieval_top_k: int = Field(4, ge=0, description="frames a question reads by relevance (0: every resident frame)")
    window_seconds: float = Field(8.0, ge=0, description="recent frames every question reads")
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
    policy: MemoryPolicyName = Field(
        "curvature",
        description="what gives way when the budget is full: curvature tiers, uniform sampling, fifo window, "
        "or equal (tiers without curvature: every frame clear)",
    )
    curvature: CurvatureConfig = Field(default_factory=lambda: CurvatureConfig(k=ENGINE_DEFAULT_K))
    compression: CompressionMethod = Field("value_norm", description="how a demoted frame's KV block is compressed")
    compress_ratio: float = Field(0.5, gt=0, le=1, description="share of a block's tokens its compression keeps")
    snapshot_dir: Path | None = Field(None, description="write each stream's memory here and restore it on start")
    snapshot_every_s: float = Field(60.0, gt=0, description="stream seconds between snapshots")

    @property
    def answer_reserve(self) -> int:
        return self.max_question_tokens + self.max_new_tokens
