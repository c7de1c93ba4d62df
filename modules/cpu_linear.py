"""Inference linears through oneDNN on the CPU.

torch runs a float32 `nn.Linear` on the CPU through its BLAS (MKL in the x86 wheels). On AMD CPUs that
BLAS takes a generic AVX2 path: measured with 2 threads on an AVX-512 Zen CPU, 180-210 GFLOP/s for the
768 x 3072 layers of a HuBERT-base encoder, against 390-470 GFLOP/s through oneDNN's matmul (the library
behind torch's CPU convolutions) and 215-245 against 185-210 with oneDNN held to AVX2. The speech encoders
spend most of their time in such layers (a 10 s clip through ContentVec: 73 linear calls, 0.43 of 0.73 s).

`use_onednn_linears(root)` turns every plain `nn.Linear` under `root` into a `OneDNNLinear`: the same
module with the same parameters and state-dict keys, whose forward pass takes oneDNN's matmul when that
applies (CPU, float32, no autograd recording, no autocast, no export) and `nn.Linear`'s otherwise. The
results differ from BLAS's only in summation order (a few float32 ulps per layer).
"""
from __future__ import annotations

import platform

import torch
from torch import nn

from modules.conv_layout import exporting


def onednn_linear_available() -> bool:
    """Whether this is an x86-64 CPU with a torch build that has oneDNN and its pointwise linear operator.
    Elsewhere (ARM: Apple's Accelerate or OpenBLAS behind torch's linear) the BLAS path stays: unmeasured."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose CPU float32 inference runs through oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.dim() >= 2 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and not exporting()):
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return super().forward(x)


def use_onednn_linears(root: nn.Module) -> int:
    """Make every plain `nn.Linear` under `root` a `OneDNNLinear` in place (parameters untouched); returns
    how many were changed. Does nothing where oneDNN's linear is unavailable."""
    if not onednn_linear_available():
        return 0
    count = 0
    for module in root.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
            count += 1
    return count
