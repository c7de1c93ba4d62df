"""The quick-start end to end: synthetic singers -> resample -> features -> training -> conversion.

This is the slowest test (a few minutes on CPU): it runs every stage's real command-line script
with a shortened training, then checks the converted audio's pitch against the request and its
closeness to the ground truth (MCD, voicing) against an untrained model and the unconverted source.
"""
import numpy as np
import pytest

from modules.audio import load_audio
from modules.quickstart import TRANSPOSE, QuickstartResult, QuickstartSettings, run_quickstart
from modules.quickstart_quality import QualityCriteria

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[QuickstartSettings, QuickstartResult]:
    settings = QuickstartSettings(workdir=tmp_path_factory.mktemp("quickstart") / "qs")  # the defaults, as run
    return settings, run_quickstart(settings)


def test_quickstart_output_follows_the_requested_pitch(quickstart):
    settings, result = quickstart

    assert result.demo_encoder  # no pretrained ContentVec on a test machine
    heldout, sr_in = load_audio(settings.workdir / "raw" / "alto_heldout.wav")
    converted, sr_out = load_audio(result.converted)
    assert sr_out == 44100
    assert abs(len(converted) / sr_out - len(heldout) / sr_in) < 0.05
    assert np.sqrt(np.mean(converted ** 2)) > 1e-3  # not silence
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.checkpoint.name == f"G_{settings.steps - 1}.pth"  # --max_steps N stops after step N-1
    assert TRANSPOSE == -12
    # The criterion: output F0 within 50 cents of the transposed input on >= 90% of voiced frames.
    assert result.accuracy_50c >= 0.9, f"only {result.accuracy_50c:.0%} of voiced frames within 50 cents"
    # The ground-truth scores are there for both models, side by side with evaluate.py's.
    assert result.untrained_converted.is_file() and result.untrained_converted != result.converted
    table = result.scores_table.splitlines()
    assert "MCD tgt" in table[0] and [line.split()[0] for line in table[2:]] == ["untrained", "trained"]
    quality = result.quality
    assert quality.untrained.mcd_target > quality.source_to_target_mcd  # the untrained model's buzz


# Measured with the demo encoder on a 2-core CPU (issue 9 item 6): the template-sized model after 120 steps
# scored MCD 7.70 dB to the target (source itself 6.44) with a 14% voicing error, buzzing through the pauses.
# The quick-start's own model (modules.quickstart.QUICKSTART_MODEL, source muted on unvoiced frames) scores
# about 4.5 dB and 2% after its default steps.
def test_quickstart_trained_model_passes_the_ground_truth_check(quickstart):
    """Against the ground truth (the phrase sung by the bass at the requested pitch), which a pitch score
    alone cannot replace: a buzz that follows the pitch fails these (tests/test_quality_metrics.py)."""
    _, result = quickstart
    quality, criteria = result.quality, QualityCriteria()
    scores = "\n".join(quality.summary_lines())
    assert quality.trained.mcd_target <= quality.untrained.mcd_target - criteria.mcd_margin_db, scores
    assert quality.trained.mcd_target <= quality.source_to_target_mcd - criteria.mcd_margin_db, scores
    assert quality.trained.vde < criteria.max_vde, scores
    assert quality.passed and quality.failures == [], scores
    assert "quality check: passed" in scores


@pytest.mark.parametrize("vde, code", [(0.02, 0), (0.14, 3)])
def test_quickstart_command_exits_3_when_the_trained_model_fails_the_check(tmp_path, monkeypatch, capsys, vde, code):
    """The command line's verdict follows the check: an undertrained model's run is not reported as a success."""
    import quickstart as script
    from modules.evaluation import GroundTruthScores
    from modules.quickstart_quality import QualityReport, quality_failures

    trained = GroundTruthScores(mcd_target=4.5, mcd_source=7.0, vde=vde, f0_rmse_cents=8.0, f0_frames=500)
    report = QualityReport(trained, None, 6.44, quality_failures(trained, 12.9, 6.44))
    fake = QuickstartResult(tmp_path / "out.wav", tmp_path / "f0.png", tmp_path / "G_9.pth", 0.99, True, 60.0,
                            quality=report)
    monkeypatch.setattr(script, "run_quickstart", lambda settings: fake)
    assert script.main(["--workdir", str(tmp_path), "--steps", "10"]) == code
    captured = capsys.readouterr()
    assert ("quality check: passed" in captured.out) == (code == 0)
    if code:
        assert "voicing decision error 14.0% is not under 10%" in captured.out
        assert "did not pass (after 10 steps)" in captured.err
