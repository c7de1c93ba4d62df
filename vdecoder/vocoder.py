"""The standalone NSF-HiFiGAN vocoder: the 128-bin mel vocoder folder `pretrain/nsf_hifigan/{config.json,
model}` used by shallow diffusion and the enhancer, and the mel it was trained on (`VocoderMel`), which
the diffusion features must be computed with. Its config.json is read here and nowhere else.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.atomic_write import save_torch, write_text
from modules.checkpoint import load_weights, safe_load
from modules.config import read_json_object
from modules.errors import CheckpointError, ConfigError
from modules.frame_features import nsf_mel
from vdecoder.nsf_hifigan import Generator, GeneratorConfig

logger = logging.getLogger(__name__)

_REQUIRED = ("sampling_rate", "num_mels", "n_fft", "win_size", "hop_size", "fmin", "fmax", "upsample_rates",
             "upsample_kernel_sizes", "upsample_initial_channel", "resblock", "resblock_kernel_sizes",
             "resblock_dilation_sizes")


@dataclass(frozen=True)
class VocoderMel:
    """The mel a standalone vocoder was trained on, in its config.json's own field names.

    The defaults are the 44.1 kHz, 128-bin NSF-HiFiGAN release's values.
    """

    sampling_rate: int = 44100
    num_mels: int = 128
    n_fft: int = 2048
    win_size: int = 2048
    hop_size: int = 512
    fmin: float = 40.0
    fmax: float = 16000.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any], source: str = "vocoder config") -> "VocoderMel":
        try:
            return cls(int(cfg["sampling_rate"]), int(cfg["num_mels"]), int(cfg["n_fft"]), int(cfg["win_size"]),
                       int(cfg["hop_size"]), float(cfg["fmin"]), float(cfg["fmax"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{source}: not a usable vocoder config ({e})") from None

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> "VocoderMel":
        """The mel of the vocoder whose weights are `ckpt`, from the config.json beside it (the weights are
        not needed); the release defaults, with a warning, when there is no config.json."""
        path = Path(ckpt).parent / "config.json"
        if not path.is_file():
            logger.warning("%s not found; using the NSF-HiFiGAN 44.1 kHz mel defaults %s", path, cls())
            return cls()
        return cls.from_config(read_vocoder_config(path, required=()), str(path))

    def extract(self, audio: torch.Tensor, keyshift: float = 0.0) -> torch.Tensor:
        """Log mel [..., n_mels, T] (T = L // hop) of audio [..., L] at the vocoder's sampling rate."""
        return nsf_mel(audio, sr=self.sampling_rate, n_fft=self.n_fft, hop=self.hop_size, win=self.win_size,
                       n_mels=self.num_mels, fmin=self.fmin, fmax=self.fmax, keyshift=keyshift)


def read_vocoder_config(path: Path, required: tuple[str, ...] = _REQUIRED) -> dict[str, Any]:
    """The vocoder's config.json as a dict; ConfigError naming the file when it is absent, broken or
    lacks a `required` field."""
    cfg = read_json_object(path, "vocoder config (config.json next to 'model')")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConfigError(f"{path}: missing field(s) {', '.join(missing)}")
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
        self.mel = VocoderMel.from_config(cfg)
        self.model = Generator(generator_config(cfg))
        if self.model.upp != self.mel.hop_size:
            raise ConfigError(f"upsample_rates multiply to {self.model.upp}, but hop_size is {self.mel.hop_size}")

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
            raise CheckpointError(f"{folder}: vocoder folder not found (place the NSF-HiFiGAN release there)")
        vocoder = cls(read_vocoder_config(folder / "config.json"))
        model_path = folder / "model"
        ckpt = safe_load(model_path)
        state = ckpt.get("generator")
        if not isinstance(state, dict):
            raise CheckpointError(f"{model_path}: no 'generator' state dict (keys: {sorted(ckpt)})")
        load_weights(vocoder.model, state, source=str(model_path), optional=(),
                     hint=f"the file does not match {folder / 'config.json'}")
        vocoder.model.remove_weight_norm()
        return vocoder.to(device).eval()

    @torch.no_grad()
    def extract(self, audio: torch.Tensor, keyshift: float = 0.0) -> torch.Tensor:
        """Log mel [B, T, n_mels] (T = L // hop) of audio [B, L] at the vocoder's sampling rate."""
        return self.mel.extract(audio, keyshift).transpose(-1, -2)

    @torch.no_grad()
    def infer(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """mel [B, T, n_mels] and f0 [B, T] (Hz) -> audio [B, 1, T * hop]."""
        if mel.size(-1) != self.mel.num_mels:
            raise ValueError(f"mel must be [B, T, {self.mel.num_mels}], got {list(mel.shape)}")
        return self.model(mel.transpose(1, 2), f0)


def save_vocoder_folder(vocoder: NsfHifiGan, folder: str | os.PathLike) -> None:
    """Write `config.json` and `model` in the release layout (for tests and for exporting a trained one)."""
    folder = Path(folder)
    write_text(folder / "config.json", json.dumps(vocoder.h, indent=2) + "\n")
    save_torch({"generator": vocoder.model.state_dict()}, folder / "model")
