"""One audio loader and writer for the whole project.

`load_audio` reads anything libsndfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1, any bit
depth and channel count), averages channels to mono and resamples with soxr (very high quality).
Problems come back as `AudioError` with the file name and a plain reason.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from modules.errors import AudioError
from modules.fileio import atomic_path

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
