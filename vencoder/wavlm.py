"""WavLM Base+ (`wavlmbase+`) from Microsoft's `WavLM-Base+.pt`: `{"cfg": WavLMConfig fields, "model": state dict}`.

WavLM is the HuBERT layout (same conv extractor, positional conv, post-LN or pre-LN layers, parameter
names `feature_extractor.*`, `encoder.layers.N.self_attn.q_proj`, ...) plus a gated relative position
bias in every attention layer:

- layer 0 owns `relative_attention_bias` (an embedding of `num_buckets` log-spaced distance buckets,
  bidirectional, exact below `num_buckets / 4`, capped at `max_distance`), giving a bias per head and
  query/key pair that every later layer reuses;
- each layer scales that bias per head and query frame by a gate computed from its own input
  (`grep_linear` on the per-head slices of the unprojected input, two sigmoid gates a and b, and
  the learnt per-head `grep_a`: gate = a * (b * grep_a - 1) + 2), and adds it to the attention logits.

The units are the last layer's output (the whole stack; a pre-LN model's final layer norm applied).
The waveform is layer-normed first only if `cfg.normalize` (False for Base+). Frames: floor((N - 400) / 320) + 1.
Clips of different lengths run in one padded, masked batch.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.errors import CheckpointError
from vencoder.base import PaddedBatchEncoder, load_weights_ignoring_extra
from vencoder.fairseq_checkpoint import safe_torch_load, to_plain
from vencoder.hubert import (
    _ACTIVATIONS,
    DEFAULT_CONV_LAYERS,
    ConvFeatureExtractor,
    PositionalConv,
    _length_mask,
    _normalize_waveforms,
    parse_conv_layers,
)

logger = logging.getLogger(__name__)

WAVLM_SOURCE = ("the WavLM release (github.com/microsoft/unilm/tree/master/wavlm, "
                "'WavLM Base+' checkpoint WavLM-Base+.pt)")
UNUSED_KEYS_PREFIXES = ("mask_emb", "label_embs_concat", "final_proj", "target_glu")


@dataclass
class WavLMConfig:
    """The architecture fields of a WavLM `cfg` dict (defaults: WavLM Base+)."""

    extractor_mode: str = "default"
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_feature_layers: str = DEFAULT_CONV_LAYERS
    conv_bias: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    normalize: bool = False

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str) -> "WavLMConfig":
        values = {f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None}
        try:
            result = cls(**values)
            parse_conv_layers(result.conv_feature_layers)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: unsupported WavLM config ({e})") from None
        if result.extractor_mode not in ("default", "layer_norm"):
            raise CheckpointError(f"{source}: extractor_mode {result.extractor_mode!r} is not supported")
        if result.activation_fn not in _ACTIVATIONS:
            raise CheckpointError(f"{source}: activation_fn {result.activation_fn!r} is not supported")
        if result.encoder_embed_dim % result.encoder_attention_heads:
            raise CheckpointError(f"{source}: encoder_embed_dim is not divisible by the head count")
        return result


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """[query_len, key_len] bucket ids: half the buckets per direction, exact for small distances,
    log-spaced up to max_distance beyond, keys after the query in the upper half."""
    distance = torch.arange(key_len)[None, :] - torch.arange(query_len)[:, None]
    half = num_buckets // 2
    buckets = (distance > 0).long() * half
    distance = distance.abs()
    max_exact = half // 2
    log_bucket = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, log_bucket)


class GatedRelPosAttention(nn.Module):
    def __init__(self, dim: int, heads: int, has_bias_table: bool, cfg: WavLMConfig) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.gated = cfg.gru_rel_pos
        if has_bias_table:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def position_bias(self, length: int) -> torch.Tensor:
        buckets = relative_position_buckets(length, length, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets.to(self.relative_attention_bias.weight.device)).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None,
                position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        h = self.heads
        if position_bias is None and hasattr(self, "relative_attention_bias"):
            position_bias = self.position_bias(t)  # [H, T, T]

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, self.head_dim).transpose(1, 2)

        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0).to(x.dtype)  # [1, H, T, T]
            if self.gated:
                # The gate reads the layer input itself (not its projections), split into heads.
                gates = self.grep_linear(split(x)).view(b, h, t, 2, 4).sum(-1).sigmoid()
                gate_a, gate_b = gates[..., :1], gates[..., 1:]
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias  # [B, H, T, T]
        if key_mask is not None:
            hidden = torch.zeros(b, 1, 1, t, dtype=x.dtype, device=x.device).masked_fill(
                ~key_mask[:, None, None, :], float("-inf"))
            bias = hidden if bias is None else bias + hidden
        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                           attn_mask=bias)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), position_bias


class WavLMLayer(nn.Module):
    def __init__(self, cfg: WavLMConfig, has_bias_table: bool) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = GatedRelPosAttention(dim, cfg.encoder_attention_heads, has_bias_table, cfg)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _ACTIVATIONS[cfg.activation_fn]
        self.layer_norm_first = cfg.layer_norm_first

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None,
                position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.layer_norm_first:
            y, position_bias = self.self_attn(self.self_attn_layer_norm(x), key_mask, position_bias)
            x = x + y
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x)))), position_bias
        y, position_bias = self.self_attn(x, key_mask, position_bias)
        x = self.self_attn_layer_norm(x + y)
        return self.final_layer_norm(x + self.fc2(self.activation(self.fc1(x)))), position_bias


class WavLMEncoder(nn.Module):
    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.pos_conv = PositionalConv(dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.layers = nn.ModuleList(
            WavLMLayer(cfg, has_bias_table=cfg.relative_position_embedding and i == 0)
            for i in range(cfg.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if valid is not None:
            x = x * valid.unsqueeze(-1).to(x.dtype)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        position_bias = None
        for layer in self.layers:
            x, position_bias = layer(x, valid, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class WavLMModel(nn.Module):
    """WavLM inference model with the published parameter names."""

    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        conv_layers = parse_conv_layers(cfg.conv_feature_layers)
        self.feature_extractor = ConvFeatureExtractor(conv_layers, cfg.extractor_mode, cfg.conv_bias)
        feat_dim = conv_layers[-1][0]
        self.layer_norm = nn.LayerNorm(feat_dim)
        self.post_extract_proj = (nn.Linear(feat_dim, cfg.encoder_embed_dim)
                                  if feat_dim != cfg.encoder_embed_dim else None)
        self.encoder = WavLMEncoder(cfg)

    def n_frames(self, n_samples: int) -> int:
        return int(self.feature_extractor.out_lengths(torch.tensor([n_samples]))[0])

    def extract(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, N] zero-padded, lengths [B] -> (last layer [B, T, C], frame lengths [B])."""
        if self.cfg.normalize:
            wav = _normalize_waveforms(wav, lengths)
        frames = self.feature_extractor.out_lengths(lengths)
        if int(frames.min()) < 1:
            raise ValueError(f"audio too short for the encoder: {int(lengths.min())} samples give no frame")
        x = self.layer_norm(self.feature_extractor(wav, lengths).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        valid = None if bool((frames == x.size(1)).all()) else _length_mask(frames, x.size(1))
        return self.encoder(x, valid), frames


def load_wavlm(path: Path) -> WavLMModel:
    raw = safe_torch_load(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict) or raw.get("cfg") is None:
        raise CheckpointError(f"{path}: expected a WavLM checkpoint with 'cfg' and 'model'")
    cfg_dict = to_plain(raw["cfg"])
    if not isinstance(cfg_dict, dict):
        raise CheckpointError(f"{path}: 'cfg' is not a dict of WavLM config fields")
    model = WavLMModel(WavLMConfig.from_dict(cfg_dict, str(path)))
    state = {k: v for k, v in raw["model"].items() if isinstance(v, torch.Tensor)}
    load_weights_ignoring_extra(model, state, path, "WavLM", quiet_prefixes=UNUSED_KEYS_PREFIXES)
    return model


class WavLMBasePlus(PaddedBatchEncoder):
    name = "wavlmbase+"
    weight_file = "WavLM-Base+.pt"
    weight_source = WAVLM_SOURCE

    def load_model(self, path: Path) -> WavLMModel:
        return load_wavlm(path)

    def model_width(self) -> int:
        return self.model.cfg.encoder_embed_dim
