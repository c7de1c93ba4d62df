"""The FCPE pitch network (conv stack + PCmer/conformer layers + 360-bin sigmoid head) and its checkpoints.

Two checkpoint layouts are read, both with torch.load(weights_only=True):

- so-vits-svc 4.1's `pretrain/fcpe.pt`: {'config': {mel, model, loss}, 'model': state_dict} with keys
  `stack.*`, `decoder._layers.N.*`, `norm.*`, `dense_out.*` (every layer has performer attention);
- the torchfcpe package's bundled `assets/fcpe_c_v001.pt`: {'config_dict': ..., 'model': state_dict} with
  keys `input_stack.*`, `net.encoder_layers.N.*`, `norm.*`, `output_proj.*` (that model is conv-only).

The architecture (width, depth, attention or not) is read from the weights themselves; the mel front
end and the f0 range from the config. torchfcpe is never imported (it needs torchaudio).

Forward: mel [B, T, n_mels] -> Conv1d(3) -> GroupNorm(4) -> LeakyReLU -> Conv1d(3) -> layers, each
x += attention(LayerNorm(x)) (if present) then x += conv_module(x) -> LayerNorm -> Linear -> sigmoid.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modules.checkpoint import load_torch_file
from modules.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_F0_MIN = 32.70
DEFAULT_F0_MAX = 1975.5
LOCAL_WINDOW = 4  # the local_argmax decoder averages over argmax +- 4 bins


@dataclass(frozen=True)
class MelConfig:
    """Mel front end of an FCPE checkpoint (torchfcpe defaults when a field is absent)."""

    sr: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    win: int = 1024
    hop: int = 160
    fmin: float = 0.0
    fmax: float = 8000.0


class _ChannelsFirst(nn.Module):
    """[B, T, C] <-> [B, C, T]; a parameterless slot so that state-dict indices match the checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _DepthwiseConv(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _ConvModule(nn.Module):
    """Conformer convolution module: LN, pointwise conv + GLU, depthwise conv, SiLU, pointwise conv."""

    def __init__(self, dim: int, expansion: int = 2, kernel: int = 31) -> None:
        super().__init__()
        inner = dim * expansion
        self.net = nn.Sequential(
            nn.LayerNorm(dim), _ChannelsFirst(), nn.Conv1d(dim, inner * 2, 1), nn.GLU(dim=1),
            _DepthwiseConv(inner, kernel), nn.SiLU(), nn.Conv1d(inner, dim, 1), _ChannelsFirst(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _FastAttention(nn.Module):
    """Holds the performer's fixed random projection (a checkpoint buffer)."""

    def __init__(self, n_features: int, dim_head: int) -> None:
        super().__init__()
        self.register_buffer("projection_matrix", torch.zeros(n_features, dim_head))


def _softmax_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
    """Positive random features approximating the softmax kernel (performer, FAVOR+).

    Queries are stabilised by their own row maximum; keys are not, and carry eps inside the exp,
    exactly as the checkpoints were trained.
    """
    scale = x.shape[-1] ** -0.25
    ratio = projection.shape[0] ** -0.5
    dash = torch.matmul(scale * x, projection.t())
    diag = (x ** 2).sum(dim=-1, keepdim=True) / 2.0 * scale ** 2
    if is_query:
        return ratio * (torch.exp(dash - diag - dash.max(dim=-1, keepdim=True).values) + eps)
    return ratio * torch.exp(dash - diag + eps)


class _SelfAttention(nn.Module):
    """Non-causal performer self-attention (linear in sequence length)."""

    def __init__(self, dim: int, heads: int, dim_head: int, n_features: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qk_norm = qk_norm
        inner = heads * dim_head
        self.fast_attention = _FastAttention(n_features, dim_head)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, -1).transpose(1, 2)  # [B, H, T, D]

        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        if self.qk_norm:
            q = q / (q.norm(dim=-1, keepdim=True) + 1e-8)
            k = k / (k.norm(dim=-1, keepdim=True) + 1e-8)
        projection = self.fast_attention.projection_matrix.to(q.dtype)
        q = _softmax_features(q, projection, is_query=True)
        k = _softmax_features(k, projection, is_query=False)
        normaliser = 1.0 / (torch.matmul(q, k.sum(dim=-2).unsqueeze(-1)).squeeze(-1) + 1e-8)  # [B, H, T]
        context = torch.matmul(k.transpose(-1, -2), v)  # [B, H, F, D]
        out = torch.matmul(q, context) * normaliser.unsqueeze(-1)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, attention: _SelfAttention | None) -> None:
        super().__init__()
        self.conformer = _ConvModule(dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.norm(x))
        return x + self.conformer(x)


class _Encoder(nn.Module):
    def __init__(self, layers: list[_EncoderLayer]) -> None:
        super().__init__()
        self.encoder_layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder_layers:
            x = layer(x)
        return x


@dataclass(frozen=True)
class FCPEArch:
    n_mels: int
    hidden: int
    out_dims: int
    n_layers: int
    attention: bool
    heads: int = 8
    dim_head: int = 64
    n_features: int = 266
    qk_norm: bool = False


class FCPENet(nn.Module):
    """The FCPE network in torchfcpe's key layout; `cent_table` holds each output bin's pitch in cents."""

    def __init__(self, arch: FCPEArch, f0_min: float = DEFAULT_F0_MIN, f0_max: float = DEFAULT_F0_MAX) -> None:
        super().__init__()
        self.arch = arch
        self.input_stack = nn.Sequential(
            nn.Conv1d(arch.n_mels, arch.hidden, 3, 1, 1), nn.GroupNorm(4, arch.hidden), nn.LeakyReLU(),
            nn.Conv1d(arch.hidden, arch.hidden, 3, 1, 1),
        )
        layers = []
        for _ in range(arch.n_layers):
            attn = (_SelfAttention(arch.hidden, arch.heads, arch.dim_head, arch.n_features, arch.qk_norm)
                    if arch.attention else None)
            layers.append(_EncoderLayer(arch.hidden, attn))
        self.net = _Encoder(layers)
        self.norm = nn.LayerNorm(arch.hidden)
        self.output_proj = nn.Linear(arch.hidden, arch.out_dims)
        cents = np.linspace(f0_to_cents(f0_min), f0_to_cents(f0_max), arch.out_dims)
        self.register_buffer("cent_table", torch.tensor(cents, dtype=torch.float32))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, T, n_mels] -> bin activations [B, T, out_dims] in (0, 1)."""
        x = self.input_stack(mel.transpose(1, 2)).transpose(1, 2)
        x = self.norm(self.net(x))
        return torch.sigmoid(self.output_proj(x))

    def decode(self, latent: torch.Tensor, threshold: float) -> torch.Tensor:
        """local_argmax: activation-weighted mean of the cents of argmax +- 4 bins (clamped at the edges);
        f0 = 10 * 2^(cents / 1200) Hz, and 0 where the peak activation is <= threshold. [B, T]."""
        peak, index = latent.max(dim=-1, keepdim=True)
        window = (index + torch.arange(-LOCAL_WINDOW, LOCAL_WINDOW + 1, device=latent.device)).clamp(
            0, latent.size(-1) - 1)
        weights = torch.gather(latent, -1, window)
        cents = (self.cent_table[window] * weights).sum(-1) / weights.sum(-1)
        f0 = 10.0 * 2.0 ** (cents / 1200.0)
        return torch.where(peak[..., 0] > threshold, f0, torch.zeros_like(f0))


def f0_to_cents(f0: float) -> float:
    return 1200.0 * math.log2(f0 / 10.0)


# so-vits-svc 4.1 key prefixes -> torchfcpe's (our module layout)
_PREFIXES = (("stack.", "input_stack."), ("decoder._layers.", "net.encoder_layers."), ("dense_out.", "output_proj."))


def _canonical_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename so-vits-svc keys to ours and fold weight normalisation of the output layer into a plain weight."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in _PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    for g_key, v_key in (("output_proj.weight_g", "output_proj.weight_v"),
                         ("output_proj.parametrizations.weight.original0",
                          "output_proj.parametrizations.weight.original1")):
        if g_key in out and v_key in out:
            g, v = out.pop(g_key).float(), out.pop(v_key).float()
            out["output_proj.weight"] = v * (g / v.norm(dim=1, keepdim=True))
    return out


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict in our layout, config dict) of an FCPE checkpoint; CheckpointError when unusable."""
    ckpt = load_torch_file(path, "FCPE checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not an FCPE checkpoint (expected a dict with 'model' and 'config')")
    config = _as_dict(ckpt.get("config")) or _as_dict(ckpt.get("config_dict"))
    state = _canonical_state(ckpt["model"])
    if "input_stack.0.weight" not in state or "output_proj.weight" not in state:
        raise CheckpointError(f"{path}: state dict has no FCPE input stack / output layer "
                               "(expected keys stack.* / dense_out.* or input_stack.* / output_proj.*)")
    return state, config


def mel_config(config: dict) -> MelConfig:
    """MelConfig from a checkpoint's `mel` section (so-vits 'sampling_rate' or torchfcpe 'sr')."""
    mel = _as_dict(config.get("mel"))
    default = MelConfig()

    def pick(*names: str, fallback: float) -> Any:
        for name in names:
            if mel.get(name) is not None:
                return mel[name]
        return fallback

    return MelConfig(
        sr=int(pick("sampling_rate", "sr", fallback=default.sr)),
        n_mels=int(pick("num_mels", "n_mels", fallback=default.n_mels)),
        n_fft=int(pick("n_fft", fallback=default.n_fft)),
        win=int(pick("win_size", "win_length", fallback=default.win)),
        hop=int(pick("hop_size", "hop_length", fallback=default.hop)),
        fmin=float(pick("fmin", fallback=default.fmin)),
        fmax=float(pick("fmax", fallback=default.fmax)),
    )


def infer_arch(state: dict[str, torch.Tensor], config: dict) -> FCPEArch:
    """Network shape from the weights; head count and q/k normalisation from the config."""
    model_cfg = _as_dict(config.get("model"))
    hidden, n_mels, _ = state["input_stack.0.weight"].shape
    n_layers = len({k.split(".")[2] for k in state if k.startswith("net.encoder_layers.")})
    attention = "net.encoder_layers.0.attn.to_q.weight" in state
    heads = int(model_cfg.get("n_heads") or 8)
    dim_head, n_features = 64, 266
    if attention:
        dim_head = state["net.encoder_layers.0.attn.to_q.weight"].shape[0] // heads
        n_features = state["net.encoder_layers.0.attn.fast_attention.projection_matrix"].shape[0]
    return FCPEArch(n_mels=n_mels, hidden=hidden, out_dims=state["output_proj.weight"].shape[0], n_layers=n_layers,
                    attention=attention, heads=heads, dim_head=dim_head, n_features=n_features,
                    qk_norm=bool(model_cfg.get("use_fa_norm") or False))


def build_from_checkpoint(path: str | os.PathLike) -> tuple[FCPENet, MelConfig]:
    """Read, shape and load an FCPE checkpoint (either layout). Raises CheckpointError."""
    state, config = read_checkpoint(path)
    model_cfg = _as_dict(config.get("model"))
    arch = infer_arch(state, config)
    f0_min = float(model_cfg.get("f0_min") or DEFAULT_F0_MIN)
    f0_max = float(model_cfg.get("f0_max") or DEFAULT_F0_MAX)
    net = FCPENet(arch, f0_min, f0_max)
    if "cent_table" not in state:
        state["cent_table"] = net.cent_table
    state.pop("gaussian_blurred_cent_mask", None)  # a training-only constant
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the FCPE network read from them ({e})") from e
    mel = mel_config(config)
    if mel.n_mels != arch.n_mels:
        raise CheckpointError(f"{path}: config.mel has {mel.n_mels} mel bins but the network takes {arch.n_mels}")
    return net.eval(), mel


def bundled_checkpoint() -> Path | None:
    """torchfcpe's default weights (assets/fcpe_c_v001.pt), found without importing the package."""
    spec = importlib.util.find_spec("torchfcpe")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "fcpe_c_v001.pt"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str, mtime_ns: int) -> tuple[FCPENet, MelConfig]:
    logger.info("loading FCPE weights from %s on %s", path, device)
    net, mel = build_from_checkpoint(path)
    return net.to(device), mel


def load_fcpe(path: str | os.PathLike, device: str = "cpu") -> tuple[FCPENet, MelConfig]:
    """The network and mel config of checkpoint `path` on `device`, loaded once per process (and again
    only if the file changes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: FCPE checkpoint not found")
    return _load_cached(str(path.resolve()), str(device), os.stat(path).st_mtime_ns)
