"""The language model's linear layers on a CPU, with their weights packed once for oneDNN.

PyTorch's own linear layer hands its weights to the matrix library in their stored layout, which packs
them into its blocked layout on every call. For the passes an answer makes (a decode step of a few
rows, a short read) that packing and the reading it takes are much of the pass: the weights of even a
small language model are hundreds of megabytes in float32. Packed once, at load, each pass only reads
them (`scripts/bench_server.py` and `scripts/bench_ttft.py` show the effect). Float32 on a CPU only;
the packed weights replace the originals, except the output layer's when it shares the input
embeddings (the embeddings stay, and the packed copy is extra).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeGuard

import torch
from torch import nn

log = logging.getLogger(__name__)

# The number of rows the packed layout is tuned for: decode steps of several answers and short reads.
PACKED_ROWS = 16


def available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear operators."""
    ops = torch.ops.mkldnn
    return bool(torch.backends.mkldnn.is_available()) and all(
        hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """`nn.Linear` for inference on a CPU, its weight in oneDNN's packed layout (the same outputs up to float
    rounding)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACKED_ROWS)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _packable(module: Any) -> TypeGuard[nn.Linear]:
    return type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32


def _works(linear: nn.Linear) -> bool:
    """Whether this build packs `linear` and gives its outputs (a build whose oneDNN lacks the operators for
    this CPU raises, or could compute something else: then nothing is packed)."""
    probe = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            return bool(torch.allclose(PackedLinear(linear)(probe), linear(probe), rtol=1e-4, atol=1e-4))
    except RuntimeError:
        return False


def pack_linears(model: Any, layers: Iterable[nn.Module]) -> int:
    """Replace every float32 CPU `nn.Linear` inside `layers` (the decoder layers) and the model's output layer
    by a `PackedLinear`; returns how many were replaced (0 without oneDNN, on another device or dtype, or
    when a packed layer does not give the layer's outputs here)."""
    if not available():
        return 0
    found = [
        (parent, name, child)
        for layer in layers
        for parent in list(layer.modules())
        for name, child in list(parent.named_children())
        if _packable(child)
    ]
    if found and not _works(found[0][2]):
        log.warning("oneDNN cannot pack this model's linear layers here; they stay as they are.")
        return 0
    for parent, name, child in found:
        setattr(parent, name, PackedLinear(child))
    replaced = len(found)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if replaced and _packable(output):
        model.set_output_embeddings(PackedLinear(output))
        replaced += 1
    return replaced
