"""Web UI: load a model, convert songs and use the model tools in the browser (Gradio).

    python webUI.py                 # serves http://127.0.0.1:7860
    python webUI.py --inbrowser     # and opens it in the default browser

Models are listed from logs/44k/ (G_*.pth next to config.json) and trained/<name>/ (one .pth and one
.json per folder); a G file and its config can also be uploaded. Results are written to results/
under inference_main.py's names. The logic lives in modules.webui; conversion is modules.inference.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from modules.cli import run_cli
from modules.webui import DEFAULT_HOST, DEFAULT_PORT, launch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webUI.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}, this machine only; anything else is reachable "
                        f"from the network and prints a warning)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link (needs internet; Gradio fetches "
                        "its tunnel client on first use)")
    p.add_argument("--inbrowser", action="store_true", help="open the page in the default browser on start")
    p.add_argument("--root", default=".",
                   help="project folder whose logs/44k/, trained/, results/ and pretrain/ are used (default .)")
    p.add_argument("--pretrain_dir", default=None, help="folder with the speech encoder's weights (default <root>/pretrain)")
    return p


def run(args: argparse.Namespace) -> None:
    launch(args.root, host=args.host, port=args.port, share=args.share, inbrowser=args.inbrowser,
           pretrain_dir=args.pretrain_dir)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
