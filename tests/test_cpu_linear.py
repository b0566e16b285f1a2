"""The language model's linear layers packed for oneDNN on a CPU: the same outputs, or left alone."""

from __future__ import annotations

import pytest
import torch
from tiny_adapter import tiny_model
from torch import nn

from streamer.adapters import cpu_linear
from streamer.adapters.cpu_linear import PackedLinear, available, pack_linears

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN packed linear")


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(input_ids=ids).logits
    return out


def test_a_packed_layer_gives_the_layers_outputs() -> None:
    layer = nn.Linear(48, 80)
    packed = PackedLinear(layer)
    for shape in ((1, 48), (2, 7, 48), (1, 300, 48)):
        x = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)


def test_packing_a_model_keeps_its_logits_and_its_hooks_work() -> None:
    model = tiny_model()
    ids = torch.randint(0, 200, (1, 17), generator=torch.Generator().manual_seed(0))
    before = logits(model, ids)
    decoder = model.get_decoder()
    linears = sum(isinstance(m, nn.Linear) for m in decoder.layers.modules())
    assert pack_linears(model, decoder.layers) == linears + 1  # the output layer too
    assert not any(type(m) is nn.Linear for m in model.modules())
    seen = []
    hook = decoder.layers[0].self_attn.k_proj.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-4, atol=1e-4)
    hook.remove()
    assert seen == [torch.Size([1, 17, model.config.num_key_value_heads * model.config.head_dim])]
    assert pack_linears(model, decoder.layers) == 0, "a packed model is left as it is"


def test_a_build_that_cannot_pack_leaves_the_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> torch.Tensor:
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(cpu_linear, "_works", lambda linear: False)
    model = tiny_model()
    assert pack_linears(model, model.get_decoder().layers) == 0
    assert all(type(m) is not PackedLinear for m in model.modules())
    monkeypatch.undo()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", refuse)
    assert not cpu_linear._works(nn.Linear(8, 8))
