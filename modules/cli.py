"""The one command-line runner every script uses.

    def main(argv=None) -> int:
        return run_cli(build_parser(), _run, argv)

`run_cli` adds `--debug`, sets up logging, and calls `action(args)`. A project error
(`SvcError`) becomes one line on stderr, `<prog>: error: <message>`, and its exit code (2, like
argparse's usage errors; an interrupted job uses 130/143). Ctrl-C exits 130. Anything else is a
bug and keeps its traceback. `--debug` shows tracebacks for project errors too.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from modules.errors import SvcError

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=LOG_FORMAT)


def run_cli(parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run `action(args)` and turn its outcome into an exit code."""
    if not any("--debug" in a.option_strings for a in parser._actions):
        parser.add_argument("--debug", action="store_true",
                            help="show a full traceback for errors (for bug reports)")
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        code = action(args)
    except SvcError as e:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
