"""pm / dio / harvest on synthetic singing with an exact F0, plus the shared post-processing rules."""
from __future__ import annotations

import numpy as np
import pytest

from modules.errors import SvcError
from modules.pitch import PREDICTOR_NAMES, get_f0_predictor, interpolate_f0
from modules.pitch.base import F0Predictor, SilenceGate, pad_centered, resize_nearest, resize_voiced_linear
from modules.synthetic_voices import Note, balanced_singing, pause_frames, synth_notes

SR, HOP = 44100, 512
SIGNAL_PREDICTORS = ("pm", "dio", "harvest")


@pytest.fixture(scope="module")
def voices():
    """A bass and an alto clip (3 s each) with pauses and consonants, notes evened out in loudness."""
    return {name: balanced_singing(name, 3.0, seed=seed) for name, seed in (("bass", 3), ("alto", 5))}


def cents_error(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return 1200.0 * np.abs(np.log2(np.maximum(estimate, 1e-3) / reference))


@pytest.mark.parametrize("name", SIGNAL_PREDICTORS)
def test_accuracy_on_synthetic_singing(name, voices):
    predictor = get_f0_predictor(name, hop_length=HOP, sampling_rate=SR)
    for voice in voices.values():
        f0, uv = predictor.compute_f0_uv(voice.audio)
        assert f0.dtype == np.float32 and uv.dtype == np.float32
        assert f0.shape == uv.shape == (voice.n_frames,)
        scored = voice.voiced & voice.stable
        assert scored.sum() > 100
        within = cents_error(f0[scored], voice.f0[scored]) < 50.0
        assert within.mean() >= 0.9, f"{name}: only {within.mean():.2f} of voiced frames within 50 cents"
        assert uv[scored].mean() >= 0.9, f"{name}: voicing recall {uv[scored].mean():.2f}"
        pauses = pause_frames(voice)
        assert pauses.sum() >= 10 and not uv[pauses].any(), f"{name}: voiced frames in a pause"
        unvoiced = ~voice.voiced & voice.stable  # pauses and consonant noise bursts
        assert uv[unvoiced].mean() <= 0.2, f"{name}: {uv[unvoiced].mean():.2f} of unvoiced frames voiced"
        assert np.all(f0 > 0)  # interpolated: never 0 inside a clip that has voice


@pytest.mark.parametrize("name", SIGNAL_PREDICTORS)
def test_silence_and_noise_floor_are_unvoiced(name):
    predictor = get_f0_predictor(name)
    rng = np.random.default_rng(0)
    for wav in (np.zeros(SR, dtype=np.float32), (1e-5 * rng.standard_normal(SR)).astype(np.float32)):
        f0, uv = predictor.compute_f0_uv(wav)
        assert uv.shape == (SR // HOP,)
        assert not uv.any()
        assert not f0.any()  # no voiced frame -> zeros


@pytest.mark.parametrize("name", SIGNAL_PREDICTORS)
@pytest.mark.parametrize("length", [SR // 2 + 511, 3 * HOP - 1, 100])
def test_frame_count_is_len_floordiv_hop(name, length):
    voice = synth_notes([Note(57, 1.0)], "alto", seed=1)
    f0, uv = get_f0_predictor(name).compute_f0_uv(voice.audio[:length])
    assert f0.shape == uv.shape == (length // HOP,)


def test_quiet_steady_note_stays_voiced_but_gate_can_be_disabled():
    """The silence gate is relative to the clip: a soft clip keeps its pitch; None turns the gate off."""
    voice = synth_notes([Note(0, 0.2), Note(52, 1.0), Note(0, 0.3)], "bass", seed=4, level=0.003)
    f0, uv = get_f0_predictor("dio").compute_f0_uv(voice.audio)
    scored = voice.voiced & voice.stable
    assert uv[scored].mean() > 0.9
    assert np.median(cents_error(f0[scored], voice.f0[scored])) < 20
    ungated = get_f0_predictor("dio", silence_gate=None).compute_f0(voice.audio)
    gated = get_f0_predictor("dio").compute_f0(voice.audio)
    assert (ungated > 0).sum() >= (gated > 0).sum()


def test_silence_gate_levels():
    gate = SilenceGate(relative_db=-40.0, floor_db=-70.0, widen=0)
    loud = np.sin(2 * np.pi * 220 * np.arange(SR) / SR).astype(np.float32) * 0.5
    wav = np.concatenate([loud, loud * 10 ** (-50 / 20), loud * 10 ** (-30 / 20)])
    mask = gate.audible(wav, HOP)
    n = SR // HOP
    assert mask.shape == (len(wav) // HOP,)
    assert mask[2:n - 2].all()
    assert not mask[n + 2:2 * n - 2].any()  # 50 dB down: below the relative threshold
    assert mask[2 * n + 2:-2].all()  # 30 dB down: kept
    assert not SilenceGate().audible(np.full(SR, 1e-4, dtype=np.float32), HOP).any()  # -80 dBFS floor


def test_interpolation_rules():
    f0, uv = interpolate_f0(np.zeros(5))
    assert not f0.any() and not uv.any()
    f0, uv = interpolate_f0(np.array([0, 0, 220.0, 0, 0]))
    np.testing.assert_allclose(f0, [220.0] * 5)  # one voiced frame -> constant (not frame 0)
    np.testing.assert_array_equal(uv, [0, 0, 1, 0, 0])
    f0, uv = interpolate_f0(np.array([0, 100.0, 0, 0, 400.0, 0]))
    np.testing.assert_allclose(f0, [100, 100, 200, 300, 400, 400])
    assert f0.dtype == np.float32 and uv.dtype == np.float32


def test_resize_helpers():
    np.testing.assert_array_equal(resize_nearest(np.array([1, 2, 3, 4]), 6), [1, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(resize_nearest(np.arange(10), 4), [0, 2, 5, 7])
    out = resize_voiced_linear(np.array([100.0, 200.0, 0.0, 300.0]), 8)
    np.testing.assert_allclose(out, [100, 150, 200, 0, 0, 0, 300, 300])
    np.testing.assert_array_equal(pad_centered(np.ones(3), 6), [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(pad_centered(np.arange(6.0), 4), [1, 2, 3, 4])


def test_registry_and_contract_errors():
    assert set(PREDICTOR_NAMES) >= {"pm", "dio", "harvest", "crepe", "rmvpe", "fcpe"}
    with pytest.raises(ValueError, match="unknown F0 predictor 'yin'.*pm"):
        get_f0_predictor("yin")

    class Broken(F0Predictor):
        def compute_raw_f0(self, wav):
            return np.full(self.n_frames(wav) + 1, np.nan)

    with pytest.raises(SvcError, match="returned 4 frames for 1536 samples; expected 3"):
        Broken().compute_f0_uv(np.zeros(1536))
    with pytest.raises(ValueError, match="mono"):
        get_f0_predictor("pm").compute_f0(np.zeros((2, 4096)))
