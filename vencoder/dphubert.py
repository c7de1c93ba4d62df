"""DPHuBERT (`dphubert`): the structurally pruned HuBERT base of `pretrain/DPHuBERT-sp0.75.pth`.

The file is `{"config": keyword arguments of DPHuBERT's wav2vec2_model(), "state_dict": ...}` with
torchaudio's wav2vec 2.0 parameter names. Pruning leaves every layer its own size, all read from the
config: conv channels per extractor layer (`extractor_conv_layer_config`), attention heads per layer
(`encoder_num_heads`, each `encoder_head_dim` wide, so the attention width differs from the model
width), FFN width per layer (`encoder_ff_interm_features`), and whole attention or FFN blocks
removed (`encoder_use_attention`, `encoder_use_feed_forward`). In a post-LN layer both layer norms
stay even when the block before them is pruned away. The units are the last layer's output
(so-vits-svc 4.1 calls the model on the raw waveform). Frames: floor((N - 400) / 320) + 1.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.errors import CheckpointError
from vencoder.base import PaddedBatchEncoder, load_weights_ignoring_extra
from vencoder.fairseq_checkpoint import safe_torch_load
from vencoder.hubert import ConvFeatureExtractor, PositionalConv, _length_mask, _normalize_waveforms

logger = logging.getLogger(__name__)

DPHUBERT_SOURCE = "the DPHuBERT release (huggingface.co/pyf98/DPHuBERT, file DPHuBERT-sp0.75.pth)"
# Training-time pruning gates and CTC heads that inference does not use.
IGNORED_KEY_PATTERN = re.compile(r"(hard_concrete|^aux\.)")


@dataclass
class DPHubertConfig:
    conv_layers: list[tuple[int, int, int]]
    extractor_mode: str
    conv_bias: bool
    embed_dim: int
    pos_conv_kernel: int
    pos_conv_groups: int
    use_attention: list[bool]
    use_feed_forward: list[bool]
    num_heads: list[int]
    head_dim: int
    ff_interm_features: list[int]
    layer_norm_first: bool
    normalize_waveform: bool

    @classmethod
    def from_kwargs(cls, kw: Mapping[str, Any], source: str) -> "DPHubertConfig":
        try:
            n = int(kw["encoder_num_layers"])

            def per_layer(name: str, cast) -> list:
                values = kw[name]
                values = [values] * n if not isinstance(values, (list, tuple)) else list(values)
                if len(values) != n:
                    raise ValueError(f"{name} has {len(values)} entries for {n} layers")
                return [cast(v) for v in values]

            conv = [tuple(int(v) for v in layer) for layer in kw["extractor_conv_layer_config"]]
            cfg = cls(
                conv_layers=conv, extractor_mode=str(kw["extractor_mode"]), conv_bias=bool(kw["extractor_conv_bias"]),
                embed_dim=int(kw["encoder_embed_dim"]), pos_conv_kernel=int(kw["encoder_pos_conv_kernel"]),
                pos_conv_groups=int(kw["encoder_pos_conv_groups"]),
                use_attention=per_layer("encoder_use_attention", bool),
                use_feed_forward=per_layer("encoder_use_feed_forward", bool),
                num_heads=per_layer("encoder_num_heads", int), head_dim=int(kw["encoder_head_dim"]),
                ff_interm_features=per_layer("encoder_ff_interm_features", int),
                layer_norm_first=bool(kw["encoder_layer_norm_first"]),
                normalize_waveform=bool(kw.get("normalize_waveform", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: 'config' is not a DPHuBERT wav2vec2_model config ({e})") from None
        if cfg.extractor_mode not in ("group_norm", "layer_norm"):
            raise CheckpointError(f"{source}: extractor_mode {cfg.extractor_mode!r} is not supported")
        if not cfg.conv_layers or any(len(layer) != 3 for layer in cfg.conv_layers):
            raise CheckpointError(f"{source}: extractor_conv_layer_config must list (dim, kernel, stride)")
        return cfg

    @property
    def layers(self) -> int:
        return len(self.num_heads)


class PrunedSelfAttention(nn.Module):
    """Multi-head attention whose width is heads x head_dim, independent of the model width."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.q_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                           attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, inner)
        self.output_dense = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class PrunedLayer(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, ffn: int, layer_norm_first: bool) -> None:
        super().__init__()
        self.attention = PrunedSelfAttention(dim, heads, head_dim) if heads > 0 else None
        self.layer_norm = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, ffn) if ffn > 0 else None
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = layer_norm_first

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            if self.attention is not None:
                x = x + self.attention(self.layer_norm(x), key_mask)
            if self.feed_forward is not None:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x
        if self.attention is not None:
            x = x + self.attention(x, key_mask)
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x)


class FeatureProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim)
        self.projection = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: DPHubertConfig) -> None:
        super().__init__()
        self.pos_conv_embed = PositionalConv(cfg.embed_dim, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.layers = nn.ModuleList(
            PrunedLayer(cfg.embed_dim, heads if use_attn else 0, cfg.head_dim, ffn if use_ff else 0,
                        cfg.layer_norm_first)
            for heads, use_attn, ffn, use_ff in zip(cfg.num_heads, cfg.use_attention, cfg.ff_interm_features,
                                                     cfg.use_feed_forward)
        )
        self.layer_norm_first = cfg.layer_norm_first

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if valid is not None:
            x = x * valid.unsqueeze(-1).to(x.dtype)
        x = x + self.pos_conv_embed(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x, valid)
        return self.layer_norm(x) if self.layer_norm_first else x


class Encoder(nn.Module):
    def __init__(self, cfg: DPHubertConfig) -> None:
        super().__init__()
        self.feature_projection = FeatureProjection(cfg.conv_layers[-1][0], cfg.embed_dim)
        self.transformer = Transformer(cfg)


class DPHubertModel(nn.Module):
    """The pruned wav2vec 2.0 model; parameter names are torchaudio's except the conv extractor and
    positional conv, which reuse our HuBERT modules (`to_own_keys` renames)."""

    def __init__(self, cfg: DPHubertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mode = "default" if cfg.extractor_mode == "group_norm" else "layer_norm"
        self.feature_extractor = ConvFeatureExtractor(cfg.conv_layers, mode, cfg.conv_bias)
        self.encoder = Encoder(cfg)

    def n_frames(self, n_samples: int) -> int:
        return int(self.feature_extractor.out_lengths(torch.tensor([n_samples]))[0])

    def extract(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.normalize_waveform:
            wav = _normalize_waveforms(wav, lengths)
        frames = self.feature_extractor.out_lengths(lengths)
        if int(frames.min()) < 1:
            raise ValueError(f"audio too short for the encoder: {int(lengths.min())} samples give no frame")
        x = self.encoder.feature_projection(self.feature_extractor(wav, lengths).transpose(1, 2))
        valid = None if bool((frames == x.size(1)).all()) else _length_mask(frames, x.size(1))
        return self.encoder.transformer(x, valid), frames


_KEY_RENAMES = [
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.conv\."), r"feature_extractor.conv_layers.\1.0."),
    (re.compile(r"^encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$"),
     "encoder.transformer.pos_conv_embed.0.weight_g"),
    (re.compile(r"^encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$"),
     "encoder.transformer.pos_conv_embed.0.weight_v"),
    (re.compile(r"^encoder\.transformer\.pos_conv_embed\.conv\."), "encoder.transformer.pos_conv_embed.0."),
]


def to_own_keys(state: Mapping[str, torch.Tensor], extractor_mode: str) -> dict[str, torch.Tensor]:
    """torchaudio names -> ours: conv blocks `conv` -> `0`, their norm -> `2` (group norm) or `2.1`
    (layer norm), the positional conv's `conv` -> `0`."""
    norm = r"\1.2." if extractor_mode == "group_norm" else r"\1.2.1."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if IGNORED_KEY_PATTERN.search(key):
            continue
        key = re.sub(r"^(feature_extractor\.conv_layers\.\d+)\.layer_norm\.", norm, key)
        for pattern, replacement in _KEY_RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def load_dphubert(path: Path) -> DPHubertModel:
    raw = safe_torch_load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict) or not isinstance(
            raw.get("state_dict"), dict):
        raise CheckpointError(f"{path}: expected a DPHuBERT file with 'config' and 'state_dict'")
    cfg = DPHubertConfig.from_kwargs(raw["config"], str(path))
    model = DPHubertModel(cfg)
    state = to_own_keys({k: v for k, v in raw["state_dict"].items() if isinstance(v, torch.Tensor)},
                        cfg.extractor_mode)
    load_weights_ignoring_extra(model, state, path, "DPHuBERT")
    return model


class DPHubert(PaddedBatchEncoder):
    name = "dphubert"
    weight_file = "DPHuBERT-sp0.75.pth"
    weight_source = DPHUBERT_SOURCE

    def load_model(self, path: Path) -> DPHubertModel:
        return load_dphubert(path)

    def model_width(self) -> int:
        return self.model.cfg.embed_dim
