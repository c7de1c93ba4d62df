"""modules.conv_layout: 1-D convolutions run as channels-last 2-D ones give the plain ops' values (up to
float summation order), keep the layout, and the decoder built on them matches the plain-layout decoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.commons import weight_norm
from modules.conv_layout import (
    TimeTiles,
    add_conv_,
    apply_conv,
    from_nwc,
    polyphase_kernel,
    tiled_leaky_relu_conv,
    tiled_leaky_relu_upsample,
    to_nwc,
    wants_nwc,
)
from modules.lean_autograd import leaky_relu_conv
from vdecoder import nsf_hifigan
from vdecoder.nsf_hifigan import Generator, GeneratorConfig

CONVS = {
    "dilated": lambda: nn.Conv1d(16, 16, 5, dilation=3, padding=6),
    "weight_norm": lambda: weight_norm(nn.Conv1d(16, 32, 3, padding=1)),
    "transposed": lambda: weight_norm(nn.ConvTranspose1d(16, 8, 16, 8, padding=4)),
    "grouped_strided": lambda: nn.Conv1d(16, 6, 3, 2, padding=1, groups=2),
    "one_input_channel": lambda: nn.Conv1d(1, 16, 8, stride=4, padding=2),  # the decoder's noise convs
    "reflect_padding": lambda: nn.Conv1d(16, 16, 3, padding=1, padding_mode="reflect"),
}


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_apply_conv_on_channels_last_input_matches_the_plain_conv(kind):
    torch.manual_seed(0)
    conv = CONVS[kind]()
    x = torch.randn(2, conv.in_channels, 96)
    with torch.no_grad():
        expected = conv(x)
        out = apply_conv(conv, to_nwc(x))
    assert out.dim() == 4 and out.size(2) == 1
    assert out.size(1) == 1 or out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(from_nwc(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 8])
def test_add_conv_adds_the_source_convolution_in_place(stride):
    """The decoder's source convolution (1 channel in, strided) added into a channels-last stage buffer."""
    torch.manual_seed(0)
    conv = weight_norm(nn.Conv1d(1, 16, kernel_size=1 if stride == 1 else 2 * stride, stride=stride, padding=stride // 2))
    source = torch.randn(1, 1, 1, 64 * stride)
    stage = torch.randn(1, 16, 1, 64).contiguous(memory_format=torch.channels_last)
    expected = stage + F.conv1d(source[:, :, 0], conv.weight, conv.bias, stride, stride // 2).unsqueeze(2)
    buffer = stage.data_ptr()
    with torch.no_grad():
        out = add_conv_(stage, conv, source)
    assert out.data_ptr() == buffer and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_plain_input_goes_through_the_module_unchanged():
    conv = nn.Conv1d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 20)
    with torch.no_grad():
        assert torch.equal(apply_conv(conv, x), conv(x))


@pytest.mark.parametrize("kind", ["dilated", "weight_norm", "transposed", "grouped_strided"])
def test_leaky_relu_conv_channels_last_gradients_match_the_plain_ops(kind):
    torch.manual_seed(1)
    conv = CONVS[kind]()
    x0 = torch.randn(3, conv.in_channels, 60)
    results = []
    for nwc in (False, True):
        x = (to_nwc(x0) if nwc else x0.clone()).requires_grad_()
        conv.zero_grad(set_to_none=True)
        out = leaky_relu_conv(conv, x, 0.1)
        if nwc:
            assert out.is_contiguous(memory_format=torch.channels_last)
            out = out.squeeze(2)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grad_x = x.grad.squeeze(2) if nwc else x.grad
        results.append([out.detach(), grad_x] + [p.grad.clone() for p in conv.parameters()])
    for plain, nwc in zip(*results):
        assert plain.shape == nwc.shape
        torch.testing.assert_close(nwc, plain, rtol=1e-4, atol=1e-5)


def _decoder(activation: str = "leaky_relu") -> Generator:
    torch.manual_seed(2)
    config = GeneratorConfig(in_channels=24, upsample_rates=[4, 4, 2], upsample_kernel_sizes=[8, 8, 4],
                             upsample_initial_channel=64, sampling_rate=16000, gin_channels=8, activation=activation)
    return Generator(config).eval()


@pytest.mark.parametrize(("valid", "n", "size"), [(100, 4, 25), (90, 4, 25), (76, 4, 25), (40, 1, 40)])
@pytest.mark.parametrize("target", ["new", "out", "accumulate"])
def test_tiled_leaky_relu_conv_matches_the_zero_padded_conv(valid, n, size, target):
    """Tiles with halos give the whole sequence's conv, also when the padding reaches into the previous
    tile's halo (valid 76: the last tile holds one valid sample) and into a buffer or added to one."""
    torch.manual_seed(4)
    conv = nn.Conv1d(8, 8, 5, dilation=3, padding=6)
    seq = torch.randn(1, 8, valid)
    x = to_nwc(F.pad(seq, (0, n * size - valid), value=7.0))  # garbage in the padding must not leak in
    out = torch.randn_like(x) if target != "new" else None
    start = None if out is None else from_nwc(out)[..., :valid].clone()
    with torch.no_grad():
        expected = conv(F.leaky_relu(seq, 0.1))
        y = tiled_leaky_relu_conv(conv, x, 0.1, TimeTiles(n, size, valid), out=out, accumulate=target == "accumulate")
    assert y.shape == (1, 8, 1, n * size) and y.is_contiguous(memory_format=torch.channels_last)
    if out is not None:
        assert y.data_ptr() == out.data_ptr()
        if target == "accumulate":
            expected = expected + start
    torch.testing.assert_close(from_nwc(y)[..., :valid], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rate", "kernel"), [(2, 4), (8, 16), (4, 8)])
@pytest.mark.parametrize(("valid", "n", "size"), [(40, 4, 10), (33, 4, 10), (37, 1, 40)])
def test_tiled_upsample_matches_the_transposed_conv(rate, kernel, valid, n, size):
    """The decoder's upsampling ConvTranspose1d as a polyphase conv in tiles: same values, written into the
    given buffer, garbage in the padding ignored."""
    torch.manual_seed(6)
    conv = nn.ConvTranspose1d(16, 8, kernel, rate, padding=(kernel - rate + 1) // 2)
    seq = torch.randn(1, 16, valid)
    x = to_nwc(F.pad(seq, (0, n * size - valid), value=5.0))
    out = to_nwc(torch.full((1, 8, n * size * rate), 9.0))
    with torch.no_grad():
        expected = conv(F.leaky_relu(seq, 0.1))
        y = tiled_leaky_relu_upsample(conv, x, 0.1, TimeTiles(n, size, valid), out)
    assert y is out and expected.shape[-1] == valid * rate
    torch.testing.assert_close(from_nwc(y)[..., :valid * rate], expected, rtol=1e-5, atol=1e-5)


def test_polyphase_kernel_refuses_other_shapes_and_follows_weight_updates():
    assert polyphase_kernel(nn.ConvTranspose1d(4, 4, 3, 2, padding=1)) is None  # output 2T - 1, not 2T
    assert polyphase_kernel(nn.ConvTranspose1d(4, 4, 12, 2, padding=5)) is None  # taps 2 samples away
    conv = nn.ConvTranspose1d(4, 2, 4, 2, padding=1)
    first, _ = polyphase_kernel(conv)
    assert polyphase_kernel(conv)[0] is first  # cached while the weight is unchanged
    with torch.no_grad():
        conv.weight.mul_(2)
    second, bias = polyphase_kernel(conv)
    torch.testing.assert_close(second, 2 * first)
    with torch.no_grad():
        conv.bias.add_(1)
    torch.testing.assert_close(polyphase_kernel(conv)[1], bias + 1)


def test_time_tiles_reject_padding_beyond_the_last_tile():
    with pytest.raises(ValueError, match="last tile"):
        TimeTiles(4, 25, 75)


@pytest.mark.parametrize(("activation", "batch", "tile_frames"),
                         [("leaky_relu", 2, 32), ("leaky_relu", 1, 32), ("leaky_relu", 1, 8), ("snake", 1, 8)])
def test_decoder_output_matches_the_plain_layout(activation, batch, tile_frames, monkeypatch):
    """Batch 2 runs channels-last over whole sequences; batch 1 in time tiles: with 8-frame tiles, 50 frames
    become 7 tiles of 8 frames (6 frames of padding) at every stage."""
    monkeypatch.setattr(nsf_hifigan, "TILE_FRAMES", tile_frames)
    monkeypatch.setattr(nsf_hifigan, "MIN_TILE_SAMPLES", 32)
    dec = _decoder(activation)
    frames = 50
    x, cond = torch.randn(batch, 24, frames), torch.randn(batch, 8, 1)
    torch.manual_seed(3)
    source = dec.excitation(220 + 50 * torch.rand(batch, frames))
    calls, upsampled = [], []
    monkeypatch.setattr(nsf_hifigan, "to_nwc", lambda t: calls.append(t.shape) or to_nwc(t))
    monkeypatch.setattr(nsf_hifigan, "tiled_leaky_relu_upsample",
                        lambda *a: upsampled.append(tiled_leaky_relu_upsample(*a)) or upsampled[-1])
    with torch.no_grad():
        out = dec.synthesize(x, source, cond)
        padded = {(2, 32): 50, (1, 32): 50, (1, 8): 56}[(batch, tile_frames)]  # 2 tiles of 25 / 7 of 8
        assert calls == ([(batch, 24, padded)] if activation == "leaky_relu" else [])  # snake keeps [B, C, T]
        tiled = activation == "leaky_relu" and batch == 1
        assert len(upsampled) == (3 if tiled else 0) and all(u is not None for u in upsampled)  # polyphase ups
        monkeypatch.setattr(nsf_hifigan, "wants_nwc", lambda x: False)
        plain = dec.synthesize(x, source, cond)
    assert out.shape == plain.shape == (batch, 1, frames * 32)
    peak = float(plain.abs().max())
    assert peak > 1e-3
    assert float((out - plain).abs().max()) <= 1e-5 * peak


def test_export_and_gpus_keep_the_plain_layout(monkeypatch):
    x = torch.randn(1, 4, 10)
    assert wants_nwc(x)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert not wants_nwc(x)
    assert not wants_nwc(torch.empty(1, 4, 10, device="meta"))


def test_leaky_relu_conv_without_gradients_keeps_channels_last():
    conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 40)
    with torch.no_grad():
        out = leaky_relu_conv(conv, to_nwc(x), 0.1)
        expected = conv(F.leaky_relu(x, 0.1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(from_nwc(out), expected, rtol=1e-5, atol=1e-6)
