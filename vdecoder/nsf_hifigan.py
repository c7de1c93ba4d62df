"""NSF-HiFiGAN generator: a harmonic-plus-noise source driven by f0, injected at every upsampling
stage of a HiFiGAN decoder (multi-receptive-field residual blocks).

One class serves three uses:
- `dec` of the so-vits synthesizer (latent z in, speaker conditioning via `cond`);
- the same with the snake activation (`activation="snake"`: SnakeBeta with alias-free 2x
  up/down-sampling instead of leaky ReLU, the `nsf-snake-hifigan` vocoder);
- the standalone 128-bin mel vocoder of `pretrain/nsf_hifigan` (`gin_channels=0`, no `cond`).

The source is split from the filter (`excitation(f0)` / `synthesize(z, har_source, g)`) so a
chunked inference engine can build the excitation for a whole song (continuous phase) and
synthesise it piece by piece. Random draws follow the original's order so identical weights,
inputs and seed give the original's audio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from modules.commons import LRELU_SLOPE, get_padding, remove_all_weight_norm, weight_norm
from modules.conv_layout import (
    TimeTiles,
    add_conv_,
    apply_conv,
    tiled_leaky_relu_conv,
    tiled_leaky_relu_upsample,
    to_nwc,
    wants_nwc,
    zero_padding_,
)
from modules.lean_autograd import leaky_relu_conv

ACTIVATIONS = ("leaky_relu", "snake")
# Inference on the CPU cuts the decoder's activations into tiles of about this many frames (the last
# stage's tiles are then 16384 samples), for stages whose tiles reach MIN_TILE_SAMPLES; oneDNN runs
# such batches of tiles faster than one long sequence (modules.conv_layout.TimeTiles).
TILE_FRAMES = 32
MIN_TILE_SAMPLES = 1024


@dataclass
class GeneratorConfig:
    """Hyper-parameters of the generator (names as in so-vits / HiFiGAN configs)."""

    in_channels: int = 192
    upsample_rates: list[int] = field(default_factory=lambda: [8, 8, 2, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 4, 4, 4])
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    sampling_rate: int = 44100
    gin_channels: int = 0
    activation: str = "leaky_relu"
    # "so-vits": the synthesizer's source; "openvpi": the standalone vocoder's source, which adds the
    # random start phases to the whole first frame and draws no extra noise at the end.
    source_style: str = "so-vits"

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> "GeneratorConfig":
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in dict(values).items() if k in known}
        kwargs.update(overrides)
        return cls(**kwargs)


# ----------------------------------------------------------------------------------- alias-free snake


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass [1, 1, kernel_size], normalised to unit DC gain.

    The Kaiser beta follows the usual attenuation formula for a transition band of 4*half_width.
    """
    even = kernel_size % 2 == 0
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21.0) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    t = (torch.arange(-half, half) + 0.5) if even else (torch.arange(kernel_size) - half)
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    taps = taps / taps.sum()
    return taps.view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """x2 band-limited upsampling (zero-stuffing transposed conv with the Kaiser sinc filter)."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.size(1)
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(
            x, self.filter.to(x.dtype).expand(channels, -1, -1), stride=self.ratio, groups=channels
        )
        return x[..., self.crop_left:x.size(-1) - self.crop_right]


class LowPassFilter1d(nn.Module):
    """Kaiser sinc low-pass with replicate padding and a stride (decimation)."""

    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12) -> None:
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.size(1)
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.to(x.dtype).expand(channels, -1, -1), stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + 1/(b + 1e-9) * sin^2(a x) per channel, with a = exp(alpha), b = exp(beta) (log-scale params)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha).view(1, -1, 1)
        beta = torch.exp(self.beta).view(1, -1, 1)
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class SnakeAlias(nn.Module):
    """SnakeBeta evaluated at twice the rate (upsample, activate, downsample) to limit aliasing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d(2, 12)
        self.downsample = DownSample1d(2, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


# ----------------------------------------------------------------------------------- residual blocks


class ResBlock1(nn.Module):
    """Three (dilated conv, plain conv) pairs, each with an activation before every conv and a residual add."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3, 5),
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        self.convs1 = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation
        ])
        self.convs2 = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size)))
            for _ in dilation
        ])
        if activation == "snake":
            self.activations = nn.ModuleList([SnakeAlias(channels) for _ in range(2 * len(dilation))])

    def _act_conv(self, index: int, conv: nn.Module, x: torch.Tensor, tiles: TimeTiles | None) -> torch.Tensor:
        if hasattr(self, "activations"):
            return conv(self.activations[index](x))
        if tiles is not None:
            return tiled_leaky_relu_conv(conv, x, LRELU_SLOPE, tiles)
        return leaky_relu_conv(conv, x, LRELU_SLOPE)  # keeps x, not the activation, for the backward pass

    def forward(self, x: torch.Tensor, tiles: TimeTiles | None = None) -> torch.Tensor:
        """x [B, C, T], or channels-last [B, C, 1, T]; `tiles` (inference only) cuts the latter into time
        tiles (modules.conv_layout) and lets the residual adds run in place."""
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            xt = self._act_conv(2 * i, c1, x, tiles)
            xt = self._act_conv(2 * i + 1, c2, xt, tiles)
            x = xt.add_(x) if tiles is not None else xt + x
        return x

    def forward_into(self, x: torch.Tensor, tiles: TimeTiles, out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        """Inference on a tiled channels-last sequence: the block's output is written into `out`, each
        pair's middle activation into `scratch` (both shaped like x, neither x): no allocations."""
        if hasattr(self, "activations"):
            return out.copy_(self.forward(x, tiles))
        source = x
        for c1, c2 in zip(self.convs1, self.convs2):
            tiled_leaky_relu_conv(c1, source, LRELU_SLOPE, tiles, out=scratch)
            if source is not out:
                out.copy_(source)
            tiled_leaky_relu_conv(c2, scratch, LRELU_SLOPE, tiles, out=out, accumulate=True)
            source = out
        return out


class ResBlock2(nn.Module):
    """Two dilated convs, each preceded by an activation, with residual adds."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3),
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation[:2]
        ])
        if activation == "snake":
            self.activations = nn.ModuleList([SnakeAlias(channels) for _ in self.convs])

    def forward(self, x: torch.Tensor, tiles: TimeTiles | None = None) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            if hasattr(self, "activations"):
                x = conv(self.activations[i](x)) + x
            elif tiles is not None:
                x = tiled_leaky_relu_conv(conv, x, LRELU_SLOPE, tiles).add_(x)
            else:
                x = leaky_relu_conv(conv, x, LRELU_SLOPE) + x
        return x


def _stage_tile_count(n_tiles: int, frames: int, scale: int) -> int:
    """Tiles for a stage of `scale` samples per frame: n_tiles, or 1 where tiles would be too short."""
    return n_tiles if frames // n_tiles * scale >= MIN_TILE_SAMPLES else 1


def _nwc_view(buffer: torch.Tensor, channels: int, length: int) -> torch.Tensor:
    """A channels-last [1, channels, 1, length] tensor on the front of a 1-D `buffer`."""
    return buffer.as_strided((1, channels, 1, length), (channels * length, 1, channels * length, channels))


# ----------------------------------------------------------------------------------- source


SCAN_BLOCK = 256  # samples per block of the GPU phase scan: N / 256 + 256 dependent additions per column


def running_sum(values: torch.Tensor, blocked: bool | None = None) -> torch.Tensor:
    """cumsum over dim 1 of [B, N, H] (samples x harmonics), in the dtype given (float64 for phases).

    On CUDA, torch scans a non-innermost dim with one thread per column, each walking all N samples:
    with 9 harmonic columns, a 10 s piece (441000 samples) spent 151 of its 169 GPU milliseconds here
    on an H200, in both this code and the original. There this function scans blocks of SCAN_BLOCK
    samples in parallel and adds the running block totals: the same sums up to float64 rounding order
    (relative ~1e-16, far below the float32 the phases are used in). CPUs keep the sequential scan
    (fastest there).
    `blocked` forces one way or the other (None: blocks on CUDA for pieces over 4 blocks).
    """
    n = values.shape[1]
    if blocked is None:
        blocked = values.device.type == "cuda" and n > 4 * SCAN_BLOCK
    if not blocked:
        return torch.cumsum(values, dim=1)
    batch, _, width = values.shape
    padded = F.pad(values, (0, 0, 0, (-n) % SCAN_BLOCK))
    within = padded.view(batch, -1, SCAN_BLOCK, width).cumsum(dim=2)
    totals = within[:, :, -1]
    before = totals.cumsum(dim=1) - totals  # sum of all earlier blocks
    return (within + before.unsqueeze(2)).view(batch, -1, width)[:, :n]


class SourceModuleHnNSF(nn.Module):
    """Harmonic source: 9 sines at f0 x (1..9) merged by a learnt linear layer and tanh.

    Noise: std 0.003 where voiced, 0.1/3 where unvoiced (f0 <= 0), where the sines are muted.
    """

    def __init__(self, sampling_rate: int, harmonic_num: int = 8, sine_amp: float = 0.1,
                 noise_std: float = 0.003, voiced_threshold: float = 0.0, phase_init_samples: int = 1,
                 draw_unused_noise: bool = True) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.phase_init_samples = phase_init_samples
        self.draw_unused_noise = draw_unused_noise
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(self.dim, 1)

    def sine_waves(self, f0: torch.Tensor) -> torch.Tensor:
        """f0 [B, N, 1] per sample -> harmonic sines plus noise [B, N, dim].

        Draws: `rand [B, dim]` initial phases (fundamental at 0), added to the first
        `phase_init_samples` samples, then `randn_like` noise.
        The running phase is accumulated in float64 (what torch's CPU cumsum does internally for
        float32), with the original's wrap-around correction, so long pieces keep their phase.
        """
        harmonics = torch.arange(1, self.dim + 1, device=f0.device, dtype=f0.dtype).view(1, 1, -1)
        rad = (f0 * harmonics / self.sampling_rate) % 1
        rand_ini = torch.rand(f0.shape[0], self.dim, device=f0.device)
        rand_ini[:, 0] = 0
        rad[:, :self.phase_init_samples, :] = rad[:, :self.phase_init_samples, :] + rand_ini.to(rad.dtype).unsqueeze(1)
        wrapped = running_sum(rad.double()).to(rad.dtype) % 1
        shift = torch.zeros_like(rad)
        shift[:, 1:, :] = (torch.diff(wrapped, dim=1) < 0).to(rad.dtype) * -1.0
        phase = running_sum((rad + shift).double()).to(rad.dtype)
        sines = torch.sin(phase * 2 * math.pi) * self.sine_amp
        uv = (f0 > self.voiced_threshold).to(sines.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = noise_amp * torch.randn_like(sines)
        return sines * uv + noise

    def forward(self, f0: torch.Tensor) -> torch.Tensor:
        """f0 [B, N, 1] per sample -> excitation [B, N, 1]. Draws a final unused noise like the original."""
        with torch.no_grad():
            waves = self.sine_waves(f0)
        merged = torch.tanh(self.l_linear(waves.to(self.l_linear.weight.dtype)))
        if self.draw_unused_noise:
            torch.randn_like(merged)  # the original's noise branch: drawn, never used; keeps the RNG in step
        return merged


# ----------------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """NSF-HiFiGAN generator. Input x [B, in_channels, T], f0 [B, T] (Hz), g [B, gin, 1 or T] -> [B, 1, T*hop]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"unknown generator activation {config.activation!r}; expected one of {ACTIVATIONS}")
        self.config = config
        self.filter_dtype = torch.float32  # see cast_filter
        rates, kernels = list(config.upsample_rates), list(config.upsample_kernel_sizes)
        if len(rates) != len(kernels):
            raise ValueError(f"upsample_rates {rates} and upsample_kernel_sizes {kernels} differ in length")
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.num_upsamples = len(rates)
        self.upp = config.hop
        snake = config.activation == "snake"
        ch0 = config.upsample_initial_channel

        if config.source_style not in ("so-vits", "openvpi"):
            raise ValueError(f"unknown source_style {config.source_style!r}; expected 'so-vits' or 'openvpi'")
        openvpi = config.source_style == "openvpi"
        self.m_source = SourceModuleHnNSF(
            config.sampling_rate, harmonic_num=8, phase_init_samples=self.upp if openvpi else 1,
            draw_unused_noise=not openvpi,
        )
        self.noise_convs = nn.ModuleList()
        self.conv_pre = weight_norm(nn.Conv1d(config.in_channels, ch0, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(rates, kernels)):
            c_out = ch0 // (2 ** (i + 1))
            self.ups.append(weight_norm(nn.ConvTranspose1d(ch0 // (2 ** i), c_out, k, u, padding=(k - u + 1) // 2)))
            if i + 1 < len(rates):
                stride = math.prod(rates[i + 1:])
                self.noise_convs.append(nn.Conv1d(1, c_out, kernel_size=stride * 2, stride=stride, padding=(stride + 1) // 2))
            else:
                self.noise_convs.append(nn.Conv1d(1, c_out, kernel_size=1))
        block = ResBlock1 if str(config.resblock) == "1" else ResBlock2
        self.resblocks = nn.ModuleList()
        ch = ch0
        for i in range(len(self.ups)):
            ch = ch0 // (2 ** (i + 1))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(ch, k, tuple(d), activation=config.activation))
        # Registration order = the original's state-dict and optimizer-parameter order.
        if snake:
            self.snakes = nn.ModuleList([SnakeAlias(ch0 // (2 ** i)) for i in range(len(rates))])
        self.conv_post = weight_norm(nn.Conv1d(ch, 1, 7, 1, padding=3))
        if snake:
            self.snake_post = SnakeAlias(ch)
        if config.gin_channels > 0:
            self.cond = nn.Conv1d(config.gin_channels, ch0, 1)

    def excitation(self, f0: torch.Tensor) -> torch.Tensor:
        """Frame f0 [B, T] (Hz, 0 = unvoiced) -> harmonic source [B, 1, T*hop] (draws random numbers)."""
        f0_samples = torch.repeat_interleave(f0.unsqueeze(-1), self.upp, dim=1)  # nearest x hop
        return self.m_source(f0_samples).transpose(1, 2)

    def cast_filter(self, dtype: torch.dtype) -> None:
        """Hold the filter path (every module but the harmonic source, whose phase sums need float64) in
        `dtype`, for reduced-precision inference on the CPU: `synthesize` then runs it in that dtype
        without autocast, so the channels-last tiles and their fused in-place adds still apply. Measured
        for bf16 against autocast: the same speed, peak memory 1.05 -> 0.60 GB at 10 s of audio (autocast
        makes a cast copy of every weight and activation it feeds a convolution)."""
        for name, module in self.named_children():
            if name != "m_source":
                module.to(dtype)
        self.filter_dtype = dtype

    def synthesize(self, x: torch.Tensor, har_source: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic filter path: features x [B, C, T] + source [B, 1, T*hop] -> audio [B, 1, T*hop].

        On the CPU the leaky-ReLU decoder carries its activations channels-last, and at inference (one
        item, no gradients) cuts them into time tiles (modules.conv_layout): the same values up to float
        summation order, without oneDNN's layout copies around each conv and its per-length buffers.
        After `cast_filter` the output is in the filter's dtype."""
        dtype = self.filter_dtype
        if dtype != torch.float32 and x.device.type == "cpu":
            with torch.autocast("cpu", enabled=False):
                return self._filter(x.to(dtype), har_source, None if g is None else g.to(dtype))
        return self._filter(x, har_source, g)

    def _filter(self, x: torch.Tensor, har_source: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        nwc = not hasattr(self, "snakes") and wants_nwc(x)
        frames = x.size(-1)
        tiled = nwc and not torch.is_grad_enabled() and x.size(0) == 1
        if tiled:
            n_tiles = -(-frames // TILE_FRAMES)
            padded = n_tiles * -(-frames // n_tiles)
            x = F.pad(x, (0, padded - frames))
            har_source = F.pad(har_source, (0, (padded - frames) * self.upp))
        if nwc:
            x, har_source = to_nwc(x), har_source.unsqueeze(2)
        x = apply_conv(self.conv_pre, x)
        if g is not None and hasattr(self, "cond"):
            cond = self.cond(g)
            if tiled and cond.size(-1) > 1:  # per-frame conditioning: pad like x (it acts frame by frame)
                cond = F.pad(cond, (0, padded - frames))
            x = x + (cond.unsqueeze(2) if nwc else cond)
        har_source = har_source.to(x.dtype)
        workspace, pool = None, None
        if tiled:
            workspace_size, stage_size = self._tile_buffers(padded, n_tiles)
            workspace = x.new_empty(workspace_size)
            # sum, middle activation, block output, stage input: reused by every stage
            pool = [x.new_empty(stage_size) for _ in range(4)]
        scale = 1  # samples per frame at this stage
        for i in range(self.num_upsamples):
            rate = self.config.upsample_rates[i]
            upsampled = None
            if tiled:  # into the stage buffer, in tiles (see modules.conv_layout.polyphase_kernel)
                in_tiles = TimeTiles(n_tiles, x.size(-1) // n_tiles, frames * scale, workspace)
                stage = _nwc_view(pool[3], self.ups[i].out_channels, x.size(-1) * rate)
                upsampled = tiled_leaky_relu_upsample(self.ups[i], x, LRELU_SLOPE, in_tiles, stage)
            if upsampled is not None:
                x = upsampled
            elif hasattr(self, "snakes"):
                x = self.ups[i](self.snakes[i](x))
            else:
                if tiled:
                    zero_padding_(x, frames * scale)
                x = leaky_relu_conv(self.ups[i], x, LRELU_SLOPE)
            scale *= rate
            if tiled:
                x = add_conv_(x, self.noise_convs[i], har_source)
            else:
                x = x + apply_conv(self.noise_convs[i], har_source)
            tiles = None
            if tiled:
                n = _stage_tile_count(n_tiles, padded, scale)
                tiles = TimeTiles(n, x.size(-1) // n, frames * scale, workspace)
            x = self._resblock_mean(i, x, tiles, pool)
        if hasattr(self, "snake_post"):
            return torch.tanh(self.conv_post(self.snake_post(x)))
        if tiled:
            zero_padding_(x, frames * scale)
        audio = torch.tanh(leaky_relu_conv(self.conv_post, x, 0.01))  # slope 0.01 here, as the original
        if nwc:
            audio = audio.squeeze(2)
        return audio[..., :frames * scale] if tiled else audio

    def _resblock_mean(self, stage: int, x: torch.Tensor, tiles: TimeTiles | None,
                       pool: list[torch.Tensor] | None) -> torch.Tensor:
        """The mean of the stage's residual blocks on x. Tiled inference writes into the `pool` buffers
        (sum, middle activation, block output) instead of allocating, and the last block works in x itself
        (nothing reads x after it)."""
        blocks = self.resblocks[stage * self.num_kernels:(stage + 1) * self.num_kernels]
        if tiles is not None and pool is not None and all(isinstance(block, ResBlock1) for block in blocks):
            acc, scratch, block_out = (_nwc_view(buffer, x.size(1), x.size(-1)) for buffer in pool[:3])
            in_place = x.is_contiguous(memory_format=torch.channels_last)
            for j, block in enumerate(blocks):
                last = j == len(blocks) - 1
                y = block.forward_into(x, tiles, acc if j == 0 else (x if last and in_place else block_out), scratch)
                if j:
                    acc.add_(y)
            return acc.div_(self.num_kernels)
        acc = None
        for block in blocks:
            y = block(x, tiles)
            acc = y if acc is None else (acc.add_(y) if tiles is not None else acc + y)
        return acc.div_(self.num_kernels) if tiles is not None else acc / self.num_kernels

    def _tile_buffers(self, frames: int, n_tiles: int) -> tuple[int, int]:
        """Elements of (the largest haloed tile buffer, the largest stage activation) for `frames` padded
        frames cut into `n_tiles` tiles."""
        halo = max(conv.padding[0] for block in self.resblocks for conv in block.modules()
                   if isinstance(conv, nn.Conv1d))
        workspace, stage, scale, channels = 0, 0, 1, self.config.upsample_initial_channel
        for rate in self.config.upsample_rates:
            scale, channels = scale * rate, channels // 2
            n = _stage_tile_count(n_tiles, frames, scale)
            workspace = max(workspace, channels * (frames * scale + 2 * halo * n))
            stage = max(stage, channels * frames * scale)
        return workspace, stage

    def forward(self, x: torch.Tensor, f0: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        return self.synthesize(x, self.excitation(f0), g)

    def remove_weight_norm(self) -> int:
        return remove_all_weight_norm(self)
