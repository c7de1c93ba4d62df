"""Exact chunked synthesis: reversed flow + NSF-HiFiGAN decoder over overlapping windows of z.

The original runs the flow and the decoder on the whole piece, so memory grows with the piece
(the decoder keeps every upsampling stage's activations for the full waveform). Both are
convolutional with a finite receptive field, so each output frame only depends on z within
`margin` frames of it. We run them on windows [a - margin, b + margin) and keep [a, b): away from
the piece's ends the window holds every input the kept samples see, and at the ends the window's
edge IS the piece's edge (same zero padding), so the result equals whole-piece synthesis up to
float rounding. The harmonic excitation is one continuous signal for the whole piece (its phase runs on across
windows); windows start on frame boundaries, so every strided noise conv stays aligned. For short
pieces it is `dec.excitation(f0)` sliced per window. For long pieces `ExcitationStream` produces the
SAME signal block by block: `dec.excitation` holds ~10 float tensors of [T*hop, 9] (about 8 GB for a
10-minute piece), while the stream carries the float64 phase sums across blocks and draws the noise in
blocks whose sizes are multiples of 16 values, which on the CPU generator yields exactly the values
of one big draw. tests/test_inference.py checks stream == dec.excitation.

The margins are computed from the config (decoder) and from the flow modules (coupling WNs);
a transformer flow has causal attention (unbounded left context), so it runs on the whole piece.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from modules.host_memory import MMAP_THRESHOLD_MAX, reuse_freed_memory
from vdecoder.nsf_hifigan import running_sum

# A SnakeAlias activation filters at twice the rate with 12-tap kernels (up and down); its reach
# at the activation's own rate is at most ceil((6 + 6) / 2) samples.
_SNAKE_RADIUS = 6
# Frames added to every computed margin, for off-by-one safety of transposed-conv alignment.
_SAFETY_FRAMES = 2


@dataclass(frozen=True)
class ReceptiveField:
    """Frames of context each side that the flow and the decoder need; flow None = unbounded."""

    flow: int | None
    decoder: int


def _resblock_radius(kernel: int, dilations: Sequence[int], kind: str, snake: bool) -> int:
    half = (kernel - 1) // 2
    act = _SNAKE_RADIUS if snake else 0
    if str(kind) == "1":  # pairs: dilated conv then dilation-1 conv, each after an activation
        return sum(half * d + half + 2 * act for d in dilations)
    return sum(half * d + act for d in dilations)


def decoder_receptive_frames(model_hps: Any, snake: bool | None = None) -> int:
    """Frames of z each side that one decoder output sample can depend on, from the config.

    Walks the decoder backwards from its output: conv_post (k7), then per stage (last to first) the
    widest resblock and the transposed conv (reach ceil((r + k) / u) in input units), then conv_pre (k7).
    """
    rates = list(model_hps["upsample_rates"])
    kernels = list(model_hps["upsample_kernel_sizes"])
    rb_kernels = list(model_hps["resblock_kernel_sizes"])
    rb_dilations = [list(d) for d in model_hps["resblock_dilation_sizes"]]
    kind = str(model_hps["resblock"])
    if snake is None:
        snake = model_hps["vocoder_name"] == "nsf-snake-hifigan"
    act = _SNAKE_RADIUS if snake else 0
    radius = 3 + act  # conv_post kernel 7, after the final activation
    for u, k in zip(reversed(rates), reversed(kernels)):
        radius += max(_resblock_radius(rk, d, kind, snake) for rk, d in zip(rb_kernels, rb_dilations))
        radius = math.ceil((radius + k) / u) + act  # transposed conv, after the stage's activation
    radius += 3  # conv_pre kernel 7
    return radius + _SAFETY_FRAMES


def decoder_values_per_frame(model_hps: Any, snake: bool | None = None) -> int:
    """Values per z frame of the decoder's largest activation (channels x samples per frame, widest stage).

    Stage i has upsample_initial_channel / 2^(i+1) channels at prod(rates[:i+1]) samples per frame;
    conv_pre's output has upsample_initial_channel at 1. A snake activation works at twice the rate.
    """
    rates = list(model_hps["upsample_rates"])
    ch0 = int(model_hps["upsample_initial_channel"])
    if snake is None:
        snake = model_hps["vocoder_name"] == "nsf-snake-hifigan"
    widest, samples = ch0, 1
    for i, u in enumerate(rates):
        samples *= int(u)
        widest = max(widest, ch0 // 2 ** (i + 1) * samples)
    return widest * (2 if snake else 1)


def heap_window_frames(model_hps: Any, margin: int, itemsize: int = 4,
                       budget_bytes: int = MMAP_THRESHOLD_MAX * 15 // 16, snake: bool | None = None) -> int:
    """Kept frames per decoder window such that every activation of the window (kept frames plus
    `margin` each side) stays below `budget_bytes`: below glibc's mmap threshold, such buffers are
    reused heap memory instead of fresh page-faulted mappings (modules.host_memory). The default
    budget leaves 1/16 of the threshold for padded copies inside the convs. At least 1."""
    total = budget_bytes // (decoder_values_per_frame(model_hps, snake) * itemsize)
    return max(1, total - 2 * margin)


def cpu_window_frames(chunk_frames: int, device: torch.device, model_hps: Any, margin: int,
                      snake: bool | None = None) -> int:
    """The decoder window to use on `device`: on the CPU, glibc keeps freed memory for reuse and windows
    shrink to heap_window_frames (several times faster from 60 s of audio on); elsewhere unchanged.
    chunk_frames <= 0 (whole piece) stays as it is."""
    if device.type != "cpu":
        return chunk_frames
    reuse_freed_memory()
    return min(chunk_frames, heap_window_frames(model_hps, margin, snake=snake)) if chunk_frames > 0 else chunk_frames


def flow_receptive_frames(flow: torch.nn.Module) -> int | None:
    """Frames each side the reversed flow needs: the sum of its couplings' conv reaches.

    Couplings run one after another, so reaches add up. A coupling whose encoder contains attention
    (transformer flow) has unbounded causal context: returns None.
    """
    total = 0
    layers = getattr(flow, "flows", None)
    if layers is None:
        return None
    for layer in layers:
        for mod in layer.modules():
            name = type(mod).__name__.lower()
            if "attention" in name or "fft" in name:
                return None
            if isinstance(mod, torch.nn.Conv1d):
                k, d = mod.kernel_size[0], mod.dilation[0]
                total += d * (k - 1) // 2
    return total + _SAFETY_FRAMES


def receptive_field(model: torch.nn.Module, model_hps: Any) -> ReceptiveField:
    return ReceptiveField(flow_receptive_frames(model.flow), decoder_receptive_frames(model_hps))


def _slice_time(g: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Speaker condition for frames [a, b): a constant [B, gin, 1] stays, a time-varying one is sliced."""
    return g if g.size(-1) == 1 else g[..., a:b]


def windows(n_frames: int, chunk: int) -> list[tuple[int, int]]:
    """Kept ranges [a, b) of at most `chunk` frames covering 0..n_frames."""
    if chunk <= 0 or n_frames <= chunk:
        return [(0, n_frames)]
    return [(a, min(a + chunk, n_frames)) for a in range(0, n_frames, chunk)]


class ExcitationStream:
    """The harmonic-plus-noise excitation of `dec.m_source` for frame f0 [B, T], produced block by block.

    Mirrors the decoder's source exactly (same random draws in the same order: initial phases, then
    the noise, which is drawn per block): `get(a, b)` returns samples of frames [a, b) and may only
    move forward (a never decreases); blocks no longer needed are dropped, so memory stays bounded.
    The original's final unused noise draw is skipped (it never reaches the audio).
    """

    def __init__(self, source: torch.nn.Module, f0: torch.Tensor, hop: int, block_frames: int = 512) -> None:
        self.source = source
        self.f0 = f0
        self.hop = hop
        self.block = max(16, block_frames // 16 * 16)  # multiple of 16 frames: noise blocks stay aligned
        dim = source.dim
        self.harmonics = torch.arange(1, dim + 1, device=f0.device, dtype=f0.dtype).view(1, 1, -1)
        rand_ini = torch.rand(f0.shape[0], dim, device=f0.device)
        rand_ini[:, 0] = 0
        self.rand_ini = rand_ini
        batch = f0.shape[0]
        self.sum_rad = torch.zeros(batch, 1, dim, dtype=torch.float64, device=f0.device)
        self.sum_phase = torch.zeros_like(self.sum_rad)
        self.last_wrapped: torch.Tensor | None = None
        self.done = 0  # frames generated so far
        self.cache_start = 0  # first frame held in `cache`
        self.cache = f0.new_zeros(batch, 1, 0)

    def _scan(self, start: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """cumsum continued from `start`: the same float64 sums as one whole-piece cumsum (on a GPU up to
        the blocked scan's rounding order, see `running_sum`)."""
        return running_sum(torch.cat([start, values.double()], dim=1))[:, 1:]

    def _next_block(self) -> torch.Tensor:
        src, a = self.source, self.done
        b = min(a + self.block, self.f0.shape[1])
        f0 = torch.repeat_interleave(self.f0[:, a:b].unsqueeze(-1), self.hop, dim=1)  # [B, n, 1]
        rad = (f0 * self.harmonics / src.sampling_rate) % 1
        if a == 0:  # the openvpi source adds the initial phases to the whole first frame, so-vits to one sample
            init = getattr(src, "phase_init_samples", 1)
            rad[:, :init, :] = rad[:, :init, :] + self.rand_ini.to(rad.dtype).unsqueeze(1)
        acc = self._scan(self.sum_rad, rad)
        self.sum_rad = acc[:, -1:]
        wrapped = acc.to(rad.dtype) % 1
        prev = wrapped[:, :1] if self.last_wrapped is None else self.last_wrapped
        self.last_wrapped = wrapped[:, -1:]
        shift = (torch.diff(wrapped, dim=1, prepend=prev) < 0).to(rad.dtype) * -1.0
        if a == 0:
            shift[:, 0] = 0
        phase_acc = self._scan(self.sum_phase, rad + shift)
        self.sum_phase = phase_acc[:, -1:]
        sines = torch.sin(phase_acc.to(rad.dtype) * 2 * math.pi) * src.sine_amp
        uv = (f0 > src.voiced_threshold).to(sines.dtype)
        noise_amp = uv * src.noise_std + (1 - uv) * src.sine_amp / 3
        waves = sines * uv + noise_amp * torch.randn_like(sines)
        merged = torch.tanh(src.l_linear(waves.to(src.l_linear.weight.dtype)))
        self.done = b
        return merged.transpose(1, 2)

    def get(self, a: int, b: int) -> torch.Tensor:
        """Excitation [B, 1, (b-a)*hop] of frames [a, b)."""
        if a < self.cache_start:
            raise ValueError(f"excitation frames [{a}, {b}) requested after frame {self.cache_start} was dropped")
        drop = (a - self.cache_start) * self.hop
        self.cache = self.cache[..., drop:]
        self.cache_start = a
        blocks = [self.cache]
        while self.done < b:
            blocks.append(self._next_block())
        self.cache = torch.cat(blocks, dim=-1) if len(blocks) > 1 else self.cache
        return self.cache[..., : (b - a) * self.hop]


def synthesize_chunked(
    model: torch.nn.Module,
    z_p: torch.Tensor,
    x_mask: torch.Tensor,
    excitation: torch.Tensor | ExcitationStream,
    g: torch.Tensor,
    rf: ReceptiveField,
    hop: int,
    chunk_frames: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Audio [B, 1, T*hop] = dec.synthesize(flow(z_p, reverse), excitation, g), computed window by window.

    z_p [B, C, T]; excitation [B, 1, T*hop] (dec.excitation on the whole piece) or an ExcitationStream;
    g [B, gin, 1|T].
    `progress(frames_done)` is called after each window.
    """
    n = z_p.size(-1)
    ranges = windows(n, chunk_frames)
    whole_flow = rf.flow is None and len(ranges) > 1
    if whole_flow:  # unbounded flow context: run the flow once, chunk only the decoder
        z_all = model.flow(z_p, x_mask, g=g, reverse=True)
    dec_margin = rf.decoder
    flow_margin = 0 if rf.flow is None else rf.flow
    pieces: list[torch.Tensor] = []
    for a, b in ranges:
        da, db = max(a - dec_margin, 0), min(b + dec_margin, n)  # decoder window
        if whole_flow:
            z = z_all[..., da:db]
        else:
            fa, fb = max(da - flow_margin, 0), min(db + flow_margin, n)  # flow window
            z_win = model.flow(z_p[..., fa:fb], x_mask[..., fa:fb], g=_slice_time(g, fa, fb), reverse=True)
            z = z_win[..., da - fa: db - fa]
        if isinstance(excitation, ExcitationStream):
            source = excitation.get(da, db)
        else:
            source = excitation[..., da * hop: db * hop]
        audio = model.dec.synthesize(z, source, _slice_time(g, da, db))
        pieces.append(audio[..., (a - da) * hop: (b - da) * hop])
        if progress is not None:
            progress(b - a)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
