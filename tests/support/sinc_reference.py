"""Band-limited resampling evaluated straight from the interpolation formula, for checking resamplers.

y[j] = sum_k x[k] * h(j / new_sr - k / orig_sr), with the Hann-windowed sinc
h(t) = (c / orig_sr) * sinc(c * t) * cos^2(pi * c * t / (2 * width)) for |c * t| <= width, else 0,
c = rolloff * min(orig_sr, new_sr). Everything in float64, one output sample at a time (vectorised
over a band of inputs wide enough to hold the whole support), no polyphase bank and no convolution,
so it shares no code path with modules.audio.resample_sinc.
"""
from __future__ import annotations

import math

import numpy as np


def windowed_sinc_reference(x: np.ndarray, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6,
                            rolloff: float = 0.99) -> np.ndarray:
    """[samples] -> [ceil(samples * new_sr / orig_sr)] in float64."""
    x = np.asarray(x, dtype=np.float64)
    cutoff = rolloff * min(orig_sr, new_sr)
    support = lowpass_filter_width / cutoff  # seconds either side where the window is non-zero
    n_out = math.ceil(len(x) * new_sr / orig_sr)
    reach = math.ceil(support * orig_sr) + 2
    offsets = np.arange(-reach, reach + 1)
    out = np.empty(n_out)
    for start in range(0, n_out, 2048):  # bounded memory: a band of inputs for 2048 outputs at a time
        times = np.arange(start, min(start + 2048, n_out)) / new_sr
        k = np.floor(times * orig_sr).astype(np.int64)[:, None] + offsets[None, :]
        inside = (k >= 0) & (k < len(x))
        ct = cutoff * (times[:, None] - k / orig_sr)
        h = (cutoff / orig_sr) * np.sinc(ct) * np.cos(np.pi * ct / (2 * lowpass_filter_width)) ** 2
        h = np.where(inside & (np.abs(ct) <= lowpass_filter_width), h, 0.0)
        out[start:start + len(times)] = (h * x[np.clip(k, 0, len(x) - 1)]).sum(axis=1)
    return out
