"""Devices and reduced precision: one place that decides where and in what precision work runs."""
from __future__ import annotations

import logging

import torch

from modules.errors import ConfigError

logger = logging.getLogger(__name__)

# Synthesis precisions (inference_main.py --precision): auto = the fastest one this device runs natively.
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype synthesis runs in for a `--precision` name on `device`.

    auto: fp16 on a GPU; on a CPU bf16 where it has native bf16 kernels, else fp32 (and says so, since
    emulated bf16 is far slower). An explicit bf16 or fp16 on a CPU without native kernels is honoured
    with a warning.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not known; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cpu":
            return torch.float16
        if cpu_has_fast_half(torch.bfloat16):
            return torch.bfloat16
        logger.info("precision auto: this CPU has no native bf16 kernels (emulated bf16 is much slower); using fp32")
        return torch.float32
    dtype = _DTYPES[precision]
    if device.type == "cpu" and dtype != torch.float32 and not cpu_has_fast_half(dtype):
        logger.warning("precision %s: this CPU has no native %s kernels; it is emulated and much slower than fp32",
                       precision, precision)
    return dtype
