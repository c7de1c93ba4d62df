"""`rmvpe`: the RMVPE pitch network (a deep U-Net on a log-mel, then a BiGRU over 360 pitch bins).

The module and attribute names below mirror the published checkpoint (`pretrain/rmvpe.pt`, the
yxlllc RMVPE 230917 `model.pt`: `{'model': state_dict}` of E2E0(n_blocks=4, n_gru=1, kernel=(2, 2))),
so the file loads with a strict `load_state_dict`. RVC's `rmvpe.pt`, a bare state dict of the same
network without the unused timbre-filter branch, is accepted too. The sizes (base width, blocks per
stage, stages, middle layers, GRU layers and width) are read from the file's state dict, so narrower
or wider networks in the same layout load as well.

Pipeline per clip: resample to 16 kHz (Hann-windowed sinc, 128 zero crossings, rolloff 0.99: the
torchaudio resampler the original runs) -> centred STFT log-mel (128 HTK bins, 30-8000 Hz,
n_fft = win = 1024, hop 160) -> zero-pad (in the log-mel domain, on the right) to a multiple of 32
frames (2 ** stages) -> salience [frames, 360] -> weighted mean of the cents around the argmax where the peak exceeds `threshold` -> nearest-resize
from 100 frames/s to the caller's T frames.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modules.audio import resample_sinc
from modules.checkpoint import load_torch_file
from modules.errors import CheckpointError
from modules.frame_features import mel_basis
from modules.pitch.base import F0Predictor, resize_nearest

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_PATH = PROJECT_ROOT / "pretrain" / "rmvpe.pt"
WHERE_TO_GET = (
    "download the RMVPE release 230917 (yxlllc/RMVPE on GitHub, rmvpe.zip), take its model.pt and save it "
    "as pretrain/rmvpe.pt (RVC's rmvpe.pt also works); see pretrain/README.md"
)

SAMPLE_RATE = 16000
MEL_HOP = 160
MEL_WINDOW = 1024
N_MELS = 128
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
N_CLASSES = 360
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0; bin i is 20 * i cents above it
RESAMPLE_ZERO_CROSSINGS = 128  # the original's resampler: lowpass_filter_width 128, rolloff 0.99, Hann
RESAMPLE_ROLLOFF = 0.99


class ResidualConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU layers with a residual path (1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, momentum: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.conv(x) + residual


class EncoderStage(nn.Module):
    """n residual blocks, optionally followed by average pooling (the pooled map goes deeper)."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] | None, n_blocks: int) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * n_blocks
        self.conv = nn.ModuleList(ResidualConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.pool = nn.AvgPool2d(pool) if pool is not None else None

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class DecoderStage(nn.Module):
    """Upsample 2x with a transposed conv, concatenate the skip connection, then residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        output_padding = (0, 1) if tuple(stride) == (1, 2) else (1, 1)
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               output_padding=output_padding, bias=False),
            nn.BatchNorm2d(out_channels, momentum=0.01),
            nn.ReLU(),
        )
        widths = [2 * out_channels] + [out_channels] * n_blocks
        self.conv2 = nn.ModuleList(ResidualConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class UNetEncoder(nn.Module):
    def __init__(self, n_stages: int, pool: tuple[int, int], n_blocks: int, width: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=0.01)
        widths = [1] + [width * 2 ** i for i in range(n_stages)]
        self.layers = nn.ModuleList(
            EncoderStage(a, b, pool, n_blocks) for a, b in zip(widths[:-1], widths[1:])
        )
        self.skip_widths = widths[1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        x = self.bn(x)
        for stage in self.layers:
            full = stage.run_blocks(x)
            skips.append(full)
            x = stage.pool(full)
        return x, skips


class UNetMiddle(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_stages: int, n_blocks: int) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * n_stages
        self.layers = nn.ModuleList(EncoderStage(a, b, None, n_blocks) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = stage.run_blocks(x)
        return x


class UnusedTimbreFilter(nn.Module):
    """Present in E2E0 checkpoints but never called in its forward pass; kept so keys load strictly."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ResidualConvBlock(w, w) for w in widths)


class UNetDecoder(nn.Module):
    def __init__(self, in_channels: int, n_stages: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        widths = [in_channels // 2 ** i for i in range(n_stages + 1)]
        self.layers = nn.ModuleList(
            DecoderStage(a, b, stride, n_blocks) for a, b in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.layers, reversed(skips)):
            x = stage(x, skip)
        return x


class DeepUNet(nn.Module):
    def __init__(self, pool: tuple[int, int], n_blocks: int, n_stages: int = 5, n_middle: int = 4,
                 width: int = 16) -> None:
        super().__init__()
        self.encoder = UNetEncoder(n_stages, pool, n_blocks, width)
        bottom = width * 2 ** n_stages
        self.intermediate = UNetMiddle(bottom // 2, bottom, n_middle, n_blocks)
        self.tf = UnusedTimbreFilter(self.encoder.skip_widths)
        self.decoder = UNetDecoder(bottom, n_stages, pool, n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    def __init__(self, n_in: int, n_hidden: int, n_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, n_hidden, num_layers=n_layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


@dataclass(frozen=True)
class RMVPEArch:
    """The sizes a checkpoint fixes; the defaults are the published E2E0(4, 1, (2, 2)) with width 16."""

    width: int = 16  # channels of the first encoder stage; each deeper stage doubles it
    n_blocks: int = 4  # residual blocks per encoder/decoder stage and per middle layer
    n_stages: int = 5  # encoder (and decoder) stages, each pooling time and frequency by 2
    n_middle: int = 4  # middle layers at the bottom of the U-Net
    n_gru: int = 1  # bidirectional GRU layers; 0: a linear layer instead
    gru_hidden: int = 256  # per direction

    def describe(self) -> str:
        return (f"E2E0(n_blocks={self.n_blocks}, n_gru={self.n_gru}, width={self.width}, "
                f"stages={self.n_stages}, middle={self.n_middle}, gru_hidden={self.gru_hidden})")


class RMVPENet(nn.Module):
    """E2E0: log-mel [B, 128, T] -> pitch salience [B, T, 360] in (0, 1). T must be a multiple of frame_multiple."""

    def __init__(self, n_blocks: int = 4, n_gru: int = 1, pool: tuple[int, int] = (2, 2), width: int = 16,
                 n_stages: int = 5, n_middle: int = 4, gru_hidden: int = 256) -> None:
        super().__init__()
        self.arch = RMVPEArch(width, n_blocks, n_stages, n_middle, n_gru, gru_hidden)
        self.frame_multiple = pool[0] ** n_stages
        self.unet = DeepUNet(pool, n_blocks, n_stages=n_stages, n_middle=n_middle, width=width)
        self.cnn = nn.Conv2d(width, 3, 3, padding=1)
        if n_gru:
            head: list[nn.Module] = [BiGRU(3 * N_MELS, gru_hidden, n_gru), nn.Linear(2 * gru_hidden, N_CLASSES)]
        else:
            head = [nn.Linear(3 * N_MELS, N_CLASSES)]
        self.fc = nn.Sequential(*head, nn.Dropout(0.25), nn.Sigmoid())

    @classmethod
    def from_arch(cls, arch: RMVPEArch) -> RMVPENet:
        return cls(arch.n_blocks, arch.n_gru, width=arch.width, n_stages=arch.n_stages, n_middle=arch.n_middle,
                   gru_hidden=arch.gru_hidden)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.unet(mel.transpose(-1, -2).unsqueeze(1))  # [B, 1, T, mels] -> [B, width, T, mels]
        x = self.cnn(x).transpose(1, 2).flatten(-2)  # [B, T, 3 * mels]
        return self.fc(x)


def log_mel(audio_16k: torch.Tensor) -> torch.Tensor:
    """RMVPE's input: [B, N] at 16 kHz -> [B, 128, N // 160 + 1] natural-log mel.

    A centred (reflect-padded) STFT, unlike the project's training spectrogram, because that is the
    framing the network was trained on.
    """
    window = torch.hann_window(MEL_WINDOW, device=audio_16k.device, dtype=audio_16k.dtype)
    spec = torch.stft(audio_16k, MEL_WINDOW, hop_length=MEL_HOP, win_length=MEL_WINDOW, window=window,
                      center=True, pad_mode="reflect", return_complex=True)
    magnitude = spec.abs()
    basis = mel_basis(SAMPLE_RATE, MEL_WINDOW, N_MELS, MEL_FMIN, MEL_FMAX, audio_16k.device, htk=True)
    return torch.log(torch.clamp(torch.matmul(basis.to(magnitude.dtype), magnitude), min=1e-5))


def decode_salience(salience: np.ndarray, threshold: float) -> np.ndarray:
    """Salience [T, 360] -> f0 Hz [T]: weighted mean cents over argmax +-4 bins; 0 where peak <= threshold."""
    salience = np.asarray(salience, dtype=np.float64)
    n_frames, n_bins = salience.shape
    if n_frames == 0:
        return np.zeros(0)
    cents = 20.0 * np.arange(n_bins) + CENTS_OFFSET
    centre = salience.argmax(axis=1)
    offsets = np.arange(-4, 5)
    index = centre[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < n_bins)
    index = np.clip(index, 0, n_bins - 1)
    weights = np.where(inside, np.take_along_axis(salience, index, axis=1), 0.0)
    total = weights.sum(axis=1)
    mean_cents = (weights * cents[index]).sum(axis=1) / np.maximum(total, 1e-12)
    voiced = salience.max(axis=1) > threshold
    return np.where(voiced, 10.0 * 2.0 ** (mean_cents / 1200.0), 0.0)


def _count_indices(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many consecutive `prefix{i}.` entries (i = 0, 1, ...) the state dict has."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_arch(state: Mapping[str, torch.Tensor]) -> RMVPEArch:
    """The network sizes from the keys and shapes of an E2E0 state dict.

    The first conv of the first encoder block is [width, 1, 3, 3]; the stage, block and layer counts
    are the numbers of indexed sub-modules; a GRU's hidden-to-hidden matrix is [3 * hidden, hidden].
    A size the file does not show keeps the published value, and the key/shape check then names what
    does not fit, so a damaged file is reported against the layout it comes closest to.
    """
    published = RMVPEArch()
    first = state.get("unet.encoder.layers.0.conv.0.conv.0.weight")
    gru_layers = {int(m.group(1)) for k in state if (m := re.fullmatch(r"fc\.0\.gru\.weight_ih_l(\d+)", k))}
    n_gru = max(gru_layers) + 1 if gru_layers else (0 if "fc.0.weight" in state else published.n_gru)
    hidden = state.get("fc.0.gru.weight_hh_l0")
    return RMVPEArch(
        width=int(first.shape[0]) if first is not None and first.dim() == 4 else published.width,
        n_blocks=_count_indices(state, "unet.encoder.layers.0.conv.") or published.n_blocks,
        n_stages=_count_indices(state, "unet.encoder.layers.") or published.n_stages,
        n_middle=_count_indices(state, "unet.intermediate.layers.") or published.n_middle,
        n_gru=n_gru,
        gru_hidden=int(hidden.shape[1]) if hidden is not None and hidden.dim() == 2 else published.gru_hidden,
    )


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return dict(obj["model"])
    if isinstance(obj, Mapping) and "unet.encoder.bn.weight" in obj:
        return dict(obj)  # RVC's layout: the bare state dict
    found = sorted(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: not an RMVPE checkpoint; expected {{'model': state_dict}}, found {found}")


def _check_keys(net: RMVPENet, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith("unet.tf.")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})")
        raise CheckpointError(f"{path}: does not match the RMVPE {net.arch.describe()} layout: " + "; ".join(parts))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, device: str) -> RMVPENet:
    del mtime_ns, size  # part of the cache key only: a replaced file is reloaded
    file = Path(path)
    logger.info("loading RMVPE from %s on %s", file, device)
    obj = load_torch_file(file, "RMVPE checkpoint")
    state = _extract_state_dict(obj, file)
    net = RMVPENet.from_arch(infer_arch(state))
    _check_keys(net, state, file)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return net.to(device).eval()


def load_rmvpe(path: str | os.PathLike | None = None, device: str = "cpu") -> RMVPENet:
    """The network from `path` (default pretrain/rmvpe.pt), loaded once per process per file and device."""
    file = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not file.is_file():
        raise CheckpointError(f"RMVPE weights not found at {file}: {WHERE_TO_GET}")
    stat = file.stat()
    return _load_cached(str(file.resolve()), stat.st_mtime_ns, stat.st_size, str(device))


class RMVPEF0Predictor(F0Predictor):
    """RMVPE on 16 kHz audio at 100 frames/s, nearest-resized to the caller's frames.

    Its range is about 31.7-2005 Hz and is not clamped to f0_min..f0_max, as in the original.
    `threshold` (default 0.05) is the salience a frame's peak must exceed to be voiced.
    """

    def __init__(self, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                 threshold: float = 0.05, model_path: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(hop_length=hop_length, sampling_rate=sampling_rate, device=device,
                         threshold=threshold, **kwargs)
        self.model_path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        self.net = load_rmvpe(self.model_path, self.device)

    @torch.inference_mode()
    def salience(self, wav: np.ndarray) -> np.ndarray:
        """Salience [frames at 100/s, 360] for audio at `sampling_rate`."""
        audio = torch.from_numpy(np.asarray(wav, dtype=np.float32)).to(self.device).unsqueeze(0)
        x = resample_sinc(audio, self.sampling_rate, SAMPLE_RATE, lowpass_filter_width=RESAMPLE_ZERO_CROSSINGS,
                          rolloff=RESAMPLE_ROLLOFF)
        if x.shape[-1] < 2:
            return np.zeros((0, N_CLASSES), dtype=np.float32)
        if x.shape[-1] <= MEL_WINDOW // 2:  # reflect padding needs more samples than the pad
            x = F.pad(x, (0, MEL_WINDOW // 2 + 1 - x.shape[-1]))
        return self.mel_salience(log_mel(x))[0].float().cpu().numpy()

    @torch.inference_mode()
    def mel_salience(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, 128, T] -> salience [B, T, 360].

        The frames are padded on the right with zeros (log-mel value 0, not a copy of the signal) up to
        the network's multiple, as the original does: the BiGRU carries the padding into every frame,
        so any other padding changes the salience everywhere.
        """
        n_frames = mel.shape[-1]
        multiple = self.net.frame_multiple
        mel = F.pad(mel, (0, -(-n_frames // multiple) * multiple - n_frames), mode="constant", value=0.0)
        return self.net(mel)[:, :n_frames]

    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        n_frames = self.n_frames(wav)
        if n_frames == 0:
            return np.zeros(0)
        f0 = decode_salience(self.salience(wav), self.threshold)
        return resize_nearest(f0, n_frames)
