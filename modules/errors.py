"""The project's own errors: one base class, so every command line reports them the same way.

An `SvcError` is a problem with the user's input or files (a bad config, a corrupt checkpoint, a
missing pretrained file, unusable audio). Its message is one line that names the file and what is
wrong; command lines print it without a traceback and exit with `SvcError.exit_code`. Any other
exception is a bug in this project and keeps its traceback.

Subclasses exist only where a caller handles one kind differently from the others.
"""
from __future__ import annotations

from pathlib import Path


class SvcError(Exception):
    """A user-facing failure; the message names the file and the problem."""

    exit_code: int = 2


class ConfigError(SvcError, ValueError):
    """A config file is missing, unreadable or has an invalid field."""


class AudioError(SvcError, ValueError):
    """An audio file cannot be read or holds unusable samples."""


class DatasetError(SvcError, ValueError):
    """The dataset (raw clips, file lists or feature files) is unusable as given."""


class CheckpointError(SvcError):
    """A weight file is missing, unreadable, or does not fit the model that reads it."""


class UnsafeCheckpointError(CheckpointError):
    """A weight file refers to Python code that loading it would run; it is refused unread."""


class PretrainedFileMissing(CheckpointError, FileNotFoundError):
    """A pretrained weight file is not where it is looked for."""

    def __init__(self, what: str, path: Path, source: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{what} needs the pretrained file {self.path} (looked for {self.path.resolve()}), which does not exist. "
            f"Get it from {source} and place it there (see pretrain/README.md)."
        )


class InferenceError(SvcError):
    """Conversion cannot run with the given inputs or options."""


class TrainingError(SvcError):
    """Training cannot start or cannot go on."""


class JobInterrupted(SvcError):
    """A long job was stopped by a signal after saving its progress; rerun to resume."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
