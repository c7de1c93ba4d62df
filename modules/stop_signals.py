"""Stopping a long job cleanly: the first Ctrl-C (SIGINT) or SIGTERM (torchrun's agent, a cluster's
pre-emption) asks the job to finish its current step and save; a second one quits at once.

A job stopped this way still reports failure: it raises JobInterrupted after saving, whose exit code
follows the shell's convention (128 + signal number: 130 for Ctrl-C, 143 for SIGTERM), so a script or
the quick-start that runs it never mistakes a stopped job for a finished one.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

from modules.errors import JobInterrupted

logger = logging.getLogger(__name__)


class StopSignals:
    """`with stop.catching(): ...` installs the handlers; `stop.received` is the signal that asked for a stop."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None

    @contextlib.contextmanager
    def catching(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():  # handlers can only live in the main thread
            yield self
            return

        def handler(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            if self.received is not None:
                raise KeyboardInterrupt(f"second {name}: quitting without saving")
            logger.warning("%s: finishing this step, then saving (again to quit without saving)", name)
            self.received = signal.Signals(signum)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def raise_if_stopped(self, what: str, saved: str) -> None:
        """After saving: JobInterrupted saying what stopped, what was saved and how to go on."""
        if self.received is not None:
            raise JobInterrupted(f"{what} stopped by {self.received.name} ({saved}); run the same command again "
                                 f"to resume", 128 + int(self.received))
