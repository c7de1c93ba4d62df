"""Channels-last ("NWC") layout for chains of 1-D convolutions on the CPU.

torch runs a CPU Conv1d through oneDNN, which computes in a blocked channel layout: every call reorders
its input from the plain [B, C, T] layout into that layout and its output back (on the decoder's 30 MB
stage tensors, about a fifth of the decoder's time). A 1-D convolution is a 2-D one over [B, C, 1, T];
in torch's channels-last 2-D layout oneDNN's convolutions read and write the tensors as they are, and
elementwise ops (activations, residual adds) keep that layout. So a chain of convolutions that carries
its activations as channels-last [B, C, 1, T] tensors skips all the reorders: the HiFiGAN decoder's
convolutions run 1.3-2.9x faster this way on an AVX-512 CPU, forward and backward.

The values agree with the plain layout up to float summation order (about 1e-6 relative). GPUs and
export keep the plain layout: cuDNN has its own preferences, and ONNX graphs stay 1-D.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm


def exporting() -> bool:
    """Whether a trace, script or ONNX export is recording the current call."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def wants_nwc(x: torch.Tensor) -> bool:
    """Whether a convolution chain on `x` should run in the channels-last 2-D layout (CPU builds with
    oneDNN; without it torch's fallback convolutions gain nothing from the layout)."""
    return x.device.type == "cpu" and torch.backends.mkldnn.is_available() and not exporting()


def to_nwc(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> channels-last [B, C, 1, T] (one copy)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def from_nwc(x: torch.Tensor) -> torch.Tensor:
    """Channels-last [B, C, 1, T] -> plain contiguous [B, C, T]."""
    return x.squeeze(2).contiguous()


def conv_args(conv: nn.Conv1d | nn.ConvTranspose1d, nwc: bool) -> tuple:
    """(stride, padding, dilation, groups, transposed, output_padding) of `conv`, as 2-D arguments when
    `nwc` (a unit first spatial dimension)."""
    transposed = isinstance(conv, nn.ConvTranspose1d)
    output_padding = list(conv.output_padding) if transposed else [0]
    stride, padding, dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
    if nwc:  # the unit height: stride and dilation 1, no padding
        stride, padding, dilation, output_padding = [1] + stride, [0] + padding, [1] + dilation, [0] + output_padding
    return stride, padding, dilation, conv.groups, transposed, output_padding


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conf: tuple) -> torch.Tensor:
    """The convolution `conf` describes (see `conv_args`), 1-D on [B, C, T] or 2-D on [B, C, 1, T] inputs;
    a 3-D `weight` is viewed as 2-D for the latter."""
    stride, padding, dilation, groups, transposed, output_padding = conf
    if x.dim() == 4 and weight.dim() == 3:
        weight = weight.unsqueeze(2)
    if transposed:
        op = F.conv_transpose2d if x.dim() == 4 else F.conv_transpose1d
        return op(x, weight, bias, stride, padding, output_padding, groups, dilation)
    op = F.conv2d if x.dim() == 4 else F.conv1d
    return op(x, weight, bias, stride, padding, dilation, groups)


def store_channels_last(root: nn.Module) -> int:
    """Give the plain (weight-norm-free) Conv1d / ConvTranspose1d weights under `root` channels-last strides,
    in place: the same values, but `weight.unsqueeze(2)` is then already the 2-D channels-last kernel
    oneDNN wants, instead of a copy made at every call (which also fragments the heap between the large
    activations). Returns the number of weights changed."""
    changed = 0
    for module in root.modules():
        if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) or module._forward_pre_hooks:
            continue
        weight = module.weight
        if weight.size(1) == 1 or not isinstance(weight, nn.Parameter):
            continue  # one input channel: both layouts are the same memory
        with torch.no_grad():
            weight.data = weight.data.transpose(1, 2).contiguous().transpose(1, 2)
        changed += 1
    return changed


def conv_weight(conv: nn.Module) -> torch.Tensor | None:
    """The weight a call of `conv` would use (legacy weight norm recomputes it in a forward pre-hook), or
    None when the module has other hooks, whose effect only a real call reproduces."""
    hooks = list(conv._forward_pre_hooks.values())
    if conv._forward_hooks or not all(isinstance(hook, WeightNorm) for hook in hooks):
        return None
    for hook in hooks:
        hook(conv, ())
    return conv.weight


def apply_conv(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a plain [B, C, T] input, or the same convolution on a channels-last [B, C, 1, T] input,
    keeping that layout."""
    if x.dim() == 3:
        return conv(x)
    weight = conv_weight(conv)
    if weight is None or getattr(conv, "padding_mode", "zeros") != "zeros":
        return to_nwc(conv(from_nwc(x)))  # hooks or padding modes only a real call reproduces
    out = convolve(x, weight, conv.bias, conv_args(conv, nwc=True))
    if out.size(1) > 1 and not out.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # oneDNN picked plain for a 1-channel input
    return out


# ----------------------------------------------------------------------------------- time tiles


def add_conv_(out: torch.Tensor, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """out += conv(x), in place, for a channels-last [1, C', 1, T'] `out` and a channels-last [1, C, 1, T]
    `x` (no gradients). With oneDNN's in-place sum post-op no [C', T'] temporary is made: the decoder's
    source convolutions would otherwise allocate one per stage (27 MB a stage for 10 s of audio), and a
    freed block that size is not always reused, so the heap grew by one such block per piece."""
    weight = conv_weight(conv)
    fusable = (weight is not None and getattr(conv, "padding_mode", "zeros") == "zeros" and _fused_add_available()
               and not torch.is_autocast_enabled(x.device.type) and x.device.type == "cpu"
               and out.is_contiguous(memory_format=torch.channels_last) and out.dtype == weight.dtype == x.dtype)
    if not fusable:
        return out.add_(apply_conv(conv, x))
    stride, padding, dilation, groups, _, _ = conv_args(conv, nwc=True)
    torch.ops.mkldnn._convolution_pointwise_(out, x, weight.unsqueeze(2) if weight.dim() == 3 else weight,
                                             conv.bias, padding, stride, dilation, groups, "add", 1.0, None, [],
                                             None)
    return out


@dataclass(frozen=True)
class TimeTiles:
    """A channels-last [1, C, 1, n * size] activation seen as n tiles of `size` samples, each convolved as
    one batch item with its neighbours' edge samples copied in as halos. Samples from `valid` on pad the
    sequence to n * size; they are zeroed wherever a convolution reads them, so the valid samples get
    exactly the zero-padded convolution of the whole sequence.

    Why: oneDNN's channels-last convolution keeps 16-32 bytes per output position of the longest
    sequence it has seen (about 15 MB per 16-channel conv on a 10 s decoder window, for ~100 convs), and
    runs long dilated sequences up to 2x slower than the same work in batches of a few thousand samples.
    """

    n: int
    size: int
    valid: int
    # Memory for the haloed tiles of every convolution in turn (each is dead once its conv has run):
    # one allocation per sequence instead of one per conv, so the heap is not fragmented by buffers a
    # little larger than the activations. None: a fresh buffer per call.
    workspace: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.n < 1 or self.size < 1 or not (self.n - 1) * self.size < self.valid <= self.n * self.size:
            raise ValueError(f"bad time tiles {self}: the padding must lie within the last tile")


def zero_padding_(x: torch.Tensor, valid: int) -> torch.Tensor:
    """Zero x[..., valid:] in place (the padding of a tiled sequence) and return x."""
    if x.size(-1) > valid:
        x[..., valid:].zero_()
    return x


def _as_tiles(x: torch.Tensor, n: int) -> torch.Tensor:
    """Channels-last [1, C, 1, n*size] -> the same memory as channels-last [n, C, 1, size] (a view)."""
    _, c, _, length = x.shape
    size = length // n
    return x.as_strided((n, c, 1, size), (size * c, 1, size * c, c))


def _from_tiles(y: torch.Tensor) -> torch.Tensor:
    """Channels-last [n, C, 1, size] -> the same memory as channels-last [1, C, 1, n*size] (a view)."""
    n, c, _, size = y.shape
    if not y.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y.as_strided((1, c, 1, n * size), (n * size * c, 1, n * size * c, c))


def _fused_add_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")


def _haloed_tiles(x: torch.Tensor, slope: float, tiles: TimeTiles, halo: int) -> torch.Tensor:
    """leaky_relu(x) as channels-last [n, C, 1, size + 2*halo] tiles, each with its neighbours' edge samples
    (zeros at the sequence's ends), in the tiles' workspace. Zeroes x's padding in place first."""
    zero_padding_(x, tiles.valid)
    n, size, c = tiles.n, tiles.size, x.size(1)
    width = size + 2 * halo
    raw = tiles.workspace
    if raw is None or raw.numel() < n * c * width or raw.dtype != x.dtype:
        raw = torch.empty(n * c * width, dtype=x.dtype, device=x.device)
    buf = raw.as_strided((n, c, 1, width), (width * c, 1, width * c, c))  # channels-last, contiguous
    src = _as_tiles(x, n)
    torch._C._nn.leaky_relu(src, slope, out=buf[..., halo:halo + size])
    if halo:
        buf[:1, ..., :halo].zero_()  # the sequence's own zero padding
        buf[-1:, ..., halo + size:].zero_()
        if n > 1:
            torch._C._nn.leaky_relu(src[:-1, ..., size - halo:], slope, out=buf[1:, ..., :halo])
            torch._C._nn.leaky_relu(src[1:, ..., :halo], slope, out=buf[:-1, ..., halo + size:])
    return buf


def _convolve_tiles(buf: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, groups: int,
                    out: torch.Tensor | None, accumulate: bool) -> torch.Tensor:
    """The unpadded convolution of haloed tiles [n, C, 1, size + 2*halo] -> channels-last [n, C', 1, size],
    written into / added to `out` (a channels-last tensor of that shape) when given."""
    kernel = weight.unsqueeze(2)
    if out is not None and _fused_add_available() and not torch.is_autocast_enabled(buf.device.type):
        if not accumulate:
            out.zero_()
        torch.ops.mkldnn._convolution_pointwise_(out, buf, kernel, bias, [0, 0], [1, 1], [1, dilation], groups,
                                                 "add", 1.0, None, [], None)
        return out
    return _store(F.conv2d(buf, kernel, bias, 1, 0, (1, dilation), groups), out, accumulate)


def tiled_leaky_relu_conv(conv: nn.Conv1d, x: torch.Tensor, slope: float, tiles: TimeTiles,
                          out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """conv(leaky_relu(x)) for a stride-1, length-preserving, zero-padded Conv1d on a channels-last
    [1, C, 1, n*size] sequence, computed tile by tile (no gradients). The activation is written straight
    into the haloed tiles, so the tiling costs no extra pass over the data. Zeroes x's padding in place.
    Other convolutions fall back to `apply_conv` on the whole sequence.

    With `out` (channels-last, the output's shape) the result is written there, or added to it with
    `accumulate` (oneDNN adds it as the convolution's output is stored), and `out` is returned: a
    decoder that cycles a few such buffers allocates nothing per convolution. That matters because torch
    allocates CPU tensors with posix_memalign, and glibc cannot reuse a freed aligned block for the next
    request of the same size (it asks for the size plus the alignment), so equal-sized activations
    freed and allocated in turn grow the heap by one activation each time."""
    weight = conv_weight(conv)
    d, k = conv.dilation[0], conv.kernel_size[0]
    halo = conv.padding[0] if isinstance(conv.padding, tuple) else -1
    if (weight is None or conv.stride[0] != 1 or conv.padding_mode != "zeros" or 2 * halo != d * (k - 1)
            or halo > tiles.size or x.size(0) != 1 or x.size(-1) != tiles.n * tiles.size):
        zero_padding_(x, tiles.valid)
        return _store(apply_conv(conv, F.leaky_relu(x, slope)), out, accumulate)
    buf = _haloed_tiles(x, slope, tiles, halo)
    target = None if out is None else _as_tiles(out, tiles.n)
    y = _convolve_tiles(buf, weight, conv.bias, d, conv.groups, target, accumulate)
    return out if out is not None else _from_tiles(y)


def polyphase_kernel(conv: nn.ConvTranspose1d) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A ConvTranspose1d of stride u whose output is u times its input (kernel - 2 * padding == u) and
    whose taps reach one input sample either side, as a regular kernel-3 Conv1d with u * C_out output
    channels ordered (phase, channel): output sample m*u + r, channel c is that conv's channel
    r*C_out + c at position m, so in channels-last memory its output IS the upsampled sequence. None when
    the convolution has another shape. The kernel has one zero tap per phase (1.5x the transposed conv's
    multiplications, +1% of the decoder's time); in exchange it runs in fixed-width tiles. oneDNN sets up
    a transposed convolution on a whole sequence anew for every length (35-41 ms per layer, up to 0.15 s a
    window, paid by every piece of a song whose length is new); for tiles only the batch size changes,
    which costs next to nothing."""
    u, k, p = conv.stride[0], conv.kernel_size[0], conv.padding[0]
    weight = conv_weight(conv)  # [C_in, C_out, k]
    if (weight is None or conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0
            or k - 2 * p != u or conv.padding_mode != "zeros"):
        return None
    if -((u - 1 + p) // u) < -1 or (k - 1 - p) // u > 1:
        return None  # some tap reaches further than one input sample
    taps = [(t, r) for r in range(u) for t in (-1, 0, 1) if 0 <= t * u + r + p < k]
    # A plain weight changes in place (version bump) or by replacement (new address); a weight-norm weight
    # is recomputed at every call and may reuse an address, so only plain weights are cached.
    bias = conv.bias
    key = None if conv._forward_pre_hooks else (weight.data_ptr(), weight._version, weight.dtype,
                                                 None if bias is None else (bias.data_ptr(), bias._version))
    cached = getattr(conv, "_polyphase_cache", None)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    c_in, c_out = weight.shape[:2]
    with torch.no_grad():
        kernel = weight.new_zeros(u, c_out, c_in, 3)
        for t, r in taps:
            kernel[r, :, :, 1 - t] = weight[:, :, t * u + r + p].t()
        kernel = kernel.reshape(u * c_out, c_in, 3).transpose(1, 2).contiguous().transpose(1, 2)
        bias = None if bias is None else bias.detach().repeat(u)
    if key is not None:
        conv._polyphase_cache = (key, kernel, bias)
    return kernel, bias


def tiled_leaky_relu_upsample(conv: nn.ConvTranspose1d, x: torch.Tensor, slope: float, tiles: TimeTiles,
                              out: torch.Tensor) -> torch.Tensor | None:
    """conv(leaky_relu(x)) for an upsampling ConvTranspose1d (see `polyphase_kernel`) on a tiled channels-last
    sequence, written into `out` (channels-last [1, C_out, 1, n*size*u]); None when this conv has another
    shape (the caller then runs it whole)."""
    found = polyphase_kernel(conv)
    if found is None or x.size(0) != 1 or x.size(-1) != tiles.n * tiles.size:
        return None
    kernel, bias = found
    n, size = tiles.n, tiles.size
    buf = _haloed_tiles(x, slope, tiles, 1)
    phases = kernel.size(0)
    target = out.as_strided((n, phases, 1, size), (size * phases, 1, size * phases, phases))
    _convolve_tiles(buf, kernel, bias, 1, 1, target, accumulate=False)
    return out


def _store(y: torch.Tensor, out: torch.Tensor | None, accumulate: bool) -> torch.Tensor:
    if out is None:
        return y
    return out.add_(y) if accumulate else out.copy_(y)
