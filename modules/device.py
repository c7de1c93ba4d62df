"""Devices and reduced precision: one place that decides where and in what precision work runs."""
from __future__ import annotations

import torch

from modules.errors import ConfigError


def resolve_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """None, "" or "auto": cuda:<local_rank> when CUDA is available, else the CPU. "cuda" without an index
    becomes cuda:<local_rank> (one GPU per torchrun process). An unknown name, or CUDA asked for on a
    machine without it, is a ConfigError that says what to pass instead."""
    if name in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device '{name}' is not valid ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}': CUDA is not available on this machine (use cpu)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def cpu_has_fast_half(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether oneDNN has native kernels for `dtype` on this CPU (AVX512-BF16 / AMX / AVX512-FP16).

    Without them CPU autocast still works but emulates the type: measured 40-50x slower than fp32 on
    an AVX2 CPU, so callers fall back to fp32.
    """
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False
