"""The F0 predictor interface, shared post-processing and the name -> class registry.

Every predictor turns mono float audio at `sampling_rate` into one value per `hop_length` samples,
T = len(wav) // hop_length frames exactly, frame t describing the audio around sample t * hop.
Subclasses implement only `compute_raw_f0`; the base class checks the length, removes NaN and
negative values, silences frames that are near-silent in the audio (see `SilenceGate`) and does the
interpolation that so-vits-svc 4.1 applies before the values are saved or fed to the model.
"""
from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from modules.errors import SvcError

logger = logging.getLogger(__name__)

F0_MIN = 50.0
F0_MAX = 1100.0

# name -> "module:Class", imported lazily so that e.g. `pm` never pulls in torch networks.
_REGISTRY: dict[str, str] = {
    "pm": "modules.pitch.praat:PMF0Predictor",
    "dio": "modules.pitch.world:DioF0Predictor",
    "harvest": "modules.pitch.world:HarvestF0Predictor",
    "crepe": "modules.pitch.crepe:CrepeF0Predictor",
    "rmvpe": "modules.pitch.rmvpe:RMVPEF0Predictor",
    "fcpe": "modules.pitch.fcpe:FCPEF0Predictor",
    "crepe-tiny": "modules.pitch.crepe:CrepeF0Predictor",
}
# Extra names that are a registered class with preset options (not in the original's six).
_PRESETS: dict[str, dict] = {"crepe-tiny": {"model": "tiny"}}
PREDICTOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)


@dataclass(frozen=True)
class SilenceGate:
    """Marks frames too quiet to carry a pitch, so no predictor reports a voice in silence.

    WORLD's dio and harvest happily find a "pitch" in a -100 dBFS noise floor, and so may a network.
    A frame may be voiced only if its RMS (modules.frame_features.volume, the same frames as the f0) is
    above both `floor_db` dBFS and `relative_db` below the clip's loud level (95th percentile of the
    frame RMS). The mask is widened by `widen` frames so quiet note onsets and releases survive.
    """

    relative_db: float = -45.0
    floor_db: float = -70.0
    widen: int = 1

    def audible(self, wav: np.ndarray, hop_length: int) -> np.ndarray:
        """Boolean [len(wav) // hop_length]: True where a frame is loud enough to be voiced."""
        n_frames = len(wav) // hop_length
        if n_frames == 0:
            return np.zeros(0, dtype=bool)
        from modules.frame_features import volume  # torch import kept out of `import modules.pitch`

        rms = volume(np.ascontiguousarray(wav, dtype=np.float32), hop_length).numpy().astype(np.float64)
        loud = float(np.percentile(rms, 95))
        threshold = max(loud * 10.0 ** (self.relative_db / 20.0), 10.0 ** (self.floor_db / 20.0))
        audible = rms > threshold
        if self.widen > 0 and audible.any():
            padded = np.pad(audible, self.widen)
            stacked = [padded[i:i + n_frames] for i in range(2 * self.widen + 1)]
            audible = np.logical_or.reduce(stacked)
        return audible


class F0Predictor(ABC):
    """Input: mono float audio at `sampling_rate`. Output per frame of `hop_length` samples.

    `threshold` is the confidence threshold of the network predictors (crepe, rmvpe, fcpe); the
    signal-processing ones ignore it, as in the original. Set `silence_gate=None` (or the class
    attribute `default_gate = None`) to keep the predictor's own voicing decision untouched.
    """

    default_gate: SilenceGate | None = SilenceGate()

    def __init__(self, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                 threshold: float = 0.05, f0_min: float = F0_MIN, f0_max: float = F0_MAX,
                 silence_gate: SilenceGate | None | Literal["default"] = "default") -> None:
        if hop_length <= 0 or sampling_rate <= 0:
            raise ValueError(f"hop_length ({hop_length}) and sampling_rate ({sampling_rate}) must be positive")
        self.hop_length = hop_length
        self.sampling_rate = sampling_rate
        self.device = device or "cpu"
        self.threshold = threshold
        self.f0_min = f0_min
        self.f0_max = f0_max
        self.silence_gate: SilenceGate | None = (
            self.default_gate if silence_gate == "default" else silence_gate
        )

    def n_frames(self, wav: np.ndarray) -> int:
        return len(wav) // self.hop_length

    @abstractmethod
    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        """f0 in Hz per frame, exactly n_frames(wav) long, 0 where unvoiced (not interpolated)."""

    def compute_f0(self, wav: np.ndarray) -> np.ndarray:
        """Raw f0, float32 [T], 0 where unvoiced (after the silence gate, not interpolated)."""
        wav = _as_mono_float(wav)
        raw = np.asarray(self.compute_raw_f0(wav), dtype=np.float64).reshape(-1)
        expected = self.n_frames(wav)
        if raw.shape[0] != expected:
            raise SvcError(
                f"{type(self).__name__} returned {raw.shape[0]} frames for {len(wav)} samples; "
                f"expected {expected} (len // hop_length {self.hop_length})"
            )
        raw = np.where(np.isfinite(raw) & (raw > 0), raw, 0.0)
        if self.silence_gate is not None and expected > 0:
            raw = np.where(self.silence_gate.audible(wav, self.hop_length), raw, 0.0)
        return raw.astype(np.float32)

    def compute_f0_uv(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f0, uv): f0 with unvoiced frames interpolated, uv 1.0 voiced / 0.0 unvoiced; float32 [T]."""
        return interpolate_f0(self.compute_f0(wav))


def _as_mono_float(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2 and 1 in wav.shape:
        wav = wav.reshape(-1)
    if wav.ndim != 1:
        raise ValueError(f"F0 predictors take mono audio [samples]; got an array of shape {wav.shape}")
    return np.ascontiguousarray(wav)


def interpolate_f0(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced frames by linear interpolation between voiced ones; hold the ends.

    Returns (f0_filled, uv). No voiced frame gives zeros; one voiced frame fills every frame with it
    (the original's pm/dio/harvest used frame 0 there, which may be unvoiced; we use the voiced value).
    """
    f0 = np.asarray(f0, dtype=np.float64)
    uv = (f0 > 0).astype(np.float32)
    voiced = np.flatnonzero(f0 > 0)
    if voiced.size == 0:
        return np.zeros_like(f0, dtype=np.float32), uv
    filled = np.interp(np.arange(len(f0)), voiced, f0[voiced])
    return filled.astype(np.float32), uv


def resize_nearest(values: np.ndarray, n_out: int) -> np.ndarray:
    """Nearest-neighbour resize along time, output frame i takes input floor(i * n_in / n_out).

    This is the rule of torch's `interpolate(mode="nearest")`, which the original uses for rmvpe/fcpe.
    """
    values = np.asarray(values)
    if n_out == 0 or values.size == 0:
        return np.zeros(n_out, dtype=values.dtype)
    index = np.minimum((np.arange(n_out) * values.shape[0]) // n_out, values.shape[0] - 1)
    return values[index]


def resize_voiced_linear(f0: np.ndarray, n_out: int) -> np.ndarray:
    """Linear resize of a raw track to n_out frames where only voiced neighbours are blended.

    Output frame i sits at input position i * n_in / n_out. If either neighbour is unvoiced the
    frame is unvoiced, which is the original dio/harvest behaviour (zeros were treated as NaN).
    """
    f0 = np.asarray(f0, dtype=np.float64)
    n_in = f0.shape[0]
    if n_out == 0 or n_in == 0:
        return np.zeros(n_out)
    pos = np.arange(n_out) * n_in / n_out
    left = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    frac = pos - left
    value = f0[left] * (1.0 - frac) + f0[right] * frac
    both = (f0[left] > 0) & ((f0[right] > 0) | (frac == 0))
    return np.where(both, value, 0.0)


def pad_centered(f0: np.ndarray, n_out: int) -> np.ndarray:
    """Zero-pad a track to n_out frames, ceil(missing / 2) on the left (pm's rule); trim if longer."""
    f0 = np.asarray(f0, dtype=np.float64)
    missing = n_out - f0.shape[0]
    if missing < 0:
        start = (-missing) // 2
        return f0[start:start + n_out]
    left = (missing + 1) // 2
    return np.pad(f0, (left, missing - left))


def get_f0_predictor(name: str, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                     threshold: float = 0.05, **kwargs) -> F0Predictor:
    """Build predictor `name`; raises ValueError listing the valid names.

    Networks are cached by their own modules (loaded once per process), so building a predictor per
    file is cheap.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown F0 predictor '{name}'; choose one of {', '.join(PREDICTOR_NAMES)}")
    module_name, class_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    options = {**_PRESETS.get(name, {}), **kwargs}
    return cls(hop_length=hop_length, sampling_rate=sampling_rate, device=device, threshold=threshold, **options)
