"""`pm`: Praat's autocorrelation pitch tracker through parselmouth (the original's inference default)."""
from __future__ import annotations

import logging

import numpy as np
import parselmouth

from modules.pitch.base import F0Predictor, pad_centered

logger = logging.getLogger(__name__)

VOICING_THRESHOLD = 0.6  # the original's setting; Praat's own default is 0.45


class PMF0Predictor(F0Predictor):
    """Praat `To Pitch (ac)` at a time step of one hop, bounded by f0_min..f0_max.

    Praat starts its first frame half a window into the sound, so its track is shorter than T; it
    is zero-padded to T with ceil(missing / 2) frames on the left, as the original does.
    """

    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        n_frames = self.n_frames(wav)
        if n_frames == 0:
            return np.zeros(0)
        sound = parselmouth.Sound(wav.astype(np.float64), sampling_frequency=float(self.sampling_rate))
        try:
            pitch = sound.to_pitch_ac(
                time_step=self.hop_length / self.sampling_rate,
                voicing_threshold=VOICING_THRESHOLD,
                pitch_floor=self.f0_min,
                pitch_ceiling=self.f0_max,
            )
        except parselmouth.PraatError:
            # Praat needs at least one analysis window (3 periods of f0_min); shorter clips carry no pitch.
            if len(wav) < 4 * self.sampling_rate / self.f0_min:
                logger.debug("pm: %d samples is shorter than one Praat window; unvoiced", len(wav))
                return np.zeros(n_frames)
            raise
        f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
        return pad_centered(f0, n_frames)
