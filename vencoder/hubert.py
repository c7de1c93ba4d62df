"""Our own HuBERT (wav2vec 2.0 style) encoder, with fairseq's parameter names.

Parameter names equal fairseq's `HubertModel` state-dict keys, so a fairseq checkpoint loads
directly (`feature_extractor.conv_layers.N.0.weight`, `encoder.pos_conv.0.weight_g`,
`encoder.layers.N.self_attn.q_proj.weight`, `final_proj.weight`, ...). The architecture is
read from the checkpoint's config: depth, widths, heads, conv stack, extractor mode
(group norm on the first conv / layer norm on every conv) and layer-norm order.

Clips of different lengths run in one padded batch. Everything that mixes time steps is masked
(the first conv layer's group norm statistics, the positional conv input, attention keys), so
each clip's units equal those of running it alone.
"""
from __future__ import annotations

import ast
import logging
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_CONV_LAYERS = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
# Keys of a fairseq HubertModel that inference does not use.
UNUSED_KEYS_PREFIXES = ("mask_emb", "label_embs_concat", "label_embs", "target_glu")


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `conv_feature_layers` string (list literals joined by + and *) without eval()."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression {ast.dump(node)}")

    try:
        layers = value(ast.parse(spec, mode="eval").body)
        result = [tuple(int(v) for v in layer) for layer in layers]
    except (SyntaxError, ValueError, TypeError) as e:
        raise ValueError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) tuples ({e})") from None
    if not result or any(len(layer) != 3 for layer in result):
        raise ValueError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) tuples")
    return result  # type: ignore[return-value]


@dataclass
class HubertConfig:
    """The architecture fields of a fairseq HuBERT config (defaults: HuBERT / ContentVec base)."""

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_feature_layers: str = DEFAULT_CONV_LAYERS
    conv_bias: bool = False
    extractor_mode: str = "default"
    conv_pos: int = 128
    conv_pos_groups: int = 16
    final_dim: int = 0
    normalize: bool = False  # task field: layer-norm the waveform first (HuBERT large)

    @classmethod
    def from_fairseq(cls, model_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any] | None = None,
                     source: str = "checkpoint") -> "HubertConfig":
        """Pick the architecture fields from a fairseq model config; other fields are ignored."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "normalize":
                continue
            if model_cfg.get(f.name) is not None:
                values[f.name] = model_cfg[f.name]
        if task_cfg is not None and task_cfg.get("normalize") is not None:
            values["normalize"] = bool(task_cfg["normalize"])
        try:
            cfg = cls(**values)
            cfg.validate()
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: unsupported HuBERT config ({e})") from None
        layer_type = model_cfg.get("layer_type", "transformer")
        if layer_type not in (None, "transformer"):
            raise CheckpointError(f"{source}: layer_type '{layer_type}' is not supported (only 'transformer')")
        if int(model_cfg.get("pos_conv_depth", 1) or 1) != 1:
            raise CheckpointError(f"{source}: pos_conv_depth > 1 is not supported")
        return cfg

    def validate(self) -> None:
        parse_conv_layers(self.conv_feature_layers)
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'default' or 'layer_norm', got {self.extractor_mode!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_attention_heads")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError("encoder_embed_dim must be divisible by conv_pos_groups")
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(f"activation_fn {self.activation_fn!r} is not one of {', '.join(_ACTIVATIONS)}")

    @property
    def conv_layers(self) -> list[tuple[int, int, int]]:
        return parse_conv_layers(self.conv_feature_layers)

    @property
    def projected_dim(self) -> int:
        return self.final_dim if self.final_dim > 0 else self.encoder_embed_dim


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool, True on valid frames."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is `weight_g * weight_v / ||weight_v||`, the norm taken per kernel tap
    (legacy `weight_norm(dim=2)`, hence fairseq's `weight_g` [1, 1, K] and `weight_v` keys)."""

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class PositionalConv(nn.Module):
    """fairseq's `pos_conv` Sequential: [0] the weight-normed conv; an even kernel drops the last frame."""

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.add_module("0", WeightNormConv1d(channels, kernel, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        y = self._modules["0"](x)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y)


class ConvFeatureExtractor(nn.Module):
    """The waveform conv stack. `conv_layers.N` mirror fairseq's Sequentials: [0] conv, [2] the norm
    ([2] GroupNorm on layer 0 in "default" mode; [2][1] LayerNorm on every layer in "layer_norm" mode)."""

    def __init__(self, layers: Sequence[tuple[int, int, int]], mode: str, bias: bool) -> None:
        super().__init__()
        self.mode = mode
        self.layers = list(layers)
        self.conv_layers = nn.ModuleList()
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(layers):
            block = nn.Sequential(nn.Conv1d(in_dim, dim, kernel, stride, bias=bias), nn.Identity())
            if mode == "layer_norm":
                block.append(nn.Sequential(nn.Identity(), nn.LayerNorm(dim), nn.Identity()))
            elif i == 0:
                block.append(nn.GroupNorm(dim, dim))
            self.conv_layers.append(block)
            in_dim = dim

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _dim, kernel, stride in self.layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """wav [B, N] -> features [B, C, T]; frames past each clip's length are garbage."""
        x = wav.unsqueeze(1)
        for i, block in enumerate(self.conv_layers):
            x = block[0](x)
            lengths = torch.div(lengths - self.layers[i][1], self.layers[i][2], rounding_mode="floor") + 1
            if self.mode == "layer_norm":
                norm = block[2][1]
                x = F.layer_norm(x.transpose(1, 2).float(), norm.normalized_shape, norm.weight, norm.bias,
                                 norm.eps).transpose(1, 2).to(x.dtype)
            elif i == 0:
                x = _masked_group_norm(x, lengths, block[2])
            x = F.gelu(x)
        return x


def _masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """Per-channel GroupNorm (groups == channels) whose statistics use only each clip's valid frames.

    Computed in float32 like fairseq's Fp32GroupNorm."""
    if norm.num_groups != norm.num_channels:
        raise CheckpointError("only per-channel group norm (groups == channels) is supported")
    xf = x.float()
    mask = _length_mask(lengths.clamp(min=1), x.size(-1)).unsqueeze(1).to(xf.dtype)  # [B, 1, T]
    count = mask.sum(dim=-1, keepdim=True)
    mean = (xf * mask).sum(dim=-1, keepdim=True) / count
    var = (((xf - mean) * mask) ** 2).sum(dim=-1, keepdim=True) / count
    y = (xf - mean) * torch.rsqrt(var + norm.eps)
    y = y * norm.weight[None, :, None] + norm.bias[None, :, None]
    return y.to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """One transformer layer; post-LN (base models) or pre-LN (`layer_norm_first`, large models)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, activation: str, layer_norm_first: bool) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _ACTIVATIONS[activation]
        self.layer_norm_first = layer_norm_first

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x + self.self_attn(x, key_mask))
        return self.final_layer_norm(x + self.fc2(self.activation(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.pos_conv = PositionalConv(dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.activation_fn,
                         cfg.layer_norm_first)
            for _ in range(cfg.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, output_layer: int | None) -> torch.Tensor:
        """x [B, T, C]; `valid` [B, T] bool or None; returns the output of layer `output_layer` (1-based).

        As in fairseq, the final layer norm of a pre-LN model is applied only when no layer is chosen."""
        if valid is not None:
            x = x * valid.unsqueeze(-1).to(x.dtype)  # padded frames must look like the conv's zero padding
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        stop = len(self.layers) if output_layer is None else output_layer
        for layer in self.layers[:stop]:
            x = layer(x, valid)
        if self.layer_norm_first and output_layer is None:
            x = self.layer_norm(x)
        return x


class HubertModel(nn.Module):
    """HuBERT inference model with fairseq's parameter names."""

    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        conv_layers = cfg.conv_layers
        self.feature_extractor = ConvFeatureExtractor(conv_layers, cfg.extractor_mode, cfg.conv_bias)
        feat_dim = conv_layers[-1][0]
        self.layer_norm = nn.LayerNorm(feat_dim)
        # fairseq has no projection when the conv width already equals the model width.
        self.post_extract_proj = (nn.Linear(feat_dim, cfg.encoder_embed_dim)
                                  if feat_dim != cfg.encoder_embed_dim else None)
        self.encoder = TransformerEncoder(cfg)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.projected_dim)

    def n_frames(self, n_samples: int) -> int:
        return int(self.feature_extractor.out_lengths(torch.tensor([n_samples]))[0])

    def extract(self, wav: torch.Tensor, lengths: torch.Tensor, output_layer: int | None = None,
                final_proj: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, N] zero-padded, lengths [B] -> (features [B, T, C], frame lengths [B])."""
        if output_layer is not None and not 1 <= output_layer <= len(self.encoder.layers):
            raise ValueError(f"output_layer must be in 1..{len(self.encoder.layers)}, got {output_layer}")
        if self.cfg.normalize:
            wav = _normalize_waveforms(wav, lengths)
        frames = self.feature_extractor.out_lengths(lengths)
        if int(frames.min()) < 1:
            raise ValueError(f"audio too short for the encoder: {int(lengths.min())} samples give no frame")
        x = self.feature_extractor(wav, lengths).transpose(1, 2)
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        valid = None if bool((frames == x.size(1)).all()) else _length_mask(frames, x.size(1))
        x = self.encoder(x, valid, output_layer)
        if final_proj:
            x = self.final_proj(x)
        return x, frames

    def load_fairseq_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load a fairseq HubertModel state dict; missing or mis-shaped keys raise CheckpointError."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise CheckpointError(
                f"{source}: the state dict lacks {len(missing)} HuBERT keys, e.g. {', '.join(missing[:4])}"
            )
        wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
                 if tuple(state[k].shape) != tuple(v.shape)]
        if wrong:
            raise CheckpointError(f"{source}: mis-shaped HuBERT weights: {'; '.join(wrong[:4])}")
        extra = [k for k in state if k not in own and not k.startswith(UNUSED_KEYS_PREFIXES)]
        if extra:
            logger.warning("%s: ignoring %d unexpected keys, e.g. %s", source, len(extra), ", ".join(extra[:4]))
        self.load_state_dict({k: state[k].float() for k in own}, strict=True)


def _normalize_waveforms(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-variance per clip over its valid samples (fairseq's `F.layer_norm(wav, wav.shape)`)."""
    mask = _length_mask(lengths, wav.size(1)).to(wav.dtype)
    count = lengths.to(wav.dtype).unsqueeze(1)
    mean = (wav * mask).sum(1, keepdim=True) / count
    var = (((wav - mean) * mask) ** 2).sum(1, keepdim=True) / count
    return (wav - mean) * torch.rsqrt(var + 1e-5) * mask

