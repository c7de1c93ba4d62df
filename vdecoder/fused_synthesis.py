"""The NSF-HiFiGAN filter path for CPU inference: channels-last 2-D convs with fused activations and adds.

Same arithmetic as `Generator.synthesize` (leaky-ReLU variant), arranged for oneDNN:
- every 1-D signal [B, C, T] is held as [B, C, 1, T] in channels-last memory (time-major, channels
  contiguous). oneDNN's 1-D convs on [B, C, T] reorder their input and output to a blocked layout on
  every call; in channels-last they read and write the tensors as they are, and the small-channel
  stages (16-64 channels) run markedly faster;
- the leaky ReLU after a resblock's dilated conv and the residual add after its second conv are
  post-ops of the convs (one pass over memory each instead of three), as is the final tanh; the
  excitation's noise conv adds the upsampled signal as a post-op.
Results differ from the eager path by float rounding only (about 1e-6 of peak).

Decoders with the snake activation, and machines whose torch has no oneDNN, use `Generator.synthesize`.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modules.commons import LRELU_SLOPE
from vdecoder.nsf_hifigan import Generator, ResBlock1

logger = logging.getLogger(__name__)


# Signal length the packed weight layouts are chosen for; oneDNN's choice depends on the channels and
# the instruction set, and a packed weight serves every length.
_PACK_LENGTH = 4096


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, C, 1, T] in channels-last memory."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class _Conv:
    """One Conv1d as a 2-D oneDNN conv (weight [C_out, C_in, 1, k]) with an optional fused post-op."""

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d, dtype: torch.dtype, pack: bool = True) -> None:
        weight = conv.weight.detach().to(dtype).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
        self.padding = [0, conv.padding[0]]
        self.stride = [1, conv.stride[0]]
        self.dilation = [1, conv.dilation[0]]
        self.groups = conv.groups
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        self.output_padding = [0, conv.output_padding[0]] if self.transposed else [0, 0]
        if pack:  # oneDNN's own weight layout, once, instead of a reorder on every call
            in_channels = weight.shape[0] if self.transposed else weight.shape[1] * self.groups
            size = [1, in_channels, 1, _PACK_LENGTH]
            if self.transposed:
                weight = torch.ops.mkldnn._reorder_convolution_transpose_weight(
                    weight, self.padding, self.output_padding, self.stride, self.dilation, self.groups, size)
            else:
                weight = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, self.padding, self.stride, self.dilation, self.groups, size)
        self.weight = weight

    def __call__(self, x: torch.Tensor, attr: str = "none", scalars: list[float] | None = None) -> torch.Tensor:
        if self.transposed:
            return torch.ops.mkldnn._convolution_transpose_pointwise(
                x, self.weight, self.bias, self.padding, self.output_padding, self.stride, self.dilation,
                self.groups, attr, scalars or [], "")
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups, attr, scalars or [], "")

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """conv(x) + other, the add fused into the conv (other has the output's shape)."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, None, [], None)


class FusedSynthesis:
    """`Generator.synthesize` for inference on the CPU, from the generator's current (folded) weights.

    Build it after weight norm is folded; it copies the weights (about the decoder's size again).
    """

    def __init__(self, gen: Generator, dtype: torch.dtype = torch.float32, pack: bool = True) -> None:
        if not supported(gen):
            raise ValueError("FusedSynthesis needs a leaky-ReLU generator and torch with oneDNN")
        self.dtype = dtype
        self.num_kernels = gen.num_kernels
        self.conv_pre = _Conv(gen.conv_pre, dtype, pack)
        self.cond = _Conv(gen.cond, dtype, pack) if hasattr(gen, "cond") else None
        self.ups = [_Conv(u, dtype, pack) for u in gen.ups]
        self.noise_convs = [_Conv(n, dtype, pack) for n in gen.noise_convs]
        self.resblocks: list[tuple[str, list[tuple[_Conv, ...]]]] = []
        for block in gen.resblocks:
            if isinstance(block, ResBlock1):
                self.resblocks.append(("1", [(_Conv(c1, dtype, pack), _Conv(c2, dtype, pack)) for c1, c2 in zip(block.convs1, block.convs2)]))
            else:
                self.resblocks.append(("2", [(_Conv(c, dtype, pack),) for c in block.convs]))
        self.conv_post = _Conv(gen.conv_post, dtype, pack)

    def _resblock(self, kind: str, convs: list[tuple[_Conv, ...]], x: torch.Tensor) -> torch.Tensor:
        for pair in convs:
            a = F.leaky_relu(x, LRELU_SLOPE)
            if kind == "1":
                c1, c2 = pair
                x = c2.plus(c1(a, "leaky_relu", [LRELU_SLOPE]), x)
            else:
                x = pair[0].plus(a, x)
        return x

    def __call__(self, x: torch.Tensor, har_source: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Features x [B, C, T] + source [B, 1, T*hop] (+ g [B, gin, 1|T]) -> audio [B, 1, T*hop]."""
        x = self.conv_pre(_as_2d(x.to(self.dtype)))
        if g is not None and self.cond is not None:
            x = x + self.cond(_as_2d(g.to(self.dtype)))
        har = _as_2d(har_source.to(self.dtype))
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = self.noise_convs[i].plus(har, x)
            acc = None
            for j in range(self.num_kernels):
                y = self._resblock(*self.resblocks[i * self.num_kernels + j], x)
                acc = y if acc is None else acc.add_(y)
            x = acc / self.num_kernels
        x = self.conv_post(F.leaky_relu(x), "tanh")  # slope 0.01 here, as in Generator.synthesize
        return x.squeeze(2).contiguous()


def supported(gen: nn.Module) -> bool:
    """Whether FusedSynthesis can run this generator here (leaky-ReLU activations, oneDNN in torch)."""
    return (isinstance(gen, Generator) and gen.config.activation == "leaky_relu"
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def cpu_synthesis(gen: Generator, dtype: torch.dtype = torch.float32) -> Callable[..., torch.Tensor]:
    """The fastest `synthesize(x, har_source, g)` for `gen` on the CPU in `dtype`: FusedSynthesis where it is
    supported and, on a short check window, agrees with the generator; else the generator's own (eager)."""
    if not supported(gen):
        return gen.synthesize
    try:
        fused = FusedSynthesis(gen, dtype)
        with torch.inference_mode():
            x = torch.randn(1, gen.config.in_channels, 6, generator=torch.Generator().manual_seed(0))
            source = torch.linspace(-0.5, 0.5, 6 * gen.upp).view(1, 1, -1)
            g = torch.ones(1, gen.config.gin_channels, 1) if gen.config.gin_channels else None
            got, want = fused(x, source, g).float(), gen.synthesize(x, source, g)
    except RuntimeError as e:  # a torch build whose oneDNN lacks one of the fused ops
        logger.warning("fused CPU decoder unavailable (%s); using the eager one", e)
        return gen.synthesize
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
    if not error < tolerance:
        logger.warning("fused CPU decoder disagrees with the eager one (%.2g of peak); using the eager one", error)
        return gen.synthesize
    return fused
