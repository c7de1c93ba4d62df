"""modules.lean_autograd: the same outputs, gradients and random draws as the plain torch ops, bit for bit,
with less kept for the backward pass; and the weight-norm cache release of modules.commons."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules import lean_autograd
from modules.attentions import Encoder
from modules.commons import release_weight_norm_cache, weight_norm
from modules.lean_autograd import Dropout, dropout_matmul, leaky_relu_conv, relu_dropout_conv
from vdecoder.nsf_hifigan import ResBlock1


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for the backward pass while `fn()` runs (parameters too)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("kind", ["conv", "weight_norm_conv", "transposed", "grouped_strided"])
def test_leaky_relu_conv_matches_plain_ops_bitwise(kind):
    torch.manual_seed(0)
    conv = {
        "conv": lambda: nn.Conv1d(8, 8, 5, dilation=3, padding=6),
        "weight_norm_conv": lambda: weight_norm(nn.Conv1d(8, 8, 3, padding=1)),
        "transposed": lambda: weight_norm(nn.ConvTranspose1d(8, 4, 16, 8, padding=4)),
        "grouped_strided": lambda: nn.Conv1d(8, 6, 3, 2, padding=1, groups=2),
    }[kind]()
    x0 = torch.randn(3, 8, 40)
    results = []
    for lean in (False, True):
        x = x0.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        out = leaky_relu_conv(conv, x, 0.1) if lean else conv(F.leaky_relu(x, 0.1))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), x.grad] + _grads(*conv.parameters()))
    for plain, lean in zip(*results):
        assert torch.equal(plain, lean)


def test_leaky_relu_conv_keeps_half_of_a_residual_block():
    block = ResBlock1(16, 3, (1, 3, 5))
    x = torch.randn(2, 16, 300, requires_grad=True)
    lean = _saved_bytes(lambda: block(x))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lean_autograd, "exporting", lambda: True)  # forces the plain ops
        plain = _saved_bytes(lambda: block(x))
    activation = x.numel() * 4
    # Per conv pair autograd keeps the input, its activation, the first conv's output and its activation;
    # the lean path drops both activations: 3 pairs x 2 tensors (the conv weights are kept by both).
    assert plain - lean == 6 * activation
    assert lean < 0.6 * plain


def test_leaky_relu_conv_falls_back_without_gradients_and_under_autocast():
    conv = weight_norm(nn.Conv1d(4, 4, 3, padding=1))
    x = torch.randn(1, 4, 20)
    with torch.no_grad():
        assert torch.equal(leaky_relu_conv(conv, x, 0.1), conv(F.leaky_relu(x, 0.1)))
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = leaky_relu_conv(conv, xg, 0.1)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ == "ConvolutionBackward0"


@pytest.mark.parametrize("shape", [(6, 2, 45, 45), (4, 7)])
def test_dropout_draws_the_same_mask_and_keeps_bools(shape):
    drop = Dropout(0.1).train()
    x0 = torch.randn(*shape)
    results = []
    for lean in (False, True):
        x = x0.clone().requires_grad_()
        torch.manual_seed(5)
        out = drop(x) if lean else F.dropout(x, 0.1, True)
        (out * out).sum().backward()
        results.append((out.detach(), x.grad, torch.rand(3)))  # the generator state afterwards too
    for plain, lean in zip(*results):
        assert torch.equal(plain, lean)
    x = x0.clone().requires_grad_()
    assert _saved_bytes(lambda: drop(x)) == x.numel()  # one byte per element, not a float mask
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("band", [False, True])
def test_dropout_matmul_matches_plain_ops_bitwise(band):
    torch.manual_seed(1)
    probs0 = torch.softmax(torch.randn(3, 2, 11, 13), -1)
    v0 = torch.randn(3, 2, 5, 13)
    drop = Dropout(0.1).train()
    results = []
    for lean in (False, True):
        probs, v_raw = probs0.clone().requires_grad_(), v0.clone().requires_grad_()
        v = v_raw.transpose(2, 3)  # attention's values are a transposed view
        torch.manual_seed(3)
        if lean:
            out, p_attn = dropout_matmul(probs, v, drop)
        else:
            p_attn = F.dropout(probs, 0.1, True)
            out = torch.matmul(p_attn, v)
        loss = out.pow(2).sum() + (p_attn[..., :4].pow(3).sum() if band else 0)  # band: p_attn used again
        loss.backward()
        results.append((out.detach(), p_attn.detach(), probs.grad, v_raw.grad, torch.rand(2)))
    for plain, lean in zip(*results):
        assert torch.equal(plain, lean)


@pytest.mark.parametrize("pad", [(1, 1), (2, 0), (0, 0)])
def test_relu_dropout_conv_matches_plain_ops_bitwise(pad):
    torch.manual_seed(2)
    conv = nn.Conv1d(6, 4, pad[0] + pad[1] + 1)
    h0 = torch.randn(3, 6, 17)
    mask = (torch.arange(17) < torch.tensor([[17], [14], [9]])).float().unsqueeze(1)
    drop = Dropout(0.1).train()
    results = []
    for lean in (False, True):
        h = h0.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        torch.manual_seed(4)
        if lean:
            out = relu_dropout_conv(h, mask, conv, pad, drop)
        else:
            out = conv(F.pad(F.dropout(torch.relu(h), 0.1, True) * mask, pad))
        (out * out).sum().backward()
        results.append([out.detach(), h.grad, torch.rand(2)] + _grads(*conv.parameters()))
    for plain, lean in zip(*results):
        assert torch.equal(plain, lean)


def test_transformer_encoder_is_unchanged_and_keeps_less():
    torch.manual_seed(0)
    enc = Encoder(32, 128, 2, 2, kernel_size=3, p_dropout=0.1).train()
    x0 = torch.randn(2, 32, 60)
    mask = (torch.arange(60) < torch.tensor([[60], [45]])).float().unsqueeze(1)
    results, saved = [], []
    for lean in (False, True):
        x = x0.clone().requires_grad_()
        enc.zero_grad(set_to_none=True)
        with pytest.MonkeyPatch.context() as mp:
            if not lean:
                mp.setattr(lean_autograd, "exporting", lambda: True)
            torch.manual_seed(6)
            out_box = []
            saved.append(_saved_bytes(lambda: out_box.append(enc(x, mask))))
        out_box[0].pow(2).sum().backward()
        results.append([out_box[0].detach(), x.grad] + _grads(*enc.parameters()))
    for plain, lean in zip(*results):
        assert torch.equal(plain, lean)
    # Per layer (batch 2, 2 heads, 60 frames, 32 channels, 128 in the FFN): bool instead of float masks for
    # the attention, FFN and both residual-branch dropouts (3 bytes an element less), and neither the
    # dropped-out attention probabilities nor the FFN's padded hidden input (2 frames longer) are kept.
    attn, ffn, branch = 2 * 2 * 60 * 60, 2 * 128 * 60, 2 * 32 * 60
    per_layer = 3 * attn + 4 * attn + 3 * ffn + 4 * 2 * 128 * 62 + 2 * 3 * branch
    assert saved[0] - saved[1] == 2 * per_layer


def test_release_weight_norm_cache_drops_the_computed_weight_only():
    torch.manual_seed(0)
    net = nn.Sequential(weight_norm(nn.Conv1d(3, 5, 3)), nn.Conv1d(5, 2, 1))
    x = torch.randn(1, 3, 10)
    before = net(x)
    keys = sorted(net.state_dict())
    assert torch.is_tensor(net[0].weight)
    release_weight_norm_cache(net)
    assert net[0].weight is None
    assert isinstance(net[1].weight, nn.Parameter)  # plain convs keep their parameter
    assert sorted(net.state_dict()) == keys
    assert torch.equal(net(x), before)
    assert torch.is_tensor(net[0].weight)
