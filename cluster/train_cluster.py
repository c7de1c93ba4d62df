"""Fit per-speaker k-means models of the training units (the "cluster model" of so-vits-svc 4.1).

    python cluster/train_cluster.py [--dataset dataset/44k] [--output logs/44k] [--gpu]

Each sub-folder of --dataset is one speaker; its `*.wav.soft.pt` units (from preprocess_hubert_f0.py) are
clustered and the centres written to <output>/kmeans_10000.pt, keyed by speaker name, in the original's
format. Use it at inference with `-cr 0.5` (and `-cm` for another path). The logic is in cluster.training.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "cluster":
    sys.path[0] = str(ROOT)  # run as a script: import the project, not this folder's modules, by name
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modules.cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=Path("./dataset/44k"),
                   help="preprocessed dataset, one folder per speaker (default ./dataset/44k)")
    p.add_argument("--output", type=Path, default=Path("logs/44k"),
                   help="folder for kmeans_10000.pt (default logs/44k)")
    p.add_argument("--gpu", action="store_true", help="fit with full k-means on the GPU (torch) instead of the CPU")
    p.add_argument("--n_clusters", type=int, default=10_000,
                   help="centres per speaker (default 10000; a speaker with fewer unit frames gets one per frame)")
    p.add_argument("--num_processes", type=int, default=1,
                   help="speakers fitted in parallel processes on the CPU (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the k-means (default 0)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def _run(args: argparse.Namespace) -> int:
    from cluster.training import train_cluster_models

    path = train_cluster_models(args.dataset, args.output, n_clusters=args.n_clusters, gpu=args.gpu,
                                num_processes=args.num_processes, seed=args.seed, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
