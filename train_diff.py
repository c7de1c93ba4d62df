"""Train the shallow-diffusion model: `python train_diff.py -c configs/diffusion.yaml`.

Needs the --use_diff features from preprocess_hubert_f0.py. Writes to env.expdir (default
logs/44k/diffusion): config.yaml, model_<step>.pt, log_info.txt and tensorboard logs. Resumes from the
newest model_<N>.pt there (a pretrained model_0.pt included). Ctrl-C saves and stops. Runs on the
CPU or one GPU; train.amp_dtype selects fp32, fp16 or bf16. The loop lives in diffusion/train.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from modules.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="diffusion config (configs/diffusion.yaml)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the config's 'device' with env.gpu_id; CPU when no CUDA)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="stop (saving model_<step>.pt) at this global step, counting resumed steps")
    p.add_argument("--max_nan_steps", type=int, default=10,
                   help="consecutive NaN/Inf-loss steps (each skipped) before training stops with an error")
    p.add_argument("--no_val_audio", action="store_true",
                   help="do not vocode validation clips for tensorboard (no vocoder folder needed)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def _train(args: argparse.Namespace) -> int:
    from diffusion.train import DiffTrainOptions, run_training

    options = DiffTrainOptions(device=args.device, max_steps=args.max_steps, max_nan_steps=args.max_nan_steps,
                               progress=not args.no_progress, val_audio=not args.no_val_audio)
    step = run_training(args.config, options)
    print(f"diffusion training stopped at step {step}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _train, argv)


if __name__ == "__main__":
    sys.exit(main())
