"""Scores against a ground truth (MCD, voicing error, F0 RMSE) and the quick-start's quality check, which
a broken output (a constant buzz that follows the requested pitch) must fail. Fast: no training."""
from __future__ import annotations

import numpy as np
import pytest

from modules.errors import AudioError, JobInterrupted
from modules.evaluation import GroundTruthScores, ground_truth_scores, mel_cepstral_distortion
from modules.quickstart_quality import QualityCriteria, assess, pitch_buzz, quality_failures
from modules.synthetic_voices import SyntheticVoice, sing_as, synth_singing

SR = 44100
TRANSPOSE = -12
SEED = 5


@pytest.fixture(scope="module")
def alto() -> SyntheticVoice:
    return synth_singing("alto", 3.0, seed=SEED)


@pytest.fixture(scope="module")
def bass(alto) -> SyntheticVoice:
    return sing_as(alto, "bass", TRANSPOSE, seed=SEED)


@pytest.fixture(scope="module")
def requested(alto) -> np.ndarray:
    return alto.f0 * 2.0 ** (TRANSPOSE / 12.0)


class FixedF0:
    """An evaluator stand-in whose measured F0 is given, to check the arithmetic exactly."""

    def __init__(self, f0: np.ndarray) -> None:
        self.f0 = f0

    def measure_f0(self, audio: np.ndarray, sr: int) -> np.ndarray:
        return self.f0


def test_sing_as_is_the_same_phrase_transposed_and_sample_aligned(alto, bass):
    assert len(bass.audio) == len(alto.audio)
    np.testing.assert_array_equal(bass.voiced, alto.voiced)
    np.testing.assert_allclose(bass.f0, alto.f0 * 0.5, rtol=1e-6)
    assert not np.allclose(bass.audio, alto.audio)


def test_mcd_is_zero_for_identical_clips_gain_free_and_large_between_singers(alto, bass):
    assert mel_cepstral_distortion(bass.audio, SR, bass.audio, SR) == 0.0
    assert mel_cepstral_distortion(bass.audio, SR, 0.25 * bass.audio, SR) < 0.05  # c0 (loudness) is left out
    between = mel_cepstral_distortion(bass.audio, SR, alto.audio, SR)
    assert 3.0 < between < 12.0
    # A different sample rate is resampled first: the same clip at 22.05 kHz is close, not identical.
    from modules.audio import resample

    assert mel_cepstral_distortion(bass.audio, SR, resample(bass.audio, SR, 22050), 22050) < 0.25 * between


def test_mcd_of_a_clip_too_short_is_a_one_line_error():
    with pytest.raises(AudioError, match="too short"):
        mel_cepstral_distortion(np.zeros(100, np.float32), SR, np.zeros(100, np.float32), SR)


def test_known_contour_gives_the_exact_cents_and_voicing_error(bass, requested):
    measured = requested.astype(np.float64) * 2.0 ** (30.0 / 1200.0)  # 30 cents sharp on every voiced frame
    voiced = np.flatnonzero(requested > 0)
    measured[voiced[:10]] = 0.0  # 10 voiced frames missed
    scores = ground_truth_scores(bass.audio, SR, bass.audio, SR, requested, evaluator=FixedF0(measured))
    assert scores.f0_rmse_cents == pytest.approx(30.0, abs=1e-6)
    assert scores.f0_frames == len(voiced) - 10
    assert scores.vde == pytest.approx(10 / len(requested))
    assert scores.mcd_target == 0.0 and scores.mcd_source is None


def test_silent_output_has_voicing_error_equal_to_the_voiced_share(bass, requested):
    scores = ground_truth_scores(np.zeros_like(bass.audio), SR, bass.audio, SR, requested)
    assert scores.vde == pytest.approx(np.mean(requested > 0))
    assert scores.f0_rmse_cents is None and scores.f0_frames == 0


def test_target_rendering_passes_and_a_pitch_following_buzz_fails(alto, bass, requested):
    """The broken-model case from the issue: the buzz's pitch is right, but it is voiced in the pauses
    and has no vowel envelope, so voicing error and MCD both flag it."""
    buzz = pitch_buzz(alto.f0_samples, SR, TRANSPOSE)
    ideal = ground_truth_scores(bass.audio, SR, bass.audio, SR, requested, alto.audio, SR)
    broken = ground_truth_scores(buzz, SR, bass.audio, SR, requested, alto.audio, SR)
    assert ideal.vde < 0.05 and ideal.f0_rmse_cents < 30  # pm on the ideal output itself
    assert broken.f0_rmse_cents < 50  # a pitch score alone would pass it
    unvoiced_share = float(np.mean(requested == 0))
    assert broken.vde > ideal.vde + 0.5 * unvoiced_share
    assert broken.vde > 0.10
    source_mcd = mel_cepstral_distortion(bass.audio, SR, alto.audio, SR)
    assert broken.mcd_target > source_mcd > ideal.mcd_target

    assert quality_failures(ideal, untrained_mcd=broken.mcd_target, source_to_target_mcd=source_mcd) == []
    failures = quality_failures(broken, untrained_mcd=ideal.mcd_target, source_to_target_mcd=source_mcd)
    assert len(failures) == 3
    assert "untrained" in failures[0] and "source" in failures[1] and "voicing decision error" in failures[2]


def test_assess_reports_the_broken_output_as_failed_in_its_closing_lines(alto, bass, requested):
    buzz = pitch_buzz(alto.f0_samples, SR, TRANSPOSE)
    report = assess((buzz, SR), (alto.audio, SR), alto.audio, bass.audio, SR, requested)
    assert not report.passed
    assert report.untrained.mcd_target == pytest.approx(report.source_to_target_mcd)  # "untrained" = the source
    lines = report.summary_lines()
    assert "  quality check: FAILED" in lines and any("voicing decision error" in line for line in lines)
    assert f"trained {report.trained.mcd_target:.2f} dB" in lines[0]


def test_quality_margin_and_voicing_threshold_are_strict():
    near = GroundTruthScores(mcd_target=5.6, mcd_source=6.0, vde=0.10, f0_rmse_cents=20.0, f0_frames=100)
    failures = quality_failures(near, untrained_mcd=6.0, source_to_target_mcd=7.0,
                                criteria=QualityCriteria(max_vde=0.10, mcd_margin_db=0.5))
    assert len(failures) == 2 and "untrained" in failures[0] and "10.0% is not under 10%" in failures[1]


def test_interrupted_training_says_how_to_resume(tmp_path, monkeypatch):
    import modules.quickstart as qs

    def interrupted(*args, **kwargs):
        raise JobInterrupted("training stopped by signal 15 after saving G_40.pth", 143)

    class Report:
        failed: list = []

    config = tmp_path / "qs" / "configs" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text("{}")  # present: the config stage is skipped
    monkeypatch.setattr(qs, "_write_singers", lambda *a: None)
    monkeypatch.setattr(qs, "_pick_encoder", lambda folder: ("vec256l9", folder, True))
    monkeypatch.setattr(qs, "plan_resample", lambda *a: ([], []))
    monkeypatch.setattr(qs, "run_resample", lambda *a, **k: [])
    monkeypatch.setattr(qs.PreprocessSettings, "from_configs", classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr(qs, "find_clips", lambda *a: [])
    monkeypatch.setattr(qs, "run_preprocess", lambda *a, **k: Report())
    monkeypatch.setattr(qs, "run_training", interrupted)
    with pytest.raises(JobInterrupted) as caught:
        qs.run_quickstart(qs.QuickstartSettings(workdir=tmp_path / "qs", f0_predictor="pm"))
    assert caught.value.exit_code == 143
    assert "G_40.pth" in str(caught.value) and "again with the same --workdir to resume" in str(caught.value)


def test_untrained_checkpoint_is_the_seeded_initial_generator_and_its_output_fails(tmp_path, alto, bass, requested):
    import torch

    from modules.checkpoint import model_state, safe_load
    from modules.inference import ConvertOptions, SvcEngine
    from modules.quickstart_quality import write_untrained_checkpoint
    from tests.support.tiny_models import write_tiny_project

    project = write_tiny_project(tmp_path / "proj")
    first = write_untrained_checkpoint(project.config, tmp_path / "a" / "G_0.pth")
    second = write_untrained_checkpoint(project.config, tmp_path / "b" / "G_0.pth")
    a, b = (model_state(safe_load(p), p) for p in (first, second))
    assert safe_load(first)["iteration"] == 0 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same weights every time
    mtime = first.stat().st_mtime_ns
    assert write_untrained_checkpoint(project.config, first) == first and first.stat().st_mtime_ns == mtime

    engine = SvcEngine.load(first, project.config, device="cpu", pretrain_dir=project.root / "pretrain")
    output = engine.convert(alto.audio, SR, ConvertOptions(speaker="bass", transpose=TRANSPOSE, f0_predictor="pm"))
    report = assess((output, engine.sr), None, alto.audio, bass.audio, SR, requested)
    assert not report.passed and report.untrained is None
    assert any("source" in reason for reason in report.failures)
