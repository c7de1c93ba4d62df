"""modules.audio.resample_sinc: the windowed-sinc kernel RMVPE and FCPE were trained behind, without torchaudio."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.audio import resample_sinc
from tests.support.sinc_reference import windowed_sinc_reference


@pytest.mark.parametrize("orig_sr,new_sr", [(44100, 16000), (48000, 16000), (16000, 44100)])
def test_matches_the_interpolation_formula_on_random_input(orig_sr, new_sr):
    rng = np.random.default_rng(orig_sr + new_sr)
    x = rng.standard_normal(orig_sr // 10 + 7)
    ref = windowed_sinc_reference(x, orig_sr, new_sr, lowpass_filter_width=128, rolloff=0.99)
    exact = resample_sinc(torch.from_numpy(x), orig_sr, new_sr, lowpass_filter_width=128).numpy()
    single = resample_sinc(torch.from_numpy(x.astype(np.float32)), orig_sr, new_sr, lowpass_filter_width=128)
    assert exact.shape == ref.shape == (-(-len(x) * new_sr // orig_sr),)
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-11)  # float64 in: only float64 rounding
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), ref, rtol=0, atol=2e-5)  # float32: ~1000 taps of rounding


def test_narrow_kernel_other_rolloff_and_batch_shape():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 2205))
    out = resample_sinc(torch.from_numpy(x), 22050, 16000, lowpass_filter_width=6, rolloff=0.9)
    assert out.shape == (2, 3, 1600)
    ref = windowed_sinc_reference(x[1, 2], 22050, 16000, lowpass_filter_width=6, rolloff=0.9)
    np.testing.assert_allclose(out[1, 2].numpy(), ref, rtol=0, atol=1e-11)


def test_passband_tone_survives_and_rates_are_checked():
    t = np.arange(44100) / 44100
    tone = torch.from_numpy(np.sin(2 * np.pi * 1000 * t))
    out = resample_sinc(tone, 44100, 16000, lowpass_filter_width=128).numpy()
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    np.testing.assert_allclose(out[2000:-2000], expected[2000:-2000], atol=1e-3)  # edges see the zero padding
    same = torch.zeros(5)
    assert resample_sinc(same, 16000, 16000) is same
    with pytest.raises(ValueError, match="positive integers"):
        resample_sinc(same, 44100.5, 16000)
    with pytest.raises(ValueError, match="window must be 'hann'"):
        resample_sinc(same, 44100, 16000, window="kaiser")
