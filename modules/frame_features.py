"""Per-frame features, one implementation each: linear spectrogram, 80-bin training mel,
128-bin NSF-HiFiGAN mel (with key shift), volume, coarse f0, and unit-to-frame resizing.

Every per-frame array of an L-sample clip has exactly T = L // hop frames.
"""
from __future__ import annotations

import functools
import math

import librosa
import numpy as np
import torch
import torch.nn.functional as F

F0_MIN = 50.0
F0_MAX = 1100.0
F0_BINS = 256
_MEL_MIN = 1127.0 * math.log(1.0 + F0_MIN / 700.0)
_MEL_MAX = 1127.0 * math.log(1.0 + F0_MAX / 700.0)


@functools.lru_cache(maxsize=16)
def _hann(win_length: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(win_length, device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _mel_basis_np(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk).astype(np.float32)


def mel_basis(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, device: torch.device | str = "cpu",
    htk: bool = False,
) -> torch.Tensor:
    """Slaney-normalised mel filter bank [n_mels, n_fft//2+1] (librosa's, so values match the original)."""
    return torch.from_numpy(_mel_basis_np(sr, n_fft, n_mels, float(fmin), fmax, htk)).to(device)


def spectrogram(y: torch.Tensor, n_fft: int = 2048, hop: int = 512, win: int = 2048) -> torch.Tensor:
    """Linear magnitude spectrogram [B, n_fft//2+1, L//hop] of y [B, L] (or [L] -> [bins, T]).

    Reflect-pads (n_fft-hop)/2 on each side and uses center=False, so T = L // hop exactly.
    """
    squeeze = y.dim() == 1
    if squeeze:
        y = y.unsqueeze(0)
    pad = (n_fft - hop) // 2
    y = F.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y, n_fft, hop_length=hop, win_length=win, window=_hann(win, str(y.device), y.dtype),
        center=False, return_complex=True,
    )
    spec = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-6)
    return spec[0] if squeeze else spec


def spec_to_mel(spec: torch.Tensor, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """Log mel [.., n_mels, T] from a linear spectrogram [.., n_fft//2+1, T]."""
    basis = mel_basis(sr, n_fft, n_mels, fmin, fmax, spec.device).to(spec.dtype)
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))


def mel_spectrogram(
    y: torch.Tensor, sr: int = 44100, n_fft: int = 2048, hop: int = 512, win: int = 2048,
    n_mels: int = 80, fmin: float = 0.0, fmax: float | None = 22050,
) -> torch.Tensor:
    """Training-loss log mel [B, n_mels, L//hop]: spectrogram() then the slaney mel bank."""
    return spec_to_mel(spectrogram(y, n_fft, hop, win), sr, n_fft, n_mels, fmin, fmax)


def nsf_mel(
    y: torch.Tensor, sr: int = 44100, n_fft: int = 2048, hop: int = 512, win: int = 2048,
    n_mels: int = 128, fmin: float = 40.0, fmax: float | None = 16000.0, keyshift: float = 0.0,
) -> torch.Tensor:
    """NSF-HiFiGAN log mel [B, n_mels, L//hop] of y [B, L].

    With a key shift the STFT size and window grow by 2^(k/12); the magnitude is cut or zero-padded
    back to n_fft//2+1 bins and rescaled by win/win_new, then projected with the unshifted mel bank.
    """
    squeeze = y.dim() == 1
    if squeeze:
        y = y.unsqueeze(0)
    factor = 2.0 ** (keyshift / 12.0)
    n_fft_new = int(round(n_fft * factor))
    win_new = int(round(win * factor))
    pad_left = (win_new - hop) // 2
    pad_right = max((win_new - hop + 1) // 2, win_new - y.size(-1) - pad_left)
    mode = "reflect" if pad_right < y.size(-1) else "constant"
    y = F.pad(y.unsqueeze(1), (pad_left, pad_right), mode=mode).squeeze(1)
    spec = torch.stft(
        y, n_fft_new, hop_length=hop, win_length=win_new, window=_hann(win_new, str(y.device), y.dtype),
        center=False, return_complex=True,
    )
    mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    if keyshift != 0:
        bins = n_fft // 2 + 1
        if mag.size(1) < bins:
            mag = F.pad(mag, (0, 0, 0, bins - mag.size(1)))
        mag = mag[:, :bins, :] * win / win_new
    basis = mel_basis(sr, n_fft, n_mels, fmin, fmax, mag.device).to(mag.dtype)
    mel = torch.log(torch.clamp(torch.matmul(basis, mag), min=1e-5))
    return mel[0] if squeeze else mel


def volume(y: torch.Tensor | np.ndarray, hop: int = 512) -> torch.Tensor:
    """Frame RMS [.., L//hop]: mean square over non-overlapping hop windows of the reflect-padded signal."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    n_frames = y.size(-1) // hop
    squared = y.float().pow(2).reshape(-1, 1, y.size(-1))
    squared = F.pad(squared, (hop // 2, (hop + 1) // 2), mode="reflect")
    frames = squared.squeeze(1).unfold(-1, hop, hop).mean(dim=-1)
    vol = torch.sqrt(frames)[..., :n_frames]
    return vol.reshape(*y.shape[:-1], n_frames)


def f0_to_coarse(f0: torch.Tensor) -> torch.Tensor:
    """Quantise f0 (Hz) to the 256 mel-spaced bins of enc_p.f0_emb.

    Unvoiced and sub-50 Hz frames map to bin 1. f0 above about 1100 Hz maps to bin 0, as in the
    original (its out-of-range zeroing runs before the clamp); trained models expect that.
    """
    mel = 1127.0 * torch.log(1.0 + f0 / 700.0)
    voiced = mel > 0
    mel = torch.where(voiced, (mel - _MEL_MIN) * (F0_BINS - 2) / (_MEL_MAX - _MEL_MIN) + 1, mel)
    mel = torch.where(mel <= 1, torch.ones_like(mel), mel)
    mel = torch.where(mel > F0_BINS - 1, torch.zeros_like(mel), mel)
    return torch.round(mel).long()


def repeat_expand_2d(content: torch.Tensor, target_len: int, mode: str = "nearest") -> torch.Tensor:
    """Resize units [D, T_u] to [D, target_len] along time.

    "left" is the original's bucket rule: frame i takes unit k where i lies in [k*T/T_u, (k+1)*T/T_u).
    Any other mode goes to F.interpolate.
    """
    src_len = content.shape[-1]
    if mode == "left":
        edges = torch.arange(src_len + 1, device=content.device, dtype=torch.float64) * target_len / src_len
        frame = torch.arange(target_len, device=content.device, dtype=torch.float64)
        index = torch.searchsorted(edges[1:], frame, right=True).clamp(max=src_len - 1)
        return content[:, index]
    resized = F.interpolate(content[None].float(), size=target_len, mode=mode)[0]
    return resized.to(content.dtype)
