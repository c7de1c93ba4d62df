"""Train a so-vits-svc 4.1 model: `python train.py -c configs/config.json -m 44k`.

Runs on the CPU, one CUDA GPU, or several processes with
`torchrun --nproc_per_node N train.py -c configs/config.json -m 44k` (DistributedDataParallel;
nccl on GPUs, gloo on CPUs). Resumes from the newest G_/D_ pair in logs/<model>; Ctrl-C saves
a checkpoint and exits. The loop lives in modules/training.py.
"""
from __future__ import annotations

import argparse
import sys

from modules.cli import run_cli
from modules.training import PRECISIONS, TrainOptions, run_training


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="./configs/config.json",
                   help="JSON config file (copied byte for byte to the model folder); default ./configs/config.json")
    p.add_argument("-m", "--model", required=True,
                   help="model name: checkpoints go to logs/<model> (a path with a folder part is used as is)")
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'; under torchrun each "
                        "process uses cuda:<LOCAL_RANK>")
    p.add_argument("--precision", default="config", choices=PRECISIONS,
                   help="'config' follows train.fp16_run / train.half_type; or force fp32, fp16 (loss-scaled) or bf16")
    p.add_argument("--max_steps", type=int, default=None,
                   help="stop (saving a checkpoint) once this many steps exist in total, counting resumed ones")
    p.add_argument("--num_workers", type=int, default=None,
                   help="data loader worker processes (default: 0 with train.all_in_mem, else min(4, CPUs/2))")
    p.add_argument("--max_nan_steps", type=int, default=10,
                   help="consecutive steps with a NaN/Inf loss (each skipped) before training stops with an error")
    p.add_argument("--eval_items", type=int, default=None,
                   help="validation clips synthesised per evaluation (default: all, as the original)")
    p.add_argument("--logs_root", default="logs", help="parent folder of the model folder (default: logs)")
    p.add_argument("--no_progress", action="store_true", help="hide the per-epoch progress bar")
    return p


def run(args: argparse.Namespace) -> None:
    options = TrainOptions(
        device=args.device, precision=args.precision, max_steps=args.max_steps, num_workers=args.num_workers,
        max_nan_steps=args.max_nan_steps, eval_items=args.eval_items, progress=not args.no_progress,
    )
    next_step = run_training(args.config, args.model, options, logs_root=args.logs_root)
    print(f"training stopped; next step would be {next_step}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
