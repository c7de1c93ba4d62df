"""The quick-start end to end: synthetic singers -> resample -> features -> training -> conversion.

This is the slowest test (a few minutes on CPU): it runs every stage's real command-line script
with a shortened training, then checks the converted audio's pitch against the request.
"""
import numpy as np
import pytest

from modules.audio import load_audio
from modules.quickstart import TRANSPOSE, QuickstartSettings, run_quickstart

pytestmark = pytest.mark.slow


def test_quickstart_output_follows_the_requested_pitch(tmp_path):
    settings = QuickstartSettings(workdir=tmp_path / "qs", clips_per_speaker=8, clip_seconds=3.0,
                                  steps=QUICKSTART_TEST_STEPS, batch_size=2)
    result = run_quickstart(settings)

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


QUICKSTART_TEST_STEPS = 100
