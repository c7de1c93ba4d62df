"""Convolutional sub-networks of the synthesizer: the gated WaveNet stack (WN) and the normalising
flows built from it (or from the causal FFT).

Module and parameter names follow so-vits 4.1 (`in_layers`, `res_skip_layers`, `cond_layer`,
`depth_conv` / `point_conv`, `flows.{0,2,4,6}`, `wn`) so that its checkpoints load strictly.
"""
from __future__ import annotations

import torch
from torch import nn

from modules.attentions import FFT
from modules.commons import fused_add_tanh_sigmoid_multiply, weight_norm


class DepthwiseSeparableConv1d(nn.Module):
    """Depthwise conv (groups = in channels) then 1x1 pointwise conv; a lighter stand-in for Conv1d.

    Weight norm is applied to both parts, giving `depth_conv.weight_g/v` and `point_conv.weight_g/v`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, padding: int = 0,
    ) -> None:
        super().__init__()
        self.depth_conv = weight_norm(
            nn.Conv1d(in_channels, in_channels, kernel_size, groups=in_channels, dilation=dilation, padding=padding)
        )
        self.point_conv = weight_norm(nn.Conv1d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class WN(nn.Module):
    """Non-causal gated WaveNet: dilated convs, speaker conditioning per layer, residual + skip sums."""

    def __init__(
        self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
        gin_channels: int = 0, p_dropout: float = 0.0, use_depthwise_conv: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels > 0:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate ** i
            padding = (kernel_size * dilation - dilation) // 2
            if use_depthwise_conv:
                layer: nn.Module = DepthwiseSeparableConv1d(
                    hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding
                )
            else:
                layer = weight_norm(
                    nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding)
                )
            self.in_layers.append(layer)
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, out, 1)))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if (g is not None and self.gin_channels > 0) else None
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)
            g_l = cond[:, 2 * h * i:2 * h * (i + 1)] if cond is not None else torch.zeros_like(x_in)
            acts = self.drop(fused_add_tanh_sigmoid_multiply(x_in, g_l, h))
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * x_mask


class Flip(nn.Module):
    """Reverse the channel order between couplings (parameter-free; odd flow indices)."""

    def forward(self, x: torch.Tensor, *args, reverse: bool = False, **kwargs) -> torch.Tensor:
        return torch.flip(x, [1])


class _MeanOnlyCoupling(nn.Module):
    """Affine coupling with zero log-scale: x1 += m(x0) forward, x1 -= m(x0) in reverse."""

    enc: nn.Module

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        if channels % 2 != 0:
            raise ValueError(f"coupling channels must be even, got {channels}")
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)

    def _make_post(self, hidden_channels: int) -> None:
        # Zero init makes every coupling start as the identity.
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        m = self.post(h) * x_mask
        if not reverse:
            x1 = m + x1 * x_mask
        else:
            x1 = (x1 - m) * x_mask
        return torch.cat([x0, x1], 1)


class ResidualCouplingLayer(_MeanOnlyCoupling):
    """Mean-only coupling whose hidden network is a WN (shared one if given)."""

    def __init__(
        self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
        gin_channels: int = 0, shared_enc: WN | None = None, use_depthwise_conv: bool = False,
    ) -> None:
        super().__init__(channels, hidden_channels)
        self.enc = shared_enc if shared_enc is not None else WN(
            hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels,
            use_depthwise_conv=use_depthwise_conv,
        )
        self._make_post(hidden_channels)


class TransformerCouplingLayer(_MeanOnlyCoupling):
    """Mean-only coupling whose hidden network is a speaker-conditioned causal FFT."""

    def __init__(
        self, channels: int, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
        kernel_size: int, p_dropout: float, gin_channels: int = 0, shared_enc: FFT | None = None,
    ) -> None:
        super().__init__(channels, hidden_channels)
        self.enc = shared_enc if shared_enc is not None else FFT(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, gin_channels=gin_channels
        )
        self._make_post(hidden_channels)


class _CouplingBlock(nn.Module):
    """Couplings interleaved with Flips; `reverse=True` runs the inverse (inference direction)."""

    flows: nn.ModuleList

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        layers = reversed(self.flows) if reverse else self.flows
        for layer in layers:
            x = layer(x, x_mask, g=g, reverse=reverse)
        return x


class ResidualCouplingBlock(_CouplingBlock):
    """Default flow: `n_flows` WN couplings (state-dict indices 0, 2, 4, 6 with 4 flows).

    Note the original's argument use: the config's `n_flow_layer` sets the WN depth `n_layers` here,
    while the number of couplings stays 4.
    """

    def __init__(
        self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
        n_flows: int = 4, gin_channels: int = 0, share_parameter: bool = False, use_depthwise_conv: bool = False,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        self.wn = WN(
            hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels,
            use_depthwise_conv=use_depthwise_conv,
        ) if share_parameter else None
        for _ in range(n_flows):
            self.flows.append(ResidualCouplingLayer(
                channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels,
                shared_enc=self.wn, use_depthwise_conv=use_depthwise_conv,
            ))
            self.flows.append(Flip())


class TransformerCouplingBlock(_CouplingBlock):
    """Transformer flow: `n_flows` FFT couplings (the config's `n_flow_layer`), optionally one shared FFT."""

    def __init__(
        self, channels: int, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
        kernel_size: int, p_dropout: float, n_flows: int = 4, gin_channels: int = 0, share_parameter: bool = False,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        self.wn = FFT(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, gin_channels=gin_channels
        ) if share_parameter else None
        for _ in range(n_flows):
            self.flows.append(TransformerCouplingLayer(
                channels, hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout,
                gin_channels=gin_channels, shared_enc=self.wn,
            ))
            self.flows.append(Flip())
