"""HuBERT-Soft (`hubertsoft`): bshall's soft-unit model, run on our HubertModel.

The weight file `pretrain/hubert-soft-0d54a1f4.pt` is a plain state dict (optionally with a
`module.` prefix, or under a `hubert` key) in bshall's layout. Its architecture is HuBERT base
(post-LN, 12 layers, group-norm extractor) with a 768 -> 256 `proj`, so its keys are renamed to
fairseq's and the packed attention projection is split into q / k / v. The clip is padded with
40 zeros on each side and all 12 layers are used, giving floor(N / 320) frames.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from modules.errors import CheckpointError
from vencoder.fairseq_checkpoint import safe_torch_load
from vencoder.hubert import HubertConfig, HubertModel
from vencoder.hubert_encoder import HubertUnitsEncoder

HUBERT_SOFT_SOURCE = "https://github.com/bshall/hubert/releases/download/v0.1/hubert-soft-0d54a1f4.pt"

_RENAMES: list[tuple[str, str]] = [
    (r"^feature_extractor\.conv(\d+)\.weight$", r"feature_extractor.conv_layers.\1.0.weight"),
    (r"^feature_extractor\.norm0\.(weight|bias)$", r"feature_extractor.conv_layers.0.2.\1"),
    (r"^feature_projection\.norm\.(weight|bias)$", r"layer_norm.\1"),
    (r"^feature_projection\.projection\.(weight|bias)$", r"post_extract_proj.\1"),
    (r"^positional_embedding\.conv\.(bias|weight_g|weight_v)$", r"encoder.pos_conv.0.\1"),
    (r"^positional_embedding\.conv\.parametrizations\.weight\.original0$", r"encoder.pos_conv.0.weight_g"),
    (r"^positional_embedding\.conv\.parametrizations\.weight\.original1$", r"encoder.pos_conv.0.weight_v"),
    (r"^norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)$", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"^encoder\.layers\.(\d+)\.linear1\.(weight|bias)$", r"encoder.layers.\1.fc1.\2"),
    (r"^encoder\.layers\.(\d+)\.linear2\.(weight|bias)$", r"encoder.layers.\1.fc2.\2"),
    (r"^encoder\.layers\.(\d+)\.norm1\.(weight|bias)$", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.norm2\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"^proj\.(weight|bias)$", r"final_proj.\1"),
]
_IGNORED = ("masked_spec_embed", "label_embedding.weight")
_IN_PROJ = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$")


def soft_to_fairseq(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename bshall HuBERT-Soft keys to fairseq HubertModel keys."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in _IGNORED:
            continue
        packed = _IN_PROJ.match(key)
        if packed:
            layer, kind = packed.groups()
            q, k, v = value.chunk(3, dim=0)
            for part, tensor in (("q", q), ("k", k), ("v", v)):
                out[f"encoder.layers.{layer}.self_attn.{part}_proj.{kind}"] = tensor
            continue
        for pattern, replacement in _RENAMES:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys for HuBERT-Soft: {', '.join(unknown[:4])}")
    return out


def soft_config(state: dict[str, torch.Tensor]) -> HubertConfig:
    """HuBERT-base architecture, with the depth and widths read from the tensors."""
    layers = {int(m.group(1)) for k in state if (m := re.match(r"^encoder\.layers\.(\d+)\.", k))}
    dim = state["encoder.layer_norm.weight"].shape[0]
    conv_pos = state["encoder.pos_conv.0.weight_v"].shape[-1]
    groups = dim // state["encoder.pos_conv.0.weight_v"].shape[1]
    ffn = state["encoder.layers.0.fc1.weight"].shape[0]
    final_dim = state["final_proj.weight"].shape[0]
    conv_dims = [(state[f"feature_extractor.conv_layers.{i}.0.weight"].shape[0],
                  state[f"feature_extractor.conv_layers.{i}.0.weight"].shape[-1])
                 for i in range(sum(1 for k in state if k.startswith("feature_extractor.conv_layers")
                                    and k.endswith(".0.weight")))]
    strides = [5, 2, 2, 2, 2, 2, 2]
    if len(conv_dims) != len(strides):
        raise CheckpointError(f"HuBERT-Soft has 7 conv layers; this file has {len(conv_dims)}")
    spec = " + ".join(f"[({d}, {k}, {s})]" for (d, k), s in zip(conv_dims, strides))
    return HubertConfig(
        encoder_layers=len(layers), encoder_embed_dim=dim, encoder_ffn_embed_dim=ffn,
        encoder_attention_heads=12 if dim % 12 == 0 else max(h for h in (8, 4, 2, 1) if dim % h == 0),
        conv_feature_layers=spec, conv_pos=conv_pos, conv_pos_groups=groups, final_dim=final_dim,
    )


class HubertSoft(HubertUnitsEncoder):
    name = "hubertsoft"
    weight_file = "hubert-soft-0d54a1f4.pt"
    weight_source = HUBERT_SOFT_SOURCE
    output_layer = None
    use_final_proj = True
    edge_pad = (400 - 320) // 2

    def _load_model(self, path: Path) -> HubertModel:
        raw = safe_torch_load(path)
        if isinstance(raw, dict) and isinstance(raw.get("hubert"), dict):
            raw = raw["hubert"]
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(f"{path}: expected a HuBERT-Soft state dict of tensors")
        state = soft_to_fairseq({k: v.float() for k, v in raw.items()}, str(path))
        try:
            cfg = soft_config(state)
        except KeyError as e:
            raise CheckpointError(f"{path}: missing HuBERT-Soft weight {e}") from None
        model = HubertModel(cfg)
        model.load_fairseq_state(state, source=str(path))
        return model
