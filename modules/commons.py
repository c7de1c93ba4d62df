"""Small tensor helpers shared by the synthesizer, its sub-networks and the vocoder.

Weight normalisation goes through `weight_norm` here: it is torch's *legacy*
`torch.nn.utils.weight_norm`, because so-vits 4.1 files store `weight_g` / `weight_v` and the
newer parametrization API would rename them. The deprecation warning is silenced in one place.
"""
from __future__ import annotations

import logging
import warnings
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

LRELU_SLOPE = 0.1


def weight_norm(module: M, name: str = "weight", dim: int = 0) -> M:
    """Legacy weight norm (`weight_g`, `weight_v` in the state dict), without the FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module, name=name, dim=dim)


def has_weight_norm(module: nn.Module) -> bool:
    """Whether `module` itself carries a legacy weight-norm hook."""
    from torch.nn.utils.weight_norm import WeightNorm

    return any(isinstance(hook, WeightNorm) for hook in module._forward_pre_hooks.values())


def release_weight_norm_cache(root: nn.Module) -> None:
    """Drop the weights that legacy weight norm computed at the last forward pass under `root`.

    The hook stores `v * g / |v|` as the module's plain `weight` attribute and keeps it until the next
    call, which computes it again first: between training steps (and between discriminator members)
    that copy is dead memory, as large as the weights themselves. Parameters and state dicts are
    unaffected; the next forward pass restores the attribute.
    """
    from torch.nn.utils.weight_norm import WeightNorm

    for module in root.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm) and isinstance(getattr(module, hook.name, None), torch.Tensor):
                setattr(module, hook.name, None)


def remove_all_weight_norm(root: nn.Module) -> int:
    """Fold every legacy weight norm under `root` into a plain `weight`; returns how many were folded.

    `root.modules()` yields shared sub-modules once, so a WN shared by several flow couplings is
    folded exactly once.
    """
    count = 0
    for module in root.modules():
        if has_weight_norm(module):
            torch.nn.utils.remove_weight_norm(module)
            count += 1
    return count


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding for an odd kernel with the given dilation."""
    return (kernel_size * dilation - dilation) // 2


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Bool mask [B, max_length]: True where the position is inside the item's length."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def fused_add_tanh_sigmoid_multiply(a: torch.Tensor, b: torch.Tensor, n_channels: int) -> torch.Tensor:
    """WaveNet gate: tanh of the first `n_channels` of a+b times sigmoid of the rest."""
    total = a + b
    return torch.tanh(total[:, :n_channels]) * torch.sigmoid(total[:, n_channels:])


def slice_segments(x: torch.Tensor, ids_start: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Cut `segment_size` steps from the last axis of x [B, C, T] (or [B, T]) at per-item starts."""
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(1)
    offsets = torch.arange(segment_size, device=x.device)
    index = (ids_start.to(x.device).long().view(-1, 1) + offsets.view(1, -1)).clamp(max=x.size(-1) - 1)
    out = torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.size(1), -1))
    return out.squeeze(1) if squeeze else out


def rand_slice_segments_with_pitch(
    x: torch.Tensor, pitch: torch.Tensor, x_lengths: torch.Tensor | None, segment_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random training crop of latent frames x [B, C, T] and matching f0 frames [B, T].

    Start drawn uniformly in [0, length - segment_size] with one `torch.rand([B])` draw, as the original.
    Items shorter than the segment start at 0 (the original would index out of range).
    """
    b, _, t = x.size()
    if x_lengths is None:
        x_lengths = torch.full((b,), t, device=x.device)
    ids_str_max = (x_lengths.to(x.device) - segment_size + 1).clamp(min=1)
    ids_str = (torch.rand([b]).to(device=x.device) * ids_str_max).to(dtype=torch.long)
    return slice_segments(x, ids_str, segment_size), slice_segments(pitch, ids_str, segment_size), ids_str


def normalize_f0(lf0: torch.Tensor, x_mask: torch.Tensor, uv: torch.Tensor, random_scale: bool = True) -> torch.Tensor:
    """Mean-normalised log f0 for the f0 decoder (mean over voiced frames; 9999 if none is voiced).

    lf0 [B, 1, T], x_mask [B, 1, T], uv [B, T]. Training scales each item by U(0.8, 1.2).
    """
    uv = uv.to(lf0.dtype)
    uv_sum = torch.sum(uv, dim=1, keepdim=True)
    uv_sum = torch.where(uv_sum == 0, torch.full_like(uv_sum, 9999.0), uv_sum)
    means = torch.sum(lf0[:, 0, :] * uv, dim=1, keepdim=True) / uv_sum
    if random_scale:
        factor = torch.empty(lf0.shape[0], 1).uniform_(0.8, 1.2).to(lf0.device, lf0.dtype)
    else:
        factor = torch.ones(lf0.shape[0], 1, dtype=lf0.dtype, device=lf0.device)
    return (lf0 - means.unsqueeze(-1)) * factor.unsqueeze(-1) * x_mask


def leaky_relu(x: torch.Tensor, slope: float = LRELU_SLOPE) -> torch.Tensor:
    return F.leaky_relu(x, slope)
