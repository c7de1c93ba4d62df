"""Speech encoders: one registry from the config's `speech_encoder` name to an encoder.

    encoder = get_speech_encoder("vec768l12", device="cpu")
    units = encoder.encode(wav_16k)              # [1, D, T_u], float32, CPU
    many = encoder.encode_batch([wav_a, wav_b])  # batched internally, same results

Adding an encoder is a new module with a `SpeechEncoder` subclass plus one line in `_REGISTRY`;
modules are imported lazily, so an encoder's dependencies load only when it is used.
Built encoders are cached per (name, device, pretrain folder) for the whole process.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path

import torch

from vencoder import base
from vencoder.base import (
    CheckpointFormatError,
    PretrainedFileMissing,
    SpeechEncoder,
    SpeechEncoderError,
)

# config name -> "module:Class"
_REGISTRY: dict[str, str] = {
    "vec768l12": "vencoder.contentvec:ContentVec768L12",
    "vec256l9": "vencoder.contentvec:ContentVec256L9",
    "hubertsoft": "vencoder.hubert_soft:HubertSoft",
}
_cache: dict[tuple[str, str, str], SpeechEncoder] = {}
_cache_lock = threading.Lock()


class UnknownSpeechEncoder(SpeechEncoderError, ValueError):
    """The name is not in the registry (or its encoder is not implemented yet)."""


def encoder_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def encoder_class(name: str) -> type[SpeechEncoder]:
    """The class registered for `name`, imported on first use."""
    if name not in _REGISTRY:
        raise UnknownSpeechEncoder(
            f"unknown or not yet supported speech encoder '{name}'; available: {', '.join(_REGISTRY)}"
        )
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_speech_encoder(name: str, device: str | torch.device | None = None,
                       pretrain_dir: str | Path | None = None, cache: bool = True) -> SpeechEncoder:
    """Build (or fetch the cached) encoder `name` on `device`, weights from `pretrain_dir`
    (default: the project's `pretrain/`).

    Raises UnknownSpeechEncoder, PretrainedFileMissing (naming the path and where to get the file)
    or CheckpointFormatError / UnsafeCheckpointError for a bad weight file.
    """
    cls = encoder_class(name)
    device = torch.device(device) if device is not None else torch.device("cpu")
    folder = Path(pretrain_dir) if pretrain_dir is not None else base.default_pretrain_dir()
    key = (name, str(device), str(folder.resolve()))
    if not cache:
        return cls(device=device, pretrain_dir=folder)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = cls(device=device, pretrain_dir=folder)
        return _cache[key]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


__all__ = [
    "CheckpointFormatError", "PretrainedFileMissing", "SpeechEncoder", "SpeechEncoderError",
    "UnknownSpeechEncoder", "clear_cache", "encoder_class", "encoder_names", "get_speech_encoder",
]
