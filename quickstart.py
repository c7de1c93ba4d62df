"""Quick-start: run the whole pipeline on two built-in synthetic singers and convert a held-out phrase.

    python quickstart.py

Works on CPU in a few minutes. It ends with a quality check against a ground truth and exits with
status 3 when the trained model fails it (for example with too few --steps). Everything is written under
quickstart/ (your dataset_raw/, configs/ and logs/ are not touched). Real pretrained files in pretrain/ are
used when present; otherwise a demo encoder with random weights stands in and says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modules.cli import run_cli
from modules.quickstart import QuickstartSettings, run_quickstart


def build_parser() -> argparse.ArgumentParser:
    defaults = QuickstartSettings()
    p = argparse.ArgumentParser(prog="quickstart.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=defaults.workdir, help="work folder (default: quickstart/)")
    p.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default: {defaults.steps})")
    p.add_argument("--clips", type=int, default=defaults.clips_per_speaker,
                   help=f"synthetic clips per singer (default: {defaults.clips_per_speaker})")
    p.add_argument("--clip_seconds", type=float, default=defaults.clip_seconds,
                   help=f"length of each synthetic clip in seconds (default: {defaults.clip_seconds})")
    p.add_argument("--batch_size", type=int, default=defaults.batch_size,
                   help=f"training batch size (default: {defaults.batch_size})")
    p.add_argument("-d", "--device", default=defaults.device, help="cpu or cuda (default: cpu)")
    p.add_argument("--f0_predictor", default=None,
                   help="F0 predictor for features and conversion (default: rmvpe if pretrain/rmvpe.pt exists, "
                        "else fcpe)")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first and start over")
    return p


QUALITY_FAILED_EXIT = 3  # the pipeline ran, but the trained model failed its ground-truth check


def run(args: argparse.Namespace) -> int:
    settings = QuickstartSettings(workdir=args.workdir, clips_per_speaker=args.clips, clip_seconds=args.clip_seconds,
                                  steps=args.steps, batch_size=args.batch_size, device=args.device,
                                  f0_predictor=args.f0_predictor, fresh=args.fresh)
    result = run_quickstart(settings)
    print(f"\nQuick-start finished in {result.seconds / 60:.1f} min.")
    if result.demo_encoder:
        print("NOTE: no pretrained ContentVec was found, so a demo encoder with random weights was used;")
        print("      the output shows the pipeline works, not the quality of a real model.")
    print(f"  model:     {result.checkpoint}")
    print(f"  converted: {result.converted}")
    print(f"  F0 plot:   {result.plot}")
    print(f"  output F0 within 50 cents of the request on {result.accuracy_50c:.0%} of voiced frames")
    if result.scores_table:
        print("\nQuality scores (python evaluate.py; see README, 'Measuring quality'):\n" + result.scores_table)
    if result.quality is not None:
        print("\nAgainst the ground truth (the phrase sung by the target singer at the requested pitch):")
        print("\n".join(result.quality.summary_lines()))
        if not result.quality.passed:
            print(f"The trained model did not pass (after {args.steps} steps); train longer with --steps, "
                  f"or look at the F0 plot and the scores above.", file=sys.stderr)
            return QUALITY_FAILED_EXIT
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
