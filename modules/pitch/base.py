"""The F0 predictor interface, shared post-processing and the name -> class registry."""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import numpy as np

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
}
PREDICTOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)


class F0Predictor(ABC):
    """Input: mono float audio at `sampling_rate`. Output per frame of `hop_length` samples."""

    def __init__(self, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                 threshold: float = 0.05, f0_min: float = F0_MIN, f0_max: float = F0_MAX) -> None:
        self.hop_length = hop_length
        self.sampling_rate = sampling_rate
        self.device = device or "cpu"
        self.threshold = threshold
        self.f0_min = f0_min
        self.f0_max = f0_max

    def n_frames(self, wav: np.ndarray) -> int:
        return len(wav) // self.hop_length

    @abstractmethod
    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        """f0 in Hz per frame, exactly n_frames(wav) long, 0 where unvoiced (not interpolated)."""

    def compute_f0_uv(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f0, uv): f0 with unvoiced frames interpolated, uv 1.0 voiced / 0.0 unvoiced; float32 [T]."""
        raw = self.compute_raw_f0(np.asarray(wav, dtype=np.float32))
        return interpolate_f0(raw)

    def compute_f0(self, wav: np.ndarray) -> np.ndarray:
        """Raw f0 (0 where unvoiced)."""
        return self.compute_raw_f0(np.asarray(wav, dtype=np.float32))


def interpolate_f0(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced frames by linear interpolation between voiced ones; hold the ends.

    Returns (f0_filled, uv). No voiced frame gives zeros; one voiced frame fills every frame with it.
    """
    f0 = np.asarray(f0, dtype=np.float64)
    uv = (f0 > 0).astype(np.float32)
    voiced = np.flatnonzero(f0 > 0)
    if voiced.size == 0:
        return np.zeros_like(f0, dtype=np.float32), uv
    filled = np.interp(np.arange(len(f0)), voiced, f0[voiced])
    return filled.astype(np.float32), uv


def get_f0_predictor(name: str, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                     threshold: float = 0.05, **kwargs) -> F0Predictor:
    """Build (or fetch the cached) predictor `name`; raises ValueError listing the valid names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown F0 predictor '{name}'; choose one of {', '.join(PREDICTOR_NAMES)}")
    module_name, class_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(hop_length=hop_length, sampling_rate=sampling_rate, device=device, threshold=threshold, **kwargs)
