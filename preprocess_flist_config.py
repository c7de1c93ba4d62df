"""Write the train/validation file lists and the configs for a resampled dataset.

dataset/44k/<speaker>/*.wav -> filelists/train.txt, filelists/val.txt, configs/config.json,
configs/diffusion.yaml. Everything is checked before the first file is written.
The logic lives in modules.flist_config; this is the command line.
"""
from __future__ import annotations

import argparse
import sys

from modules.cli import run_cli
from modules.flist_config import prepare_flist_config
from vencoder import encoder_names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="preprocess_flist_config.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_list", type=str, default="./filelists/train.txt", help="training file list to write")
    p.add_argument("--val_list", type=str, default="./filelists/val.txt", help="validation file list to write")
    p.add_argument("--source_dir", type=str, default="./dataset/44k",
                   help="resampled dataset root (one sub-folder per speaker); lines start with this text")
    p.add_argument("--speech_encoder", type=str, default="vec768l12",
                   help=f"speech encoder; sets the unit dimensions ({', '.join(encoder_names())})")
    p.add_argument("--vol_aug", action="store_true",
                   help="enable volume augmentation (sets train.vol_aug and model.vol_embedding)")
    p.add_argument("--tiny", action="store_true", help="use the tiny model template (filter_channels 512)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the train/validation split")
    p.add_argument("--config_out", type=str, default="./configs/config.json",
                   help="config to write; if it exists, its speaker ids are kept")
    p.add_argument("--diffusion_out", type=str, default="./configs/diffusion.yaml", help="diffusion config to write")
    return p


def run(args: argparse.Namespace) -> None:
    result = prepare_flist_config(
        source_dir=args.source_dir, train_list=args.train_list, val_list=args.val_list,
        config_out=args.config_out, diffusion_out=args.diffusion_out, speech_encoder=args.speech_encoder,
        vol_aug=args.vol_aug, tiny=args.tiny, seed=args.seed,
    )
    print(f"{len(result.spk)} speakers: " + ", ".join(f"{name}={sid}" for name, sid in result.spk.items()))
    print(f"{len(result.train)} training clips -> {args.train_list}; {len(result.val)} validation clips -> {args.val_list}")
    if result.too_short:
        print(f"{len(result.too_short)} clips shorter than 0.3 s left out: "
              + ", ".join(f"{spk}/{name}" for spk, name, _ in result.too_short))
    print(f"wrote {args.config_out} and {args.diffusion_out} (speech encoder {args.speech_encoder})")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
