"""Speech encoders: one registry from the config's `speech_encoder` name to an encoder.

    encoder = get_speech_encoder("vec768l12", device="cpu")
    units = encoder.encode(wav_16k)              # [1, D, T_u], float32, CPU
    many = encoder.encode_batch([wav_a, wav_b])  # batched internally, same results

`SPEECH_ENCODERS` is the one table of the names a config may give as `model.speech_encoder`: each
row says the unit width the encoder produces (the config's `ssl_dim`), its input sample rate, and
which class builds it. Adding an encoder is a new module with a `SpeechEncoder` subclass plus its
class path in that row; modules are imported lazily, so an encoder's dependencies load only when
it is used.
Built encoders are cached per (name, device, pretrain folder) for the whole process.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.errors import ConfigError
from vencoder import base
from vencoder.base import SpeechEncoder


@dataclass(frozen=True)
class EncoderSpec:
    """One speech encoder a config may name."""

    name: str
    dim: int  # width of the units, the config's ssl_dim
    target: str | None  # "module:Class" of the implementation; None while it is not built
    sample_rate: int = base.ENCODER_SAMPLE_RATE

    @property
    def built(self) -> bool:
        return self.target is not None


SPEECH_ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in (
    EncoderSpec("vec768l12", 768, "vencoder.contentvec:ContentVec768L12"),
    EncoderSpec("vec256l9", 256, "vencoder.contentvec:ContentVec256L9"),
    EncoderSpec("hubertsoft", 256, "vencoder.hubert_soft:HubertSoft"),
    EncoderSpec("whisper-ppg", 1024, "vencoder.whisper_ppg:WhisperPPG"),
    EncoderSpec("whisper-ppg-large", 1280, "vencoder.whisper_ppg:WhisperPPGLarge"),
    EncoderSpec("cnhubertlarge", 1024, "vencoder.cnhubert:CNHubertLarge"),
    EncoderSpec("dphubert", 768, "vencoder.dphubert:DPHubert"),
    EncoderSpec("wavlmbase+", 768, "vencoder.wavlm:WavLMBasePlus"),
    EncoderSpec("vec256l9-onnx", 256, "vencoder.onnx_encoders:ContentVec256L9Onnx"),
    EncoderSpec("vec256l12-onnx", 256, "vencoder.onnx_encoders:ContentVec256L12Onnx"),
    EncoderSpec("vec768l9-onnx", 768, "vencoder.onnx_encoders:ContentVec768L9Onnx"),
    EncoderSpec("vec768l12-onnx", 768, "vencoder.onnx_encoders:ContentVec768L12Onnx"),
    EncoderSpec("hubertsoft-onnx", 256, "vencoder.onnx_encoders:HubertSoftOnnx"),
)}
_cache: dict[tuple[str, str, str], SpeechEncoder] = {}
_cache_lock = threading.Lock()


def encoder_names() -> tuple[str, ...]:
    """The names this project can build."""
    return tuple(name for name, spec in SPEECH_ENCODERS.items() if spec.built)


def encoder_spec(name: str) -> EncoderSpec:
    """The table row for a built encoder; ConfigError (listing the built ones) otherwise."""
    spec = SPEECH_ENCODERS.get(name)
    if spec is None or not spec.built:
        what = f"speech encoder '{name}' is not built in this version" if spec else f"unknown speech encoder '{name}'"
        raise ConfigError(f"{what}; available: {', '.join(encoder_names())}")
    return spec


def encoder_class(name: str) -> type[SpeechEncoder]:
    """The class registered for `name`, imported on first use."""
    module_name, class_name = encoder_spec(name).target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_speech_encoder(name: str, device: str | torch.device | None = None,
                       pretrain_dir: str | Path | None = None, cache: bool = True) -> SpeechEncoder:
    """Build (or fetch the cached) encoder `name` on `device`, weights from `pretrain_dir`
    (default: the project's `pretrain/`).

    Raises ConfigError, PretrainedFileMissing (naming the path and where to get the file)
    or CheckpointError / UnsafeCheckpointError for a bad weight file.
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
    "EncoderSpec", "SPEECH_ENCODERS", "SpeechEncoder", "clear_cache", "encoder_class", "encoder_names", "encoder_spec",
    "get_speech_encoder",
]
