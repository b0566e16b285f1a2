"""One forward pass over the new tokens of several rows, packed into one sequence.

A decode step's rows (one token each, their contexts in a `BatchedCache`) and any number of reads (a
question's tokens after its own `StreamingCache`) go through the model as a single sequence of all their
new tokens: the linear layers, norms and MLPs run once over it, so the weights are read once for every
row. On a CPU that reading is most of a pass's cost at these sizes (a 14-token read costs about as much
as a decode step of 8 rows), which is why a read folded into the step costs far less than a pass of its
own. Only attention is per row: each row's queries attend to its own keys, through `PackedPass.attend`,
which the model reaches as the attention implementation `ATTENTION` while the pass runs
(`PackedPass.running`). Positions must be plain token positions (1-D): each token gets its row's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from memory.kv_cache import StreamingCache

if TYPE_CHECKING:
    from streamer.decoding import BatchedCache

ATTENTION = "streamer_packed"

_running = threading.local()

KV = tuple[torch.Tensor, torch.Tensor]


class _PackedLayer(CacheLayerMixin):
    """One layer: hands the pass's new keys and values to each row's own cache."""

    is_croppable = False
    is_sliding = False

    def __init__(self, packed: PackedPass, index: int) -> None:
        super().__init__()
        self.packed = packed
        self.index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.packed.write(self.index, key_states, value_states)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return 1, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1


class PackedPass(Cache):
    """The cache of one packed pass: `batch`'s rows first (one token each; None: no decode step), then the
    reads, `sizes[i]` tokens after `caches[i]` (which must have room: `StreamingCache.reserve`)."""

    def __init__(
        self,
        num_layers: int,
        batch: BatchedCache | None,
        caches: Sequence[StreamingCache],
        sizes: Sequence[int],
        device: torch.device,
    ) -> None:
        layers = [_PackedLayer(self, index) for index in range(num_layers)]
        super().__init__(layers=list(layers))
        self.batch = batch
        self.caches = list(caches)
        self.sizes = list(sizes)
        self.rows = batch.rows if batch is not None else 0
        self.batch_mask = batch.prepare(1) if batch is not None else None
        self.read_masks = []
        positions = list(batch.lengths) if batch is not None else []
        for cache, size in zip(self.caches, self.sizes, strict=True):
            start = cache.length
            positions.extend(range(start, start + size))
            # Query j of the read sees the cache and the read's first j + 1 tokens.
            visible = (
                torch.arange(start + size, device=device)[None, :] <= start + torch.arange(size, device=device)[:, None]
            )
            self.read_masks.append(visible[None, None])
        self.positions = positions
        self.kv: list[list[KV]] = [[] for _ in range(num_layers)]

    @property
    def tokens(self) -> int:
        return self.rows + sum(self.sizes)

    def last_tokens(self) -> list[int]:
        """Where each row's logits come from in the packed sequence: every decode row, then each read's last."""
        found = list(range(self.rows))
        end = self.rows
        for size in self.sizes:
            end += size
            found.append(end - 1)
        return found

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append each row's slice of the packed (1, kv_heads, tokens, head_dim) keys and values to its cache,
        keeping what each row's attention reads (its whole context)."""
        found = []
        rows = self.rows
        if self.batch is not None:
            # (1, heads, rows, dim) -> (rows, heads, 1, dim): one new token per decode row.
            found.append(
                self.batch.stream_layers[layer].update(
                    keys[:, :, :rows].permute(2, 1, 0, 3), values[:, :, :rows].permute(2, 1, 0, 3)
                )
            )
        start = rows
        for cache, size in zip(self.caches, self.sizes, strict=True):
            end = start + size
            found.append(cache.stream_layers[layer].update(keys[:, :, start:end], values[:, :, start:end]))
            start = end
        self.kv[layer] = found

    def attend(self, module: Any, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """Attention of the packed (1, heads, tokens, head_dim) queries, each row against its own keys;
        (1, tokens, heads, head_dim) like the model's own attention functions return."""
        found = self.kv[module.layer_idx]
        outputs = []
        rows = self.rows
        if self.batch is not None:
            keys, values = found[0]
            rows_query = query[:, :, :rows].permute(2, 1, 0, 3)
            out, _ = sdpa_attention_forward(module, rows_query, keys, values, self.batch_mask, scaling=scaling)
            outputs.append(out.reshape(1, rows, *out.shape[2:]))
            found = found[1:]
        start = rows
        for (keys, values), size, mask in zip(found, self.sizes, self.read_masks, strict=True):
            end = start + size
            out, _ = sdpa_attention_forward(module, query[:, :, start:end], keys, values, mask, scaling=scaling)
            outputs.append(out)
            start = end
        return torch.cat(outputs, dim=1)

    @contextmanager
    def running(self, model: Any) -> Iterator[None]:
        """While the block runs `model` over this pass, its attention is `attend`."""
        config = model.config.get_text_config()
        previous = config._attn_implementation
        config._attn_implementation = ATTENTION
        _running.packed = self
        try:
            yield
        finally:
            config._attn_implementation = previous
            _running.packed = None


def _packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    packed: PackedPass | None = getattr(_running, "packed", None)
    if packed is None:
        raise RuntimeError(f"the attention implementation {ATTENTION!r} runs only inside PackedPass.running")
    return packed.attend(module, query, scaling), None


AttentionInterface.register(ATTENTION, _packed_attention)
