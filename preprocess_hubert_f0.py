"""Extract units, F0, spectrogram and volume (plus diffusion mels with --use_diff) for every clip.

    python preprocess_hubert_f0.py --f0_predictor rmvpe --num_processes 2

Reads dataset/44k/<speaker>/*.wav and writes the feature files next to each clip, then a record of
what made them (x.wav.features.json). Clips whose record matches the current settings are skipped, so
an interrupted run can simply be started again; clips made with other settings are recomputed.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from modules.cli import run_cli
from modules.errors import DatasetError
from modules.preprocess import PreprocessSettings, find_clips, run_preprocess

logger = logging.getLogger("preprocess_hubert_f0")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="preprocess_hubert_f0.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--device", type=str, default=None,
                   help="torch device for the encoder and F0 network, e.g. cpu or cuda:0; default: every GPU "
                        "(process r uses cuda:r%%n_gpus), else cpu")
    p.add_argument("--in_dir", type=str, default="dataset/44k",
                   help="dataset root; clips are <in_dir>/<speaker>/*.wav (default: dataset/44k)")
    p.add_argument("--use_diff", action="store_true",
                   help="also write the shallow-diffusion features (mel, aug_mel, aug_vol, vol)")
    p.add_argument("--f0_predictor", type=str, default="rmvpe",
                   help="F0 predictor: crepe, crepe-tiny, pm, dio, harvest, rmvpe or fcpe (default: rmvpe)")
    p.add_argument("--num_processes", type=int, default=1,
                   help="worker processes; 0 means one per CPU core (default: 1)")
    p.add_argument("--config", type=str, default="configs/config.json",
                   help="so-vits config giving the sampling rate, hop, speech encoder and vol_embedding "
                        "(default: configs/config.json)")
    p.add_argument("--diffusion_config", type=str, default="configs/diffusion.yaml",
                   help="diffusion config naming the vocoder whose mel settings --use_diff uses "
                        "(default: configs/diffusion.yaml)")
    p.add_argument("--force", action="store_true",
                   help="recompute every clip; without it, only clips whose files are missing or were made with "
                        "other settings (recorded in x.wav.features.json) are computed")
    p.add_argument("--pretrain_dir", type=str, default=None,
                   help="folder holding the speech encoder's weights (default: the project's pretrain/)")
    return p


def run(args: argparse.Namespace) -> int:
    settings = PreprocessSettings.from_configs(args.config, args.diffusion_config, args.f0_predictor, args.use_diff,
                                               force=args.force)
    if args.pretrain_dir is not None:
        settings = dataclasses.replace(settings, pretrain_dir=args.pretrain_dir)
    clips = find_clips(args.in_dir)
    if not clips:
        raise DatasetError(f"no clips found under {args.in_dir}/*/*.wav")
    report = run_preprocess(clips, settings, num_processes=args.num_processes, device=args.device)
    for reason, count in report.recomputed.items():
        print(f"{count} clip(s) recomputed: {reason}")
    print(f"{report.processed} clips processed ({report.audio_seconds:.1f} s of audio in {report.wall_seconds:.1f} s, "
          f"{report.realtime_factor:.1f}x real time), {report.skipped} already done, {len(report.failed)} failed")
    for path, message in report.failed:
        logger.error("failed: %s: %s", path, message)
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
