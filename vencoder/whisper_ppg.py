"""Whisper PPG encoders (`whisper-ppg`: `pretrain/medium.pt`, `whisper-ppg-large`: `pretrain/large-v2.pt`).

The weight file is an OpenAI whisper checkpoint, `{"dims": {...}, "model_state_dict": {...}}`; only the
audio encoder (`encoder.*`: two convs, sinusoidal positions, pre-LN blocks, `ln_post`) is built.

Front end, as whisper computes it: 16 kHz audio padded with zeros (or cut) to the encoder's context
(30 s = 480000 samples for every published file), a centred reflect-padded STFT with a 400-sample periodic
Hann window and hop 160 whose last frame is dropped, the power spectrum through an 80-band Slaney mel
filter bank, log10 clamped at 1e-10, floored at (its maximum - 8), then (x + 4) / 4. The encoder halves
the 100 Hz mel rate to 50 Hz; a clip of N samples keeps its first N // 320 frames.

so-vits-svc 4.1 cuts every clip to 30 s, so longer clips lose their end. Here a longer clip runs as
overlapping 30-s windows (hop 25 s) whose units are joined at the middle of each overlap; each window
is encoded exactly as the original encodes a clip of that length, so clips up to 30 s give the original's
units and every frame of a longer clip equals the single-window result of the window it comes from.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.errors import CheckpointError
from vencoder.base import SpeechEncoder, as_mono_tensor, inference_network
from vencoder.fairseq_checkpoint import safe_torch_load

logger = logging.getLogger(__name__)

N_FFT = 400
MEL_HOP = 160
# The encoder's convs turn 2 mel frames into one unit: 320 samples per unit at 16 kHz.
UNIT_HOP = 2 * MEL_HOP
# Consecutive windows overlap by a sixth of the context (5 s of 30 s); the join is mid-overlap.
WINDOW_HOP_FRACTION = 5 / 6
WHISPER_SOURCE = "the OpenAI whisper release (openaipublic.azureedge.net/main/whisper/models/.../{file})"


@dataclass(frozen=True)
class AudioEncoderDims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int

    @classmethod
    def from_checkpoint(cls, dims: Any, source: str) -> "AudioEncoderDims":
        if not isinstance(dims, Mapping):
            raise CheckpointError(f"{source}: 'dims' must be a dict of whisper model dimensions")
        try:
            values = {name: int(dims[name]) for name in cls.__dataclass_fields__}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: 'dims' lacks a valid audio encoder field ({e})") from None
        result = cls(**values)
        if result.n_audio_state % result.n_audio_head:
            raise CheckpointError(f"{source}: n_audio_state {result.n_audio_state} is not divisible by "
                                        f"n_audio_head {result.n_audio_head}")
        return result


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positions: sines then cosines over log-spaced timescales, [length, channels]."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class WhisperAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class WhisperBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = WhisperAttention(dim, heads)
        self.attn_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.mlp_ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperAudioEncoder(nn.Module):
    """Whisper's audio encoder with its parameter names (`conv1`, `blocks.N.attn.query`, `ln_post`, ...)."""

    def __init__(self, dims: AudioEncoderDims) -> None:
        super().__init__()
        self.dims = dims
        state = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, state, 3, padding=1)
        self.conv2 = nn.Conv1d(state, state, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, state))
        self.blocks = nn.ModuleList(WhisperBlock(state, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(state)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, 2 * n_audio_ctx] -> units [B, n_audio_ctx, n_audio_state]."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.size(1)].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class WhisperLogMel(nn.Module):
    """Whisper's log-mel front end for exactly one context window of audio."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        import librosa

        filters = librosa.filters.mel(sr=16000, n_fft=N_FFT, n_mels=n_mels)  # Slaney scale and norm
        self.register_buffer("filters", torch.from_numpy(np.asarray(filters, dtype=np.float32)))
        self.register_buffer("window", torch.hann_window(N_FFT))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, N] -> log mel [B, n_mels, N // 160]."""
        spec = torch.stft(audio, N_FFT, MEL_HOP, window=self.window, return_complex=True)
        power = spec[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()
        floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
        return (torch.maximum(log_spec, floor) + 4.0) / 4.0


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows covering a clip; the last one ends at the clip's last whole unit."""
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window, hop))
    last = (n_samples - window) // UNIT_HOP * UNIT_HOP
    if last > starts[-1]:
        starts.append(last)
    return starts


def window_unit_spans(n_samples: int, starts: Sequence[int], window_units: int) -> list[tuple[int, int]]:
    """For each window, the unit frames [begin, end) of the clip it supplies: cuts are mid-overlap."""
    total = n_samples // UNIT_HOP
    first = [s // UNIT_HOP for s in starts]
    cuts = [0] + [(first[k + 1] + first[k] + window_units) // 2 for k in range(len(starts) - 1)] + [total]
    return [(cuts[k], cuts[k + 1]) for k in range(len(starts))]


class WhisperPPG(SpeechEncoder):
    name = "whisper-ppg"
    weight_file = "medium.pt"
    weight_source = WHISPER_SOURCE.format(file="medium.pt")
    hop_size: ClassVar[int] = UNIT_HOP

    def __init__(self, device: str | torch.device | None = None, pretrain_dir: str | Path | None = None,
                 max_batch_seconds: float = 120.0) -> None:
        super().__init__(device, pretrain_dir, max_batch_seconds)
        path = self.check_weights(self.pretrain_dir)
        self.encoder = inference_network(load_whisper_audio_encoder(path), self.device)
        self.front_end = WhisperLogMel(self.encoder.dims.n_mels).to(self.device)
        dims = self.encoder.dims
        self.adopt_width(dims.n_audio_state, path)
        self.window_units = dims.n_audio_ctx
        self.window_samples = dims.n_audio_ctx * UNIT_HOP
        self.window_hop = max(1, int(dims.n_audio_ctx * WINDOW_HOP_FRACTION)) * UNIT_HOP

    def n_frames(self, n_samples: int) -> int:
        return n_samples // UNIT_HOP

    def _encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [W, window_samples] -> units [W, window_units, dim] (CPU float32)."""
        mel = self.front_end(windows.to(self.device))
        return self.encoder(mel).float().cpu()

    @torch.inference_mode()
    def encode_batch(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        clips = [as_mono_tensor(w) for w in wavs]
        jobs: list[tuple[int, int, int, int]] = []  # (clip, start sample, first unit kept, end unit kept)
        for index, clip in enumerate(clips):
            starts = window_starts(clip.numel(), self.window_samples, self.window_hop)
            for start, (begin, end) in zip(starts, window_unit_spans(clip.numel(), starts, self.window_units)):
                jobs.append((index, start, begin - start // UNIT_HOP, end - start // UNIT_HOP))
        pieces: list[list[torch.Tensor]] = [[] for _ in clips]
        per_batch = max(1, self.max_batch_samples // self.window_samples)
        for first in range(0, len(jobs), per_batch):
            batch = jobs[first: first + per_batch]
            windows = torch.zeros(len(batch), self.window_samples)
            for row, (index, start, _b, _e) in enumerate(batch):
                audio = clips[index][start: start + self.window_samples]
                windows[row, : audio.numel()] = audio
            units = self._encode_windows(windows)
            for row, (index, _start, begin, end) in enumerate(batch):
                pieces[index].append(units[row, begin:end])
        return [torch.cat(p, dim=0).T.unsqueeze(0).contiguous() if p else torch.zeros(1, self.dim, 0)
                for p in pieces]


class WhisperPPGLarge(WhisperPPG):
    name = "whisper-ppg-large"
    weight_file = "large-v2.pt"
    weight_source = WHISPER_SOURCE.format(file="large-v2.pt")


def load_whisper_audio_encoder(path: Path) -> WhisperAudioEncoder:
    """The audio encoder of an OpenAI whisper checkpoint; the text decoder's weights are skipped."""
    raw = safe_torch_load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model_state_dict"), dict) or "dims" not in raw:
        raise CheckpointError(f"{path}: expected a whisper checkpoint with 'dims' and 'model_state_dict'")
    dims = AudioEncoderDims.from_checkpoint(raw["dims"], str(path))
    model = WhisperAudioEncoder(dims)
    state = {k[len("encoder."):]: v for k, v in raw["model_state_dict"].items() if k.startswith("encoder.")}
    own = model.state_dict()
    if "positional_embedding" not in state:
        state["positional_embedding"] = own["positional_embedding"]
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{path}: the whisper encoder lacks {len(missing)} weights, "
                                    f"e.g. {', '.join('encoder.' + k for k in missing[:4])}")
    wrong = [f"encoder.{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: mis-shaped whisper weights: {'; '.join(wrong[:4])}")
    model.load_state_dict({k: state[k].float() for k in own}, strict=True)
    return model
