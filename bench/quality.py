"""The quick-start's ground-truth quality scores, with the reference points that calibrate them.

    python -m bench.quality [--workdir quickstart]

Rows: the ideal output (the held-out phrase sung by the target singer at the requested pitch), the
unconverted source, a pitch-following buzz (what a broken model produces), and, when the work folder
holds a finished quick-start, its untrained and trained outputs. Columns: MCD (dB) to the target
rendering and to the source, voicing decision error and F0 RMSE (cents) against the exact requested
contour, and whether the row would pass the quick-start's check. Last, the seconds the scoring takes
per second of audio.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from modules.audio import load_audio
from modules.evaluation import ground_truth_scores, mel_cepstral_distortion
from modules.quickstart import TARGET_SPEAKER, TRANSPOSE, QuickstartSettings, heldout_ground_truth
from modules.quickstart_quality import pitch_buzz, quality_failures


def _finished_outputs(workdir: Path, heldout_stem: str) -> dict[str, Path]:
    found = {}
    for label, folder in (("untrained", workdir / "results" / "untrained"), ("trained", workdir / "results")):
        matches = sorted(folder.glob(f"{heldout_stem}*.wav")) if folder.is_dir() else []
        if matches:
            found[label] = matches[0]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=QuickstartSettings().workdir,
                        help="a quick-start work folder whose outputs to score (default: quickstart/)")
    args = parser.parse_args(argv)
    settings = QuickstartSettings(workdir=args.workdir)
    voice, target, requested = heldout_ground_truth(settings)
    sr = voice.sr
    outputs: dict[str, tuple[np.ndarray, int]] = {
        f"ideal ({TARGET_SPEAKER} sings it)": (target.audio, sr),
        "source, unconverted": (voice.audio, sr),
        "pitch buzz (broken)": (pitch_buzz(voice.f0_samples, sr, TRANSPOSE), sr),
    }
    for label, path in _finished_outputs(args.workdir, "alto_heldout").items():
        outputs[label] = load_audio(path)
    baseline = mel_cepstral_distortion(target.audio, sr, voice.audio, sr)
    started = time.perf_counter()
    scored = {label: ground_truth_scores(audio, out_sr, target.audio, sr, requested, voice.audio, sr)
              for label, (audio, out_sr) in outputs.items()}
    per_second = (time.perf_counter() - started) / (len(outputs) * len(voice.audio) / sr)
    untrained = scored["untrained"].mcd_target if "untrained" in scored else None

    print(f"held-out phrase {len(voice.audio) / sr:.1f} s, transpose {TRANSPOSE:+d}; source-to-target MCD "
          f"{baseline:.2f} dB")
    print(f"{'row':<26}  {'MCD tgt dB':>10}  {'MCD src dB':>10}  {'VDE':>6}  {'cents':>6}  check")
    for label, s in scored.items():
        cents = "-" if s.f0_rmse_cents is None else f"{s.f0_rmse_cents:.0f}"
        failures = quality_failures(s, untrained if label != "untrained" else None, baseline)
        verdict = "pass" if not failures else f"fail ({len(failures)})"
        print(f"{label:<26}  {s.mcd_target:10.2f}  {s.mcd_source:10.2f}  {s.vde:6.3f}  {cents:>6}  {verdict}")
    if "trained" not in scored:
        print(f"(no finished quick-start under {args.workdir}: run python quickstart.py --workdir {args.workdir})")
    print(f"scoring cost: {per_second:.3f} s per second of audio (MCD x2 + pm F0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
