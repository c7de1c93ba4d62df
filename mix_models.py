"""Static model mixing: one G checkpoint from several trained on the same config (the original's web UI
"model mix" tab, as a command).

    python mix_models.py -i logs/44k/G_4000.pth logs/44k/G_8000.pth -r 70 30 -m exact -o mixed.pth

The logic is in modules.model_mix.
"""
from __future__ import annotations

import argparse
import sys

from modules.cli import run_cli
from modules.model_mix import MIX_MODES, mix_checkpoints


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mix_models.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--inputs", nargs="+", required=True,
                   help="G checkpoints to mix (the first one's keys and non-model fields are kept)")
    p.add_argument("-r", "--rates", nargs="+", type=float, required=True,
                   help="one rate (percent) per checkpoint, e.g. 70 30")
    p.add_argument("-m", "--mode", choices=MIX_MODES, default="exact",
                   help="exact: rate/sum(rates); convex: softmax(rate/100) like the original web UI; "
                        "linear: rate/100 as given (default: exact)")
    p.add_argument("-o", "--output", default="output.pth", help="output checkpoint (default: output.pth)")
    return p


def run(args: argparse.Namespace) -> None:
    print(f"wrote {mix_checkpoints(args.inputs, args.rates, args.mode, args.output)}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
