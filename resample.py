"""Prepare raw clips for training: dataset_raw/<speaker>/* -> dataset/44k/<speaker>/*.wav.

Mono, leading/trailing silence trimmed, resampled to 44.1 kHz, loudness-normalised, 16-bit PCM.
The logic lives in modules.resample; this is the command line.
"""
from __future__ import annotations

import argparse
import sys

from modules.cli import run_cli
from modules.resample import ResampleOptions, default_num_processes, plan_resample, run_resample, summarise_resample
from modules.slicer import ClipParams


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resample.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sr2", type=int, default=44100, help="target sampling rate in Hz")
    p.add_argument("--in_dir", type=str, default="./dataset_raw", help="source root; each sub-folder is one speaker")
    p.add_argument("--out_dir2", type=str, default="./dataset/44k", help="destination root")
    p.add_argument("--skip_loudnorm", action="store_true",
                   help="no loudness normalisation (same as --loudnorm none; peaks above full scale are still "
                        "scaled to 0.98 instead of clipping)")
    p.add_argument("--loudnorm", choices=("lufs", "peak", "none"), default="lufs",
                   help="lufs: ITU-R BS.1770 integrated loudness to --target_lufs, peak held under "
                        "--peak_ceiling_db; peak: the original's peak normalisation to 1.0; none: leave the level")
    p.add_argument("--target_lufs", type=float, default=-23.0, help="loudness target for --loudnorm lufs (LUFS)")
    p.add_argument("--peak_ceiling_db", type=float, default=-1.0,
                   help="highest sample peak allowed by --loudnorm lufs (dBFS); the gain is lowered to respect it")
    p.add_argument("--num_processes", type=int, default=default_num_processes(),
                   help="worker processes; the default follows the original: 1 with 4 CPUs or fewer, else CPUs-2, at most 30")
    p.add_argument("--slice", action="store_true",
                   help="cut recordings longer than --slice_max seconds into clips at silences")
    p.add_argument("--slice_min", type=float, default=5.0, help="shortest clip --slice aims for (seconds)")
    p.add_argument("--slice_max", type=float, default=15.0, help="longest clip --slice produces (seconds)")
    p.add_argument("--slice_db", type=float, default=-40.0,
                   help="silence threshold for --slice, in dB relative to the recording's peak")
    p.add_argument("--top_db", type=float, default=40.0,
                   help="trim leading/trailing audio more than this many dB below the peak")
    p.add_argument("--keep_clipped", action="store_true",
                   help="write files with clipped (flat-topped) samples instead of skipping them")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> None:
    options = ResampleOptions(
        sr=args.sr2,
        loudnorm="none" if args.skip_loudnorm else args.loudnorm,
        target_lufs=args.target_lufs,
        peak_ceiling_db=args.peak_ceiling_db,
        top_db=args.top_db,
        keep_clipped=args.keep_clipped,
        slice=args.slice,
        clip=ClipParams(min_seconds=args.slice_min, max_seconds=args.slice_max, threshold_db=args.slice_db),
    )
    options.check()
    jobs, refused = plan_resample(args.in_dir, args.out_dir2)
    results = run_resample(jobs, options, max(1, args.num_processes), progress=not args.no_progress)
    print(summarise_resample(refused + results))


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
