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
    settings = QuickstartSettings(workdir=tmp_path_factory.mktemp("quickstart") / "qs", clips_per_speaker=8,
                                  clip_seconds=3.0, steps=QUICKSTART_TEST_STEPS, batch_size=2)
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
    # The part of the check that a short training already meets (12.9 dB -> 7.7 dB after 120 steps).
    assert quality.trained.mcd_target <= quality.untrained.mcd_target - QualityCriteria().mcd_margin_db, \
        "\n".join(quality.summary_lines())


# Measured with the demo encoder on a 2-core CPU (issue 9 item 6): after 120 steps the trained output is
# still a constant-level buzz at the requested pitch (about -28 dBFS in the pauses as in the notes), so
# MCD to the target is 7.70 dB (untrained 12.89, source itself 6.44) and the voicing error 14.1%; after
# 240 steps 6.76 dB and 13.5%. The check is right to fail it; it stays strict so that a change that
# makes the short training pass shows up here (XPASS) and this mark gets removed.
@pytest.mark.xfail(strict=True, reason="100-240 quick-start steps do not yet beat the source's MCD to the "
                                       "target nor silence the pauses (VDE about 14%)")
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


QUICKSTART_TEST_STEPS = 100
