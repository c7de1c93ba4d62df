"""One audio loader and writer for the whole project.

`load_audio` reads anything libsndfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1, any bit
depth and channel count), averages channels to mono and resamples with soxr (very high quality).
Problems come back as `AudioError` with the file name and a plain reason. `resample_sinc` is the
torch windowed-sinc resampler for the pitch networks (RMVPE, FCPE) that were trained behind that kernel.
"""
from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

from modules.errors import AudioError

if TYPE_CHECKING:
    import torch

from modules.atomic_write import atomic_path

# File endings of the formats libsndfile reads; the resample stage and batch conversion pick files by them.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                              ".w64", ".caf", ".au"})
SUBTYPES = {"PCM_16", "PCM_24", "FLOAT"}
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a mono float signal; identity when the rates match."""
    if sr_in == sr_out:
        return np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return np.zeros(0, dtype=np.float32)
    return soxr.resample(np.asarray(audio, dtype=np.float32), sr_in, sr_out, quality="VHQ").astype(np.float32)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Polyphase bank [new, 1, taps] (float64) for rates already divided by their gcd, and its half-width.

    Phase i computes output i of each block of `new` outputs from a window of input samples that starts
    `half` samples before the block; the impulse response is a Hann-windowed sinc whose cutoff is
    `rolloff` times the lower Nyquist frequency, cut after `lowpass_filter_width` zero crossings.
    """
    import torch  # lazily: plain audio I/O must not pay torch's import time

    cutoff = min(orig, new) * rolloff
    half = math.ceil(lowpass_filter_width * orig / cutoff)
    input_times = torch.arange(-half, half + orig, dtype=torch.float64) / orig
    output_times = torch.arange(new, dtype=torch.float64)[:, None] / new
    # Distance in units of the cutoff period; clamping to the edge makes the window (and so the tap) ~0 there.
    x = ((input_times[None, :] - output_times) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(x * (math.pi / (2 * lowpass_filter_width))) ** 2
    taps = torch.sinc(x) * window * (cutoff / orig)
    return taps[:, None, :], half


def resample_sinc(audio: torch.Tensor, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99, window: str = "hann") -> torch.Tensor:
    """Band-limited resampling of [..., samples] by Hann-windowed sinc interpolation, in torch.

    Output sample j is sum_k x[k] * h(j / new_sr - k / orig_sr) with h(t) = (c / orig_sr) * sinc(c * t)
    * cos^2(pi * c * t / (2 * lowpass_filter_width)) for |c * t| <= lowpass_filter_width (else 0),
    c = rolloff * min(orig_sr, new_sr), and x zero outside the signal; ceil(len * new_sr / orig_sr)
    samples come out. This is the kernel of torchaudio's `Resample` (its default "sinc_interp_hann"),
    which RMVPE and FCPE were trained behind (with lowpass_filter_width=128), reproduced without
    torchaudio: taps computed in float64, then filtered in the input's dtype.
    """
    import torch.nn.functional as F

    if window != "hann":
        raise ValueError(f"resample_sinc: window must be 'hann', not {window!r}")
    if orig_sr <= 0 or new_sr <= 0 or int(orig_sr) != orig_sr or int(new_sr) != new_sr:
        raise ValueError(f"resample_sinc: sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    if lowpass_filter_width <= 0:
        raise ValueError("resample_sinc: lowpass_filter_width must be positive")
    if orig_sr == new_sr:
        return audio
    if not audio.is_floating_point():
        raise TypeError(f"resample_sinc: expected a floating-point tensor, got {audio.dtype}")
    common = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // common, int(new_sr) // common
    taps, half = _sinc_kernel(orig, new, int(lowpass_filter_width), float(rolloff))
    shape = audio.shape
    rows = audio.reshape(-1, 1, shape[-1])
    padded = F.pad(rows, (half, half + orig))
    blocks = F.conv1d(padded, taps.to(device=audio.device, dtype=audio.dtype), stride=orig)  # [n, new, blocks]
    out = blocks.transpose(1, 2).reshape(rows.shape[0], -1)
    out_len = math.ceil(new * shape[-1] / orig)
    return out[:, :out_len].reshape(*shape[:-1], -1)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[samples, channels] or [samples] -> [samples] by averaging the channels."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio(
    source: str | os.PathLike | io.BytesIO,
    target_sr: int | None = None,
    allow_nonfinite: bool = False,
) -> tuple[np.ndarray, int]:
    """Read a file as float32 mono in [-1, 1] (floats may exceed it), resampled to `target_sr` if given.

    Returns (audio, sample_rate). Raises AudioError for unreadable, empty or non-finite audio.
    """
    name = getattr(source, "name", None) or str(source)
    try:
        audio, sr = sf.read(source, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{name}: file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{name}: not a readable audio file ({e})") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: contains no samples")
    audio = to_mono(audio)
    if not allow_nonfinite and not np.all(np.isfinite(audio)):
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(f"{name}: contains {bad} NaN or infinite samples")
    if target_sr is not None and target_sr != sr:
        audio = resample(audio, sr, target_sr)
        sr = target_sr
    return audio, int(sr)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header, without decoding. Raises AudioError."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    return info.frames / info.samplerate if info.samplerate else 0.0


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 by x*32767 truncated, as the original writes (readers divide by 32768)."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def save_audio(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write mono audio atomically. Format from the extension (wav, flac, ogg); PCM_16 uses x*32767."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise AudioError(f"{path}: unsupported output format '{ext}' (use {', '.join(FORMATS)})")
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype must be one of {sorted(SUBTYPES)}")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if ext == "ogg":
        data, sf_subtype = np.clip(audio, -1.0, 1.0), "VORBIS"
    elif subtype == "PCM_16":
        data, sf_subtype = float_to_pcm16(audio), "PCM_16"
    elif ext == "flac" and subtype == "FLOAT":
        data, sf_subtype = np.clip(audio, -1.0, 1.0), "PCM_24"  # FLAC has no float subtype
    else:
        data, sf_subtype = audio, subtype
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, sr, subtype=sf_subtype, format=FORMATS[ext])
