"""The diffusion denoiser: a non-causal WaveNet that predicts the noise in a normalised mel.

Parameter names and shapes follow the 4.1 `model_*.pt` files (`decoder.denoise_fn.*`):
input_projection (1x1, mels -> C), an MLP on a sinusoidal step embedding (C -> 4C -> C, Mish),
`n_layers` residual blocks (dilation 1, kernel 3), skip_projection and output_projection (1x1).

Each residual block reaches one frame to each side, so one call sees `n_layers` frames of context
on each side; `forward_windowed` uses that to run long mels in windows with exact results.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def step_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) diffusion steps [B]: sines then cosines."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=steps.device) * -scale)
    angles = steps.float()[:, None] * freqs[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ResidualBlock(nn.Module):
    def __init__(self, cond_channels: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, kernel_size=3, padding=1, dilation=1)
        self.diffusion_projection = nn.Linear(channels, channels)
        self.conditioner_projection = nn.Conv1d(cond_channels, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x + self.diffusion_projection(step).unsqueeze(-1)
        y = self.dilated_conv(y) + self.conditioner_projection(cond)
        # the first half of the channels gates, the second half is the filter (the 4.1 order)
        gate, filt = torch.split(y, self.channels, dim=1)
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt))
        residual, skip = torch.split(y, self.channels, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class WaveNet(nn.Module):
    """noise [B, 1, M, T] = WaveNet(x [B, 1, M, T], step [B], cond [B, H, T])."""

    def __init__(self, in_dims: int = 128, n_layers: int = 20, n_chans: int = 512, n_hidden: int = 256) -> None:
        super().__init__()
        self.input_projection = nn.Conv1d(in_dims, n_chans, 1)
        self.n_chans = n_chans
        self.mlp = nn.Sequential(nn.Linear(n_chans, n_chans * 4), nn.Mish(), nn.Linear(n_chans * 4, n_chans))
        self.residual_layers = nn.ModuleList([ResidualBlock(n_hidden, n_chans) for _ in range(n_layers)])
        self.skip_projection = nn.Conv1d(n_chans, n_chans, 1)
        self.output_projection = nn.Conv1d(n_chans, in_dims, 1)
        for conv in (self.input_projection, self.skip_projection):
            nn.init.kaiming_normal_(conv.weight)
        # a zero last layer makes a fresh model predict zero noise, which keeps early training stable
        nn.init.zeros_(self.output_projection.weight)

    @property
    def context_frames(self) -> int:
        """Frames each side that one output frame depends on (one per kernel-3 residual block)."""
        return len(self.residual_layers)

    def forward(self, spec: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.input_projection(spec.squeeze(1)))
        step = step.reshape(-1)
        if step.numel() == 1 and x.size(0) > 1:
            step = step.expand(x.size(0))
        emb = self.mlp(step_embedding(step, self.n_chans))
        skip_sum = None
        for layer in self.residual_layers:
            x, skip = layer(x, cond, emb)
            skip_sum = skip if skip_sum is None else skip_sum + skip
        x = skip_sum / math.sqrt(len(self.residual_layers))
        x = F.relu(self.skip_projection(x))
        return self.output_projection(x)[:, None]

    def forward_windowed(self, spec: torch.Tensor, step: torch.Tensor, cond: torch.Tensor,
                         window: int = 0) -> torch.Tensor:
        """Same result as `forward`, computed over frame windows of `window` (0 = whole) plus context.

        Activations then scale with the window, not with the length of the mel.
        """
        n = spec.size(-1)
        if window <= 0 or n <= window:
            return self.forward(spec, step, cond)
        margin = self.context_frames
        out = spec.new_empty(spec.shape)
        for a in range(0, n, window):
            b = min(a + window, n)
            lo, hi = max(a - margin, 0), min(b + margin, n)
            part = self.forward(spec[..., lo:hi], step, cond[..., lo:hi])
            out[..., a:b] = part[..., a - lo: b - lo]
        return out
