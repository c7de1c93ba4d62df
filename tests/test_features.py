import numpy as np
import pytest
import torch

from modules.frame_features import f0_to_coarse, mel_spectrogram, nsf_mel, repeat_expand_2d, spectrogram, volume


@pytest.mark.parametrize("length", [512 * 40, 512 * 40 + 1, 512 * 40 + 511, 3000])
def test_every_feature_has_len_over_hop_frames(length):
    y = torch.randn(1, length) * 0.1
    t = length // 512
    assert spectrogram(y).shape == (1, 1025, t)
    assert mel_spectrogram(y).shape == (1, 80, t)
    assert nsf_mel(y).shape == (1, 128, t)
    assert nsf_mel(y, keyshift=3.0).shape == (1, 128, t)
    assert nsf_mel(y, keyshift=-4.5).shape == (1, 128, t)
    assert volume(y).shape == (1, t)


def test_spectrogram_peak_at_tone_frequency():
    sr, f = 44100, 1000.0
    y = torch.sin(2 * torch.pi * f * torch.arange(sr) / sr).unsqueeze(0)
    spec = spectrogram(y)[0]
    peak_bin = spec[:, 10:-10].mean(dim=1).argmax().item()
    assert abs(peak_bin * sr / 2048 - f) < sr / 2048


def test_volume_of_constant_amplitude_sine():
    sr = 44100
    y = 0.5 * np.sin(2 * np.pi * 441.0 * np.arange(sr) / sr).astype(np.float32)
    vol = volume(y).numpy()
    assert np.allclose(vol[2:-2], 0.5 / np.sqrt(2), rtol=0.02)


def test_f0_to_coarse_bins_and_quirks():
    f0 = torch.tensor([0.0, 30.0, 50.0, 1100.0, 1200.0, 440.0])
    coarse = f0_to_coarse(f0).tolist()
    assert coarse[0] == 1 and coarse[1] == 1 and coarse[2] == 1
    assert coarse[3] == 255
    assert coarse[4] == 0  # the original maps f0 above ~1100 Hz to bin 0
    assert 1 < coarse[5] < 255


def test_repeat_expand_modes():
    c = torch.arange(4.0).unsqueeze(0)  # [1, 4]
    assert repeat_expand_2d(c, 8, "nearest").tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert repeat_expand_2d(c, 8, "left").tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert repeat_expand_2d(c, 6, "left").tolist() == [[0, 0, 1, 2, 2, 3]]


def test_nsf_mel_keyshift_zero_matches_plain():
    y = torch.randn(1, 512 * 20) * 0.1
    assert torch.allclose(nsf_mel(y), nsf_mel(y, keyshift=0.0))
    shifted = nsf_mel(y, keyshift=2.0)
    assert not torch.allclose(nsf_mel(y), shifted)
