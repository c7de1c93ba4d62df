"""Build per-speaker faiss indexes of the training units for feature retrieval (`-fr`).

    python train_index.py [--root_dir dataset/44k] [-c configs/config.json] [--output_dir logs/44k]

For every speaker of the config's `spk` map, the `*.wav.soft.pt` units under <root_dir>/<name>/ are indexed;
the indexes are written to <output_dir>/feature_and_index.pkl, keyed by speaker id, in the original's
format. Use it at inference with `-fr -cr 0.5`. The logic is in cluster.training.
"""
from __future__ import annotations

import argparse
import sys

from modules.cli import run_cli
from modules.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root_dir", default="dataset/44k",
                   help="preprocessed dataset, one folder per speaker (default dataset/44k)")
    p.add_argument("-c", "--config", default="./configs/config.json",
                   help="config whose spk map gives the speaker names and ids (default ./configs/config.json)")
    p.add_argument("--output_dir", default="logs/44k", help="folder for feature_and_index.pkl (default logs/44k)")
    p.add_argument("--seed", type=int, default=0, help="random seed for shuffling and k-means (default 0)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def _run(args: argparse.Namespace) -> int:
    from cluster.training import train_feature_indexes
    from modules.config import load_config

    hps = load_config(args.config)
    speakers = dict(hps.spk)
    if not speakers:
        raise ConfigError(f"{args.config}: the config has no speakers in its spk map")
    path = train_feature_indexes(args.root_dir, speakers, args.output_dir, seed=args.seed,
                                 progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
