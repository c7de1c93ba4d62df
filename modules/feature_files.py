"""Names of a clip's feature files, as so-vits-svc 4.1 names them (one definition for every stage)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        return self.wav.with_suffix(".spec.pt")  # replaces .wav (SOVITS41_FACTS 11.1)

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
    def speaker(self) -> str:
        return self.wav.parent.name
