"""Stand-ins that let the reference packages torchcrepe and torchfcpe be imported in tests.

torchaudio does not load with our torch build, and resampy, einops and local_attention are not
installed. The tests only need the packages' networks and decoders, so each stand-in provides just
what they touch at import or run time:

- torchaudio.transforms.Resample: torchaudio's Hann-windowed sinc kernel (its default method, with the
  lowpass_filter_width and rolloff the caller passes), evaluated straight from the interpolation
  formula (tests/support/sinc_reference.py), so a package front end compared at 44.1 kHz runs the
  real kernel and not our own resampler;
- torchaudio.load: our audio loader;
- resampy.resample: the same soxr resampler;
- einops.rearrange / repeat: only the three patterns the FCPE attention uses;
- local_attention.LocalAttention: raises if constructed (FCPE only builds it with local heads > 0).

`installed()` puts them into sys.modules, imports the packages, and removes everything afterwards,
so no other test sees the stand-ins.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Iterator

import numpy as np
import torch

from modules.audio import load_audio, resample
from tests.support.sinc_reference import windowed_sinc_reference


class _Resample(torch.nn.Module):
    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000, resampling_method: str = "sinc_interp_hann",
                 lowpass_filter_width: int = 6, rolloff: float = 0.99, **_: object) -> None:
        super().__init__()
        if resampling_method not in ("sinc_interp_hann", "sinc_interpolation"):
            raise NotImplementedError(f"torchaudio stub: resampling_method '{resampling_method}' not supported")
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        self.lowpass_filter_width, self.rolloff = int(lowpass_filter_width), float(rolloff)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.orig_freq == self.new_freq:
            return waveform
        rows = waveform.reshape(-1, waveform.shape[-1]).detach().cpu().double().numpy()
        out = np.stack([windowed_sinc_reference(r, self.orig_freq, self.new_freq, self.lowpass_filter_width,
                                                self.rolloff) for r in rows])
        return torch.from_numpy(out).reshape(*waveform.shape[:-1], -1).to(waveform)


def _torchaudio_load(path: str) -> tuple[torch.Tensor, int]:
    audio, sr = load_audio(path)
    return torch.from_numpy(audio)[None], sr


def _resampy_resample(x: np.ndarray, sr_orig: int, sr_new: int, **_: object) -> np.ndarray:
    return resample(np.asarray(x, dtype=np.float32), int(sr_orig), int(sr_new))


def _rearrange(t: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
    pattern = " ".join(pattern.split())
    if pattern == "b n (h d) -> b h n d":
        b, n, _ = t.shape
        return t.reshape(b, n, sizes["h"], -1).transpose(1, 2)
    if pattern == "b h n d -> b n (h d)":
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)
    raise NotImplementedError(f"einops stub: pattern '{pattern}' not supported")


def _repeat(t: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
    pattern = " ".join(pattern.split())
    if pattern == "j d -> b h j d":
        return t.expand(sizes["b"], sizes["h"], *t.shape)
    raise NotImplementedError(f"einops stub: pattern '{pattern}' not supported")


class _LocalAttention(torch.nn.Module):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("local_attention stub: local attention heads are not supported")


def _stub_modules() -> dict[str, types.ModuleType]:
    torchaudio = types.ModuleType("torchaudio")
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.Resample = _Resample
    torchaudio.transforms = transforms
    torchaudio.load = _torchaudio_load
    resampy = types.ModuleType("resampy")
    resampy.resample = _resampy_resample
    einops = types.ModuleType("einops")
    einops.rearrange = _rearrange
    einops.repeat = _repeat
    local_attention = types.ModuleType("local_attention")
    local_attention.LocalAttention = _LocalAttention
    return {"torchaudio": torchaudio, "torchaudio.transforms": transforms, "resampy": resampy,
            "einops": einops, "local_attention": local_attention}


@contextlib.contextmanager
def installed(*packages: str) -> Iterator[tuple[types.ModuleType, ...]]:
    """Import `packages` (e.g. "torchcrepe", "torchfcpe") with the stand-ins in place; yield the modules.

    torchaudio is always replaced (the real one may be installed but broken); the others only when
    they are not installed. On exit every stand-in and every module of `packages` is removed again.
    """
    stubs = {name: mod for name, mod in _stub_modules().items()
             if name.startswith("torchaudio") or importlib.util.find_spec(name) is None}
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield tuple(importlib.import_module(p) for p in packages)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
