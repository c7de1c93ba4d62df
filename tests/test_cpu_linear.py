"""modules.cpu_linear: oneDNN inference linears give nn.Linear's values, keep parameters and state dicts,
step aside where autograd, autocast or export needs torch's own path, and the speech encoders use them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.cpu_linear import OneDNNLinear, onednn_linear_available, use_onednn_linears
from vencoder import clear_cache, get_speech_encoder
from vencoder.fairseq_writer import write_fairseq_hubert

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")


def _layer(bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(96, 160, bias=bias)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 96), (2, 33, 96), (2, 3, 5, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_match_nn_linear(shape, bias):
    plain = _layer(bias)
    fast = _layer(bias)
    assert use_onednn_linears(fast) == 1 and type(fast) is OneDNNLinear
    x = torch.randn(*shape)
    with torch.no_grad():
        expected, got = plain(x), fast(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_non_contiguous_input():
    fast = _layer()
    use_onednn_linears(fast)
    x = torch.randn(96, 40).t()  # a transposed view
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), F.linear(x, fast.weight, fast.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_oneDNN_path_is_taken_at_inference_and_not_with_autograd(monkeypatch):
    calls = []
    original = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return original(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    fast = _layer()
    use_onednn_linears(fast)
    x = torch.randn(5, 96)
    with torch.no_grad():
        fast(x)
    assert calls == [torch.Size([5, 96])]
    # Recording autograd: nn.Linear's own path, gradients as usual
    x.requires_grad_(True)
    y = fast(x)
    y.sum().backward()
    assert len(calls) == 1
    torch.testing.assert_close(x.grad, fast.weight.sum(0).expand(5, 96))
    # bf16 autocast and other dtypes also take torch's path
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x.detach()).dtype == torch.bfloat16
    with torch.no_grad():
        fast.double()(x.detach().double())
    assert len(calls) == 1


def test_swap_keeps_parameters_and_state_dict_and_skips_subclasses():
    class Custom(nn.Linear):
        pass

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Custom(8, 8), nn.Sequential(nn.Linear(8, 2)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = [id(p) for p in net.parameters()]
    count = use_onednn_linears(net)
    if not onednn_linear_available():
        assert count == 0
        return
    assert count == 2
    assert [type(m).__name__ for m in net.modules() if isinstance(m, nn.Linear)] == ["OneDNNLinear", "Custom",
                                                                                    "OneDNNLinear"]
    assert [id(p) for p in net.parameters()] == params
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert use_onednn_linears(net) == 0  # already converted


@needs_onednn
def test_speech_encoder_on_cpu_uses_onednn_linears(tmp_path):
    write_fairseq_hubert(tmp_path / "checkpoint_best_legacy_500.pt", seed=0)
    clear_cache()
    try:
        encoder = get_speech_encoder("vec768l12", device="cpu", pretrain_dir=tmp_path, cache=False)
        kinds = {type(m) for m in encoder.model.modules() if isinstance(m, nn.Linear)}
        assert kinds == {OneDNNLinear}
        wav = torch.sin(torch.arange(8000) * 0.05) * 0.3
        units = encoder.encode(wav)
        # The same network with torch's linears: the units agree to float32 rounding.
        for m in encoder.model.modules():
            if type(m) is OneDNNLinear:
                m.__class__ = nn.Linear
        torch.testing.assert_close(units, encoder.encode(wav), atol=1e-4, rtol=1e-4)
    finally:
        clear_cache()


def test_only_on_x86_64(monkeypatch):
    import modules.cpu_linear as cpu_linear

    monkeypatch.setattr(cpu_linear.platform, "machine", lambda: "arm64")
    net = nn.Sequential(nn.Linear(4, 4))
    assert not cpu_linear.onednn_linear_available()
    assert use_onednn_linears(net) == 0 and type(net[0]) is nn.Linear
