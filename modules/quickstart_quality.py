"""The quick-start's quality check against a ground truth, which a broken model fails.

The synthetic source phrase can be sung by the target singer with the requested transposition
(`sing_as`), sample-aligned with the source, so a conversion has an ideal output to be measured
against (modules.evaluation.ground_truth_scores). The check passes when the trained model's output
is clearly closer to that ideal (MCD) than both an untrained model's output and the unconverted
source, and its voicing follows the requested contour. A constant buzz that tracks the requested
pitch (what a badly broken model produces) fails: no vowel envelope, voiced through the pauses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modules.evaluation import GroundTruthScores, ground_truth_scores, mel_cepstral_distortion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualityCriteria:
    max_vde: float = 0.10  # share of frames whose voicing differs from the requested contour's
    # "Clearly below": the trained output's MCD to the target must undercut the untrained model's
    # and the source's by at least this much (dB).
    mcd_margin_db: float = 0.5


@dataclass
class QualityReport:
    trained: GroundTruthScores
    untrained: GroundTruthScores | None
    source_to_target_mcd: float  # dB: what doing nothing scores
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary_lines(self) -> list[str]:
        """The quick-start's closing lines: the scores and the verdict."""
        t = self.trained
        lines = [f"  MCD to the target rendering: trained {t.mcd_target:.2f} dB"
                 + (f", untrained {self.untrained.mcd_target:.2f} dB" if self.untrained else "")
                 + f", source itself {self.source_to_target_mcd:.2f} dB (lower is better)"]
        if t.mcd_source is not None:
            lines.append(f"  MCD to the source: trained {t.mcd_source:.2f} dB")
        cents = "-" if t.f0_rmse_cents is None else f"{t.f0_rmse_cents:.0f}"
        lines.append(f"  voicing decision error {t.vde:.1%}; F0 RMSE {cents} cents on {t.f0_frames} frames "
                     f"voiced in both")
        if self.passed:
            lines.append("  quality check: passed")
        else:
            lines += ["  quality check: FAILED"] + [f"    - {reason}" for reason in self.failures]
        return lines


def quality_failures(trained: GroundTruthScores, untrained_mcd: float | None, source_to_target_mcd: float,
                     criteria: QualityCriteria = QualityCriteria()) -> list[str]:
    """Why the trained output does not pass (empty list = passes)."""
    failures = []
    margin = criteria.mcd_margin_db
    if untrained_mcd is not None and not trained.mcd_target <= untrained_mcd - margin:
        failures.append(f"MCD to the target {trained.mcd_target:.2f} dB is not {margin:g} dB below the untrained "
                        f"model's {untrained_mcd:.2f} dB")
    if not trained.mcd_target <= source_to_target_mcd - margin:
        failures.append(f"MCD to the target {trained.mcd_target:.2f} dB is not {margin:g} dB below the source's "
                        f"{source_to_target_mcd:.2f} dB (the conversion does not move toward the target voice)")
    if not trained.vde < criteria.max_vde:
        failures.append(f"voicing decision error {trained.vde:.1%} is not under {criteria.max_vde:.0%}")
    return failures


def assess(trained: tuple[np.ndarray, int], untrained: tuple[np.ndarray, int] | None, source: np.ndarray,
           target: np.ndarray, sr: int, requested_f0: np.ndarray,
           criteria: QualityCriteria = QualityCriteria()) -> QualityReport:
    """Score (audio, sr) outputs of the trained and untrained models against the ideal `target`
    (sample-aligned with `source`, both at `sr`) and the exact requested F0 contour."""
    def scores(output: tuple[np.ndarray, int]) -> GroundTruthScores:
        return ground_truth_scores(output[0], output[1], target, sr, requested_f0, source, sr)

    trained_scores = scores(trained)
    untrained_scores = scores(untrained) if untrained is not None else None
    baseline = mel_cepstral_distortion(target, sr, source, sr)
    failures = quality_failures(trained_scores, untrained_scores.mcd_target if untrained_scores else None,
                                baseline, criteria)
    return QualityReport(trained_scores, untrained_scores, baseline, failures)


def pitch_buzz(f0_samples: np.ndarray, sr: int, semitones: float = 0.0, dbfs: float = -8.5) -> np.ndarray:
    """What a broken model can produce: harmonics exactly at the requested pitch (per-sample F0 in Hz,
    0 = unvoiced) at a steady level, with no vowel envelope and voiced through the pauses."""
    f0 = np.asarray(f0_samples, dtype=np.float64) * 2.0 ** (semitones / 12.0)
    sung = np.flatnonzero(f0 > 0)
    f0 = np.interp(np.arange(len(f0)), sung, f0[sung]) if sung.size else np.full(len(f0), 110.0)
    phase = 2 * np.pi * np.cumsum(f0 / sr)
    buzz = sum(np.sin(k * phase) / k for k in range(1, 30))
    return (buzz / np.sqrt(np.mean(buzz ** 2)) * 10.0 ** (dbfs / 20.0)).astype(np.float32)


def write_untrained_checkpoint(config_path: Path, path: Path) -> Path:
    """A generator freshly initialised from the config with its training seed (the weights training
    starts from), saved as a G checkpoint; kept when it already exists so a rerun resumes."""
    if path.exists():
        return path
    import torch

    from models import SynthesizerTrn
    from modules.checkpoint import save_checkpoint
    from modules.config import load_config

    hps = load_config(config_path)
    torch.manual_seed(hps.train.seed)
    model = SynthesizerTrn.from_hparams(hps)
    save_checkpoint(model, None, hps.train.learning_rate, 0, path)
    return path
