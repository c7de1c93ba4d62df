"""Vocoders. `Generator` is the NSF-HiFiGAN used inside the synthesizer; `NsfHifiGan` wraps the
standalone 128-bin mel vocoder folder `pretrain/nsf_hifigan/{config.json, model}` used by shallow
diffusion and the enhancer.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.checkpoint import CheckpointError, compare_state, load_state_into, safe_load
from modules.features import nsf_mel
from vdecoder.nsf_hifigan import Generator, GeneratorConfig

logger = logging.getLogger(__name__)

__all__ = ["Generator", "GeneratorConfig", "NsfHifiGan", "VocoderError", "save_vocoder_folder"]

_REQUIRED = ("sampling_rate", "num_mels", "n_fft", "win_size", "hop_size", "fmin", "fmax", "upsample_rates",
             "upsample_kernel_sizes", "upsample_initial_channel", "resblock", "resblock_kernel_sizes",
             "resblock_dilation_sizes")


class VocoderError(ValueError):
    """The vocoder folder is missing, or its config/model is unusable; the message names the file."""


@dataclass
class MelConfig:
    sampling_rate: int
    num_mels: int
    n_fft: int
    win_size: int
    hop_size: int
    fmin: float
    fmax: float


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise VocoderError(f"{path}: vocoder config not found (expected config.json next to 'model')") from None
    except json.JSONDecodeError as e:
        raise VocoderError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise VocoderError(f"{path}: missing field(s) {', '.join(missing)}")
    return cfg


def generator_config(cfg: dict[str, Any]) -> GeneratorConfig:
    """Generator hyper-parameters from a vocoder config.json (mel bins in, no speaker conditioning)."""
    return GeneratorConfig.from_mapping(
        cfg, in_channels=int(cfg["num_mels"]), gin_channels=0, activation="leaky_relu", source_style="openvpi"
    )


class NsfHifiGan(torch.nn.Module):
    """Standalone NSF-HiFiGAN: `extract(audio [B, L]) -> mel [B, T, n_mels]`, `infer(mel, f0) -> [B, 1, L]`."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.h = dict(cfg)
        self.mel = MelConfig(
            int(cfg["sampling_rate"]), int(cfg["num_mels"]), int(cfg["n_fft"]), int(cfg["win_size"]),
            int(cfg["hop_size"]), float(cfg["fmin"]), float(cfg["fmax"]),
        )
        self.model = Generator(generator_config(cfg))
        if self.model.upp != self.mel.hop_size:
            raise VocoderError(f"upsample_rates multiply to {self.model.upp}, but hop_size is {self.mel.hop_size}")

    @property
    def sampling_rate(self) -> int:
        return self.mel.sampling_rate

    @property
    def hop_size(self) -> int:
        return self.mel.hop_size

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "NsfHifiGan":
        """Load `folder/config.json` and `folder/model` (`{'generator': state_dict}`), strictly; fold weight norm."""
        folder = Path(folder)
        if not folder.is_dir():
            raise VocoderError(f"{folder}: vocoder folder not found (place the NSF-HiFiGAN release there)")
        vocoder = cls(_read_config(folder / "config.json"))
        model_path = folder / "model"
        try:
            ckpt = safe_load(model_path)
        except CheckpointError as e:
            raise VocoderError(str(e)) from None
        state = ckpt.get("generator")
        if not isinstance(state, dict):
            raise VocoderError(f"{model_path}: no 'generator' state dict (keys: {sorted(ckpt)})")
        report = compare_state(vocoder.model, state)
        if report.reinitialized:
            raise VocoderError(
                f"{model_path}: does not match {folder / 'config.json'}: {len(report.reinitialized)} tensor(s) "
                f"missing or of another shape, e.g. {report.reinitialized[0]} ({report.reasons[report.reinitialized[0]]})"
            )
        load_state_into(vocoder.model, state, source=str(model_path))
        vocoder.model.remove_weight_norm()
        return vocoder.to(device).eval()

    @torch.no_grad()
    def extract(self, audio: torch.Tensor, keyshift: float = 0.0) -> torch.Tensor:
        """Log mel [B, T, n_mels] (T = L // hop) of audio [B, L] at the vocoder's sampling rate."""
        m = self.mel
        mel = nsf_mel(audio, sr=m.sampling_rate, n_fft=m.n_fft, hop=m.hop_size, win=m.win_size,
                      n_mels=m.num_mels, fmin=m.fmin, fmax=m.fmax, keyshift=keyshift)
        return mel.transpose(-1, -2)

    @torch.no_grad()
    def infer(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """mel [B, T, n_mels] and f0 [B, T] (Hz) -> audio [B, 1, T * hop]."""
        if mel.size(-1) != self.mel.num_mels:
            raise ValueError(f"mel must be [B, T, {self.mel.num_mels}], got {list(mel.shape)}")
        return self.model(mel.transpose(1, 2), f0)


def save_vocoder_folder(vocoder: NsfHifiGan, folder: str | os.PathLike) -> None:
    """Write `config.json` and `model` in the release layout (for tests and for exporting a trained one)."""
    from modules.fileio import save_torch, write_text

    folder = Path(folder)
    write_text(folder / "config.json", json.dumps(vocoder.h, indent=2) + "\n")
    save_torch({"generator": vocoder.model.state_dict()}, folder / "model")
