"""Training ops that keep less for the backward pass: same forward values, same gradients.

- `leaky_relu_conv(conv, x, slope)`: leaky ReLU then a convolution. Autograd would keep both x (for the
  ReLU's backward) and the activated copy (for the convolution's); this keeps x only and recomputes the
  activation in the backward pass, a cheap elementwise op. HiFiGAN residual blocks are chains of such
  pairs, so this halves what the decoder keeps per convolution.
- `Dropout`: on the CPU torch's dropout keeps its mask as scaled floats (4 bytes an element) for the
  backward pass. This one draws the identical mask from the same random numbers and keeps it as bools.
- `dropout_matmul(probs, v, drop)`: attention's dropout then product with the values; keeps the
  probabilities (which the softmax keeps anyway) and the bool mask, not the dropped-out copy.
- `relu_dropout_conv(h, mask, conv, pad, drop)`: a transformer FFN's ReLU, dropout, mask, padding and
  second convolution; keeps the ReLU's output and the bool mask, not the padded convolution input.

Both fall back to the plain ops where nothing is kept anyway (no gradients, inference, export) and where
the plain op differs from what is reimplemented here (autocast for the convolution: the cast copy is
what torch saves; dropout on accelerators, whose fused kernel already keeps a bool mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from modules.conv_layout import apply_conv, conv_args, conv_weight, convolve, exporting


class _LeakyReLUConv(torch.autograd.Function):
    """conv(leaky_relu(x)) for Conv1d / ConvTranspose1d, saving x instead of the activation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slope: float,
                conf: tuple) -> torch.Tensor:
        out = convolve(F.leaky_relu(x, slope), weight, bias, conf)
        ctx.save_for_backward(x, weight)
        ctx.slope, ctx.conf = slope, conf
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, transposed, output_padding = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        a = F.leaky_relu(x, ctx.slope)
        nwc = x.dim() == 4 and weight.dim() == 3  # a 1-D kernel applied as 2-D (modules.conv_layout)
        grad_a, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, a, weight.unsqueeze(2) if nwc else weight, ctx.bias_sizes, stride, padding, dilation,
            transposed, output_padding, groups, [need_x, need_w, need_b and ctx.bias_sizes is not None],
        )
        del a
        if nwc and grad_w is not None:
            grad_w = grad_w.squeeze(2)
        grad_x = torch.ops.aten.leaky_relu_backward(grad_a, x, ctx.slope, False) if need_x else None
        return grad_x, grad_w, grad_b, None, None


def leaky_relu_conv(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor, slope: float) -> torch.Tensor:
    """`conv(F.leaky_relu(x, slope))` for a zero-padded Conv1d or ConvTranspose1d (weight norm or not),
    keeping only x for the backward pass when gradients are being recorded. x is [B, C, T], or
    channels-last [B, C, 1, T] (modules.conv_layout), whose layout the output keeps."""
    if (not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or exporting()
            or getattr(conv, "padding_mode", "zeros") != "zeros"):
        return apply_conv(conv, F.leaky_relu(x, slope))
    weight = conv_weight(conv)
    if weight is None or not (x.requires_grad or weight.requires_grad):
        return apply_conv(conv, F.leaky_relu(x, slope))
    return _LeakyReLUConv.apply(x, weight, conv.bias, slope, conv_args(conv, nwc=x.dim() == 4))


class _BoolMaskDropout(torch.autograd.Function):
    """torch's CPU dropout (a Bernoulli(1-p) mask divided by 1-p, times x) with the mask kept as bools."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty_like(x).bernoulli_(1 - p)
        ctx.save_for_backward(noise.bool())
        ctx.p = p
        noise.div_(1 - p)
        return x * noise

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (keep,) = ctx.saved_tensors
        noise = keep.to(grad_out.dtype).div_(1 - ctx.p)  # exactly the forward's values: 0 or 1/(1-p)
        return grad_out * noise, None


class Dropout(nn.Dropout):
    """`nn.Dropout` (same random draws, outputs and gradients) that keeps a bool mask on the CPU."""

    def lean(self, x: torch.Tensor) -> bool:
        """Whether this call takes the bool-mask path (else torch's own dropout runs)."""
        return (not self.inplace and self.training and 0.0 < self.p < 1.0 and x.device.type == "cpu"
                and torch.is_grad_enabled() and x.requires_grad and x.numel() > 0 and not exporting())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.lean(x):
            return super().forward(x)
        return _BoolMaskDropout.apply(x, self.p)


class _DropoutMatmul(torch.autograd.Function):
    """(dropout(probs) @ v, dropout(probs)) for [B, H, n, t] probs and [B, H, t, d] v, keeping probs (which
    the softmax before keeps anyway), the bool mask and v; the dropped-out probabilities are recomputed
    in the backward pass instead of being stored. Backward replicates autograd's batched-matmul backward."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, v: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.empty_like(probs).bernoulli_(1 - p)
        keep = noise.bool()
        noise.div_(1 - p)
        p_attn = probs * noise
        out = torch.matmul(p_attn, v)
        ctx.save_for_backward(probs, keep, v)
        ctx.p = p
        return out, p_attn

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor | None, grad_p_attn: torch.Tensor | None):
        probs, keep, v = ctx.saved_tensors
        b, h, n, t = probs.shape
        d = v.size(-1)
        noise = keep.to(probs.dtype).div_(1 - ctx.p)
        grad_probs = grad_v = None
        if grad_out is not None:
            grad3 = grad_out.reshape(b * h, n, d)
            if ctx.needs_input_grad[0]:
                grad_p = torch.bmm(grad3, v.reshape(b * h, t, d).transpose(1, 2)).view(b, h, n, t)
                grad_p_attn = grad_p if grad_p_attn is None else grad_p + grad_p_attn
            if ctx.needs_input_grad[1]:
                p_attn = (probs * noise).view(b * h, n, t)
                grad_v = torch.bmm(p_attn.transpose(1, 2), grad3).view(b, h, t, d)
        if grad_p_attn is not None and ctx.needs_input_grad[0]:
            grad_probs = grad_p_attn * noise
        return grad_probs, grad_v, None


def dropout_matmul(probs: torch.Tensor, v: torch.Tensor, drop: nn.Dropout) -> tuple[torch.Tensor, torch.Tensor]:
    """`p_attn = drop(probs); (p_attn @ v, p_attn)` for attention, keeping only probs, v and a bool mask for
    the backward pass where `drop` is this module's Dropout on its lean path."""
    if isinstance(drop, Dropout) and drop.lean(probs) and probs.dim() == 4 and v.dim() == 4:
        return _DropoutMatmul.apply(probs, v, drop.p)
    p_attn = drop(probs)
    return torch.matmul(p_attn, v), p_attn


class _ReluDropoutMaskConv(torch.autograd.Function):
    """conv(pad(dropout(relu(h)) * mask)) for a zero-padding-free Conv1d, keeping relu(h) (which the ReLU
    keeps anyway) and the bool mask; the convolution's input is rebuilt in the backward pass."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                p: float, pad: tuple[int, int], conf: tuple) -> torch.Tensor:
        stride, dilation, groups = conf
        r = torch.relu(h)
        noise = torch.empty_like(r).bernoulli_(1 - p)
        keep = noise.bool()
        noise.div_(1 - p)
        a = F.pad(r * noise * mask, pad)
        out = F.conv1d(a, weight, bias, stride, 0, dilation, groups)
        ctx.save_for_backward(r, keep, mask, weight)
        ctx.p, ctx.pad, ctx.conf = p, pad, conf
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        r, keep, mask, weight = ctx.saved_tensors
        stride, dilation, groups = ctx.conf
        noise = keep.to(r.dtype).div_(1 - ctx.p)
        need_h, _, need_w, need_b = ctx.needs_input_grad[:4]
        a = F.pad(r * noise * mask, ctx.pad)
        grad_a, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, a, weight, ctx.bias_sizes, stride, [0], dilation, False, [0], groups,
            [need_h, need_w, need_b and ctx.bias_sizes is not None],
        )
        del a
        grad_h = None
        if need_h:
            grad_dm = grad_a.narrow(-1, ctx.pad[0], r.size(-1))
            grad_h = torch.ops.aten.threshold_backward(grad_dm * mask * noise, r, 0)
        return grad_h, None, grad_w, grad_b, None, None, None


def relu_dropout_conv(h: torch.Tensor, mask: torch.Tensor, conv: nn.Conv1d, pad: tuple[int, int],
                      drop: nn.Dropout) -> torch.Tensor:
    """`conv(F.pad(drop(relu(h)) * mask, pad))` (a transformer FFN's second half) for an unpadded Conv1d,
    keeping relu(h) and a bool mask but not the convolution's input where `drop` takes its lean path."""
    weight = conv_weight(conv) if isinstance(drop, Dropout) and drop.lean(h) else None
    if (weight is None or mask.requires_grad or torch.is_autocast_enabled(h.device.type)
            or any(conv.padding) or getattr(conv, "padding_mode", "zeros") != "zeros"):
        return conv(F.pad(drop(torch.relu(h)) * mask, pad))
    conf = (list(conv.stride), list(conv.dilation), conv.groups)
    return _ReluDropoutMaskConv.apply(h, mask, weight, conv.bias, drop.p, tuple(pad), conf)
