"""`dio` and `harvest`: the WORLD vocoder's F0 estimators (pyworld), refined with StoneMask."""
from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources; nothing for a user to act on
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import pyworld

from modules.pitch.base import F0Predictor, resize_voiced_linear


class _WorldF0Predictor(F0Predictor):
    """Shared WORLD pipeline: estimate at a frame period of one hop, refine, resize to T frames.

    WORLD returns len/hop + 1 frames (its frame k sits at k * hop); they are mapped onto T frames by
    linear interpolation between voiced neighbours, as the original does. WORLD voices near-silent
    frames by itself, so the base class's silence gate matters most here.
    """

    round_to_tenth_hz = False

    def _estimate(self, x: np.ndarray, frame_period_ms: float) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        n_frames = self.n_frames(wav)
        if n_frames == 0:
            return np.zeros(0)
        x = np.ascontiguousarray(wav, dtype=np.float64)
        f0, times = self._estimate(x, 1000.0 * self.hop_length / self.sampling_rate)
        f0 = pyworld.stonemask(x, f0, times, self.sampling_rate)
        if self.round_to_tenth_hz:
            f0 = np.round(f0, 1)
        return resize_voiced_linear(f0, n_frames)


class DioF0Predictor(_WorldF0Predictor):
    """WORLD DIO: fast, coarse; the original rounds its output to 0.1 Hz."""

    round_to_tenth_hz = True

    def _estimate(self, x: np.ndarray, frame_period_ms: float) -> tuple[np.ndarray, np.ndarray]:
        return pyworld.dio(x, fs=self.sampling_rate, f0_floor=self.f0_min, f0_ceil=self.f0_max,
                           frame_period=frame_period_ms)


class HarvestF0Predictor(_WorldF0Predictor):
    """WORLD Harvest: slower and more robust than DIO, especially on low voices."""

    def _estimate(self, x: np.ndarray, frame_period_ms: float) -> tuple[np.ndarray, np.ndarray]:
        return pyworld.harvest(x, fs=self.sampling_rate, f0_floor=self.f0_min, f0_ceil=self.f0_max,
                               frame_period=frame_period_ms)
