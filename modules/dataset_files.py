"""The dataset's layout: one folder per speaker, names that are safe in file lists, and the names of a
clip's feature files as so-vits-svc 4.1 names them (one definition for every stage)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from modules.errors import DatasetError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a speaker or clip name (path pieces, file list lines), or None if it can."""
    if not name or name in (".", ".."):
        return "is empty or a relative path marker"
    if name != name.strip():
        return "has whitespace at the start or end"
    if "/" in name or "\\" in name or (os.sep in name) or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if "|" in name:
        return "contains '|'"
    if _CONTROL.search(name):
        return "contains a newline or other control character"
    return None


def speaker_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found (expected one sub-folder per speaker)")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class ClipFiles:
    """The feature files next to `x.wav`: most append to the full name, the spectrogram replaces `.wav`."""

    wav: Path

    @property
    def units(self) -> Path:
        return Path(f"{self.wav}.soft.pt")

    @property
    def f0(self) -> Path:
        return Path(f"{self.wav}.f0.npy")

    @property
    def spec(self) -> Path:
        return self.wav.with_suffix(".spec.pt")  # the one name that replaces .wav instead of appending

    @property
    def vol(self) -> Path:
        return Path(f"{self.wav}.vol.npy")

    @property
    def mel(self) -> Path:
        return Path(f"{self.wav}.mel.npy")

    @property
    def aug_mel(self) -> Path:
        return Path(f"{self.wav}.aug_mel.npy")

    @property
    def aug_vol(self) -> Path:
        return Path(f"{self.wav}.aug_vol.npy")

    @property
    def record(self) -> Path:
        """What made the features (modules.fingerprint); written last, so it also marks the clip done."""
        return Path(f"{self.wav}.features.json")

    @property
    def speaker(self) -> str:
        return self.wav.parent.name
