"""Sample arithmetic of an inference run: pieces, padding, crossfades, output names, loudness envelope.

Everything here works in OUTPUT samples (the model's sampling rate). The input is resampled once to
the model rate; silence boundaries found at the input's native rate are mapped with
`to_output_samples`, so a piece covering input samples [s, e) covers output samples
[ceil(s*r), ceil(e*r)) and the pieces tile the output exactly for any input rate (22.05 kHz,
48 kHz...). The original computed the forced-clip and crossfade sizes at the input rate but applied
them to output samples, which shifts timing when the input is not 44.1 kHz.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from modules.frame_features import volume


@dataclass(frozen=True)
class Piece:
    """One unit of work: output samples [start, end) of the model-rate signal.

    `overlap` is how many samples at the start of this piece repeat the end of the previous piece
    of the same silence chunk (forced clipping with `-lg`); those samples are crossfaded.
    """

    start: int
    end: int
    silent: bool
    overlap: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Crossfade:
    """How an overlap of `size` samples is split: keep `left` old samples, blend `ramp`, then the rest is new."""

    size: int
    left: int
    ramp: int
    right: int


def to_output_samples(n: int, sr_in: int, sr_out: int) -> int:
    """ceil(n * sr_out / sr_in) in exact integer arithmetic (the original's per-chunk output length)."""
    return -(-n * sr_out // sr_in)


def crossfade_split(size: int, retain: float) -> Crossfade:
    """Split an overlap like the original's `-lgr`: blend int(size*lgr) samples centred in the overlap."""
    if size <= 0:
        return Crossfade(0, 0, 0, 0)
    if not 0.0 < retain <= 1.0:
        raise ValueError(f"linear_gradient_retain must be in (0, 1], got {retain}")
    ramp = int(size * retain)
    left = (size - ramp) // 2
    return Crossfade(size, left, ramp, size - ramp - left)


def plan_pieces(
    chunks: Iterable[tuple[int, int, bool]],
    sr_in: int,
    sr_out: int,
    clip_seconds: float = 0.0,
    overlap_seconds: float = 0.0,
) -> list[Piece]:
    """Map silence chunks (input samples) to pieces (output samples), cutting voiced chunks with `-cl`.

    With clip > 0 a voiced chunk is cut every int(clip*sr_out) samples and each piece after the
    first starts int(lg*sr_out) samples earlier (unless that would reach before the chunk).
    """
    per = int(clip_seconds * sr_out) if clip_seconds > 0 else 0
    pre = int(overlap_seconds * sr_out) if overlap_seconds > 0 else 0
    pieces: list[Piece] = []
    for start_in, end_in, silent in chunks:
        start, end = to_output_samples(start_in, sr_in, sr_out), to_output_samples(end_in, sr_in, sr_out)
        if end <= start:
            continue
        if silent or per <= 0:
            pieces.append(Piece(start, end, silent))
            continue
        for i in range(start, end, per):
            overlap = pre if i - pre >= start and i > start else 0
            pieces.append(Piece(i - overlap, min(i + per, end), False, overlap))
    return pieces


def pad_or_trim(audio: np.ndarray, length: int) -> np.ndarray:
    """Exactly `length` samples: trim the end, or zero-pad both sides (left half rounded down)."""
    if len(audio) >= length:
        return audio[:length]
    missing = length - len(audio)
    left = missing // 2
    return np.pad(audio, (left, missing - left))


class OutputAssembler:
    """Writes pieces into one output buffer, crossfading the overlapping ones."""

    def __init__(self, total: int, retain: float = 0.75) -> None:
        self.audio = np.zeros(total, dtype=np.float32)
        self.retain = retain

    def add(self, piece: Piece, audio: np.ndarray) -> None:
        if len(audio) != piece.length:
            raise ValueError(f"piece [{piece.start}, {piece.end}) got {len(audio)} samples, expected {piece.length}")
        fade = crossfade_split(piece.overlap, self.retain)
        s = piece.start
        if fade.ramp > 0:
            ramp = np.linspace(0.0, 1.0, fade.ramp, dtype=np.float32)
            a = s + fade.left
            old = self.audio[a: a + fade.ramp]
            new = audio[fade.left: fade.left + fade.ramp]
            self.audio[a: a + fade.ramp] = old * (1.0 - ramp) + new * ramp
        keep_from = fade.left + fade.ramp
        self.audio[s + keep_from: piece.end] = audio[keep_from:]


def output_name(
    clean_name: str, transpose: int, speaker: str, f0_predictor: str, fmt: str,
    auto_f0: bool = False, spk_mix: bool = False, cluster_ratio: float = 0.0, mode: str = "sovits",
) -> str:
    """`{name}_{key}_{spk}{cl}_{mode}_{f0p}.{fmt}` as the original names its results."""
    key = "auto" if auto_f0 else f"{transpose}key"
    spk = "spk_mix" if spk_mix else speaker
    cluster = "" if cluster_ratio == 0 else f"_{cluster_ratio}"
    return f"{clean_name}_{key}_{spk}{cluster}_{mode}_{f0_predictor}.{fmt}"


def loudness_envelope(source: np.ndarray, output: np.ndarray, sr: int, rate: float) -> np.ndarray:
    """`-lea`: out * env_in^(1-rate) * env_out^(rate-1); rate 1 returns `output` unchanged, 0 imposes the input's.

    Envelopes are frame RMS over 0.5 s windows (modules.frame_features.volume), interpolated linearly to
    the output length; the output envelope is floored at 1e-6.
    """
    if rate == 1:
        return output
    hop = max(sr // 2, 1)

    def envelope(y: np.ndarray) -> torch.Tensor:
        if len(y) < hop * 2:  # shorter than two windows: one RMS value for the whole piece
            rms = torch.tensor([[float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if len(y) else 0.0]])
        else:
            rms = volume(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)), hop=hop)[None]
        return F.interpolate(rms[None].double(), size=len(output), mode="linear", align_corners=False)[0, 0]

    env_in = envelope(source)
    env_out = torch.clamp(envelope(output), min=1e-6)
    gain = torch.pow(env_in, 1.0 - rate) * torch.pow(env_out, rate - 1.0)
    return (output * gain.numpy()).astype(np.float32)


def frame_times(piece_start: int, n_frames: int, hop: int, pad: int, total: int) -> np.ndarray:
    """Output-time fractions (0..1) of each model frame of a piece padded with `pad` samples each side."""
    centres = piece_start - pad + np.arange(n_frames) * hop + hop / 2.0
    return np.clip(centres / max(total, 1), 0.0, 1.0)


def as_chunks(ranges: Sequence[tuple[int, int, bool]] | None, n: int) -> list[tuple[int, int, bool]]:
    """The slicer's ranges, or one voiced chunk covering everything when slicing is off."""
    return list(ranges) if ranges else [(0, n, False)]
