"""Write a release file of a G checkpoint: no optimizer state, no training-only enc_q, optional fp16.

    python compress_model.py -c logs/44k/config.json -i logs/44k/G_8000.pth -hf

Same flags and output format as so-vits-svc 4.1's compress_model.py; the logic is in modules.model_tools.
"""
from __future__ import annotations

import argparse
import logging
import sys

from modules.model_tools import add_compress_arguments, run_cli, run_compress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compress_model.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compress_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run_cli(lambda: run_compress(args))


if __name__ == "__main__":
    sys.exit(main())
