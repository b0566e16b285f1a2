"""Which model answers, and where it runs: the `--model`, `--device`, `--dtype` and `--download` options.

`--model` takes `embedded` (the default: the CPU frame describer with `--llm` as its language model), a
local checkpoint folder, or a Hugging Face model id (`owner/name`). A folder or id must hold a
vision-language checkpoint of a family the VLM adapter reads (`streamer.adapters.vlm.FORMATS`); its
frames become the model's own vision tokens. An id is looked up in the local Hugging Face cache and
downloaded only when the user asks for it (`--download`, or `download: true` under `model:` in the
config file); otherwise one sentence says it is not in the cache and gives the command.

Every check here runs before any model loads (`check_choice`), so a wrong option costs a second.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.errors import UserError

if TYPE_CHECKING:
    import torch

    from streamer.adapters.base import ModelAdapter

EMBEDDED = "embedded"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelChoice:
    """What the engine's adapter is built from; the fields mirror the command-line options."""

    model: str = EMBEDDED
    llm: str | None = None  # the embedded stack's language model (a folder or .gguf); None: SmolLM2
    device: str = "auto"
    dtype: str = "auto"
    download: bool = False

    @property
    def embedded(self) -> bool:
        return self.model == EMBEDDED

    @property
    def name(self) -> str:
        """How reports name the model."""
        if self.embedded:
            return Path(self.llm).name if self.llm else "SmolLM2-135M-Instruct"
        return self.model if is_hub_id(self.model) and not Path(self.model).exists() else Path(self.model).name


def is_hub_id(model: str) -> bool:
    """Whether `model` has the shape of a Hugging Face model id (`owner/name`)."""
    return bool(_HUB_ID.match(model))


def supported_families() -> list[str]:
    from streamer.adapters.vlm import FORMATS

    return sorted(FORMATS)


def check_choice(choice: ModelChoice) -> Path | None:
    """Check every option without loading a model; returns the checkpoint folder (None for embedded).

    A hub id missing from the cache is downloaded here when `choice.download` is set.
    """
    if not DEVICE_PATTERN.match(choice.device):
        raise UserError(f"Unknown --device '{choice.device}': give cpu, cuda, cuda:N or auto.")
    if choice.dtype not in DTYPES:
        raise UserError(f"Unknown --dtype '{choice.dtype}': give {', '.join(DTYPES)}.")
    if choice.embedded:
        if choice.llm is not None:
            from streamer.llm import check_llm_path

            check_llm_path(choice.llm)
        return None
    if choice.llm is not None:
        raise UserError(
            f"--llm is the embedded stack's language model and --model '{choice.model}' brings its own; "
            "leave --llm out, or use --model embedded."
        )
    folder = locate(choice.model, choice.download)
    check_family(folder, choice.model)
    return folder


def locate(model: str, download: bool) -> Path:
    """The local folder of checkpoint `model`: a folder path, or a hub id from the cache (or downloaded)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model '{model}' has no config.json; give a Hugging Face checkpoint folder.")
        return path
    if not is_hub_id(model):
        raise UserError(
            f"--model '{model}' is neither a folder nor a Hugging Face model id (owner/name); "
            "give embedded, a checkpoint folder or a model id."
        )
    cached = cached_snapshot(model)
    if cached is not None:
        return cached
    if not download:
        raise UserError(
            f"'{model}' is not in the Hugging Face cache ({hub_cache()}); add --download to fetch it "
            f"(or `download: true` under model: in the config file), or run `hf download {model}` first."
        )
    return download_snapshot(model)


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (HF_HUB_CACHE, HF_HOME, or ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(model: str) -> Path | None:
    """The cached snapshot folder of hub id `model`, or None when it is not in the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, cache_dir=hub_cache(), local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def download_snapshot(model: str) -> Path:
    """Download hub id `model` into the cache, with the hub library's progress bars; returns its folder.

    Loading a model never touches the network (`streamer.llm` sets the hub offline); a download the
    user asked for lifts that for this call only, unless they set HF_HUB_OFFLINE themselves.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from streamer.llm import USER_HUB_OFFLINE

    if USER_HUB_OFFLINE:
        raise UserError(f"Cannot download '{model}': HF_HUB_OFFLINE is set; unset it and run again.")
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        return Path(snapshot_download(model, cache_dir=hub_cache()))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"Could not download '{model}' from the Hugging Face Hub ({reason}); check the id and the network."
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = offline


def check_family(folder: Path, model: str) -> str:
    """The checkpoint's model_type, if the VLM adapter reads its family; else one sentence listing those."""
    try:
        config: Any = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"--model '{model}': cannot read its config.json ({error}).") from None
    model_type = str(config.get("model_type", "")) if isinstance(config, dict) else ""
    families = supported_families()
    if model_type not in families:
        kind = f"a '{model_type}' model" if model_type else "a model without a model_type"
        hint = " (a text-only LM goes to --llm)" if model_type and "vision_config" not in config else ""
        raise UserError(
            f"--model '{model}' is {kind}{hint}; streamer reads vision-language checkpoints of the "
            f"families {', '.join(families)}."
        )
    return model_type


def resolve_device(device: str) -> str:
    """`device` with `auto` decided: the first CUDA device when torch sees one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device}: torch {torch.__version__} sees no CUDA device; use --device cpu, "
                "or install the CUDA build of torch on a machine with a GPU."
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s); pick another.")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`dtype` as a torch dtype; `auto` is float32 on the CPU and bfloat16 on a GPU."""
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    resolved: torch.dtype = getattr(torch, dtype)
    return resolved


def placement(choice: ModelChoice) -> tuple[str, torch.dtype]:
    """The device and dtype `choice` runs on, `auto` decided: a checkpoint goes to CUDA when torch sees
    one; the embedded stack's LM stays on the CPU (its describer is a CPU stack) unless a GPU is named."""
    device = "cpu" if choice.embedded and choice.device == "auto" else resolve_device(choice.device)
    return device, resolve_dtype(choice.dtype, device)


def load_adapter(choice: ModelChoice) -> ModelAdapter:
    """The adapter `choice` names, loaded on its device (checks first, so a bad option fails fast)."""
    folder = check_choice(choice)
    if folder is None:
        from streamer.adapters.embedded import EmbeddedAdapter

        device, dtype = placement(choice)
        return EmbeddedAdapter.load(choice.llm, device=device, dtype=dtype)
    device, dtype = placement(choice)
    from streamer.adapters.vlm import VisionLanguageAdapter

    return VisionLanguageAdapter.load(str(folder), device=device, dtype=dtype, name=choice.name)


def choice_from_args(args: Any) -> ModelChoice:
    """The ModelChoice of parsed command-line options (those `add_model_options` adds)."""
    return ModelChoice(
        model=args.model,
        llm=args.llm,
        device=args.device,
        dtype=args.dtype,
        download=args.download,
    )


def add_model_options(parser: Any, defaults: bool = True) -> None:
    """`--model`, `--llm`, `--device`, `--dtype` and `--download` on an argparse parser.

    With `defaults=False` an option left out is None, so a config file's `model:` section decides.
    """
    parser.add_argument(
        "--model",
        default=EMBEDDED if defaults else None,
        help="embedded (default: the CPU frame describer with --llm), a local vision-language checkpoint "
        "folder, or a Hugging Face model id from the local cache",
    )
    parser.add_argument(
        "--llm",
        help="the embedded stack's language model: a local Hugging Face causal-LM folder or .gguf file "
        "(default: SmolLM2-135M)",
    )
    add_placement_options(parser, defaults)


def add_placement_options(parser: Any, defaults: bool = True) -> None:
    """`--device`, `--dtype` and `--download`: where a model runs and whether it may be downloaded."""
    parser.add_argument(
        "--device",
        default="auto" if defaults else None,
        help="cpu, cuda, cuda:N or auto (default: a --model checkpoint on cuda when torch sees one; embedded on cpu)",
    )
    parser.add_argument(
        "--dtype",
        default="auto" if defaults else None,
        choices=DTYPES,
        help="weights' dtype (default: float32 on CPU, bfloat16 on GPU)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download a --model hub id that is not in the local cache"
    )
