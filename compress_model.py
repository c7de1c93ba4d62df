"""Write a release file of a G checkpoint: no optimizer state, no training-only enc_q, optional fp16.

    python compress_model.py -c logs/44k/config.json -i logs/44k/G_8000.pth -hf

Same flags and output format as so-vits-svc 4.1's compress_model.py; the logic is in modules.compress.
"""
from __future__ import annotations

import argparse
import sys

from modules.cli import run_cli
from modules.compress import compress_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress_model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="configs/config.json",
                   help="config.json the checkpoint was trained with (default: configs/config.json)")
    p.add_argument("-i", "--input", required=True, help="G checkpoint to compress")
    p.add_argument("-o", "--output", default=None,
                   help="output file (default: <input stem>_release[_half]<ext> next to the input)")
    p.add_argument("-hf", "--half", action="store_true", help="store the weights as float16")
    return p


def run(args: argparse.Namespace) -> None:
    print(f"wrote {compress_checkpoint(args.input, args.config, args.output, args.half)}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
