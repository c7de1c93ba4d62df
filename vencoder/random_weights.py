"""Small fake pretrained files for the speech encoders beyond ContentVec / HuBERT-Soft, each in its
published on-disk layout with seeded random weights.

- `write_onnx_encoder`: a tiny conv + linear speech encoder exported to ONNX ([1, 1, N] -> [1, T, D]).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn


class _TinyOnnxEncoder(nn.Module):
    """A 400-sample window with hop 320 (the wav2vec 2.0 conv stack's frame grid), then a linear layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 16, 400, 320)
        self.proj = nn.Linear(16, dim)

    def forward(self, source: torch.Tensor) -> torch.Tensor:  # [1, 1, N] -> [1, T, D]
        return self.proj(torch.tanh(self.conv(source)).transpose(1, 2))


def tiny_onnx_module(dim: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _TinyOnnxEncoder(dim).eval()


def write_onnx_encoder(path: str | Path, dim: int, seed: int = 0, input_name: str = "source",
                       output_name: str = "embed") -> Path:
    """Export the tiny encoder with a dynamic sample axis (the TorchScript exporter: no onnxscript needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = tiny_onnx_module(dim, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 1, 16000),), str(path), input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: {2: "n"}, output_name: {1: "t"}},
                          dynamo=False)
    return path


def write_fairseq_hubert_large(path: str | Path, *, layers: int = 3, dim: int = 32, ffn: int = 64, heads: int = 4,
                               conv_dim: int = 24, conv_pos: int = 16, groups: int = 4, final_dim: int = 16,
                               seed: int = 0) -> Path:
    """A fairseq HuBERT-large checkpoint (layer-norm extractor, pre-LN layers, task normalize on) at small widths."""
    from vencoder.fairseq_writer import _fake_modules, fairseq_hubert_state, fairseq_model_cfg

    state = fairseq_hubert_state(layers, dim, ffn, conv_dim, conv_pos, groups, final_dim, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    del state["feature_extractor.conv_layers.0.2.weight"], state["feature_extractor.conv_layers.0.2.bias"]
    for i in range(7):
        # layer_norm mode: each conv block is (conv, dropout, (transpose, LayerNorm, transpose), gelu)
        state[f"feature_extractor.conv_layers.{i}.2.1.weight"] = 1 + 0.1 * torch.randn(conv_dim, generator=g)
        state[f"feature_extractor.conv_layers.{i}.2.1.bias"] = 0.1 * torch.randn(conv_dim, generator=g)
    model_cfg = fairseq_model_cfg(layers, dim, ffn, heads, conv_dim, conv_pos, groups, final_dim,
                                  layer_norm_first=True)
    model_cfg["extractor_mode"] = "layer_norm"
    task_cfg = {"_name": "hubert_pretraining", "labels": ["km"], "sample_rate": 16000, "normalize": True}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _fake_modules():
        from vencoder.fairseq_writer import _FakeDictionary

        torch.save({"args": None, "cfg": {"_name": None, "model": model_cfg, "task": task_cfg}, "model": state,
                    "criterion": None, "optimizer_history": [], "task_state": {"dictionaries": [_FakeDictionary()]},
                    "extra_state": {"epoch": 1}}, path)
    return path


def whisper_state(n_mels: int = 80, n_ctx: int = 100, dim: int = 32, layers: int = 2, seed: int = 0,
                  text_layers: int = 1, n_vocab: int = 16, n_text_ctx: int = 8) -> dict[str, torch.Tensor]:
    """An OpenAI whisper `model_state_dict` (audio encoder plus a small text decoder) with random weights."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix: str, sd: dict) -> None:
        sd[prefix + ".weight"] = 1 + rnd(dim, scale=0.1)
        sd[prefix + ".bias"] = rnd(dim, scale=0.1)

    def attn(prefix: str, sd: dict) -> None:
        for name in ("query", "key", "value", "out"):
            sd[f"{prefix}.{name}.weight"] = rnd(dim, dim, scale=dim ** -0.5)
            if name != "key":
                sd[f"{prefix}.{name}.bias"] = rnd(dim, scale=0.1)

    sd: dict[str, torch.Tensor] = {
        "encoder.conv1.weight": rnd(dim, n_mels, 3, scale=(3 * n_mels) ** -0.5), "encoder.conv1.bias": rnd(dim),
        "encoder.conv2.weight": rnd(dim, dim, 3, scale=(3 * dim) ** -0.5), "encoder.conv2.bias": rnd(dim),
    }
    # Whisper stores its sinusoidal positions as a buffer: sin over the first half, cos over the second.
    inc = torch.log(torch.tensor(10000.0)) / (dim // 2 - 1)
    scaled = torch.arange(n_ctx)[:, None] * torch.exp(-inc * torch.arange(dim // 2))[None, :]
    sd["encoder.positional_embedding"] = torch.cat([scaled.sin(), scaled.cos()], dim=1)
    for n in range(layers):
        p = f"encoder.blocks.{n}"
        attn(p + ".attn", sd)
        ln(p + ".attn_ln", sd)
        sd[p + ".mlp.0.weight"], sd[p + ".mlp.0.bias"] = rnd(4 * dim, dim, scale=dim ** -0.5), rnd(4 * dim)
        sd[p + ".mlp.2.weight"], sd[p + ".mlp.2.bias"] = rnd(dim, 4 * dim, scale=(4 * dim) ** -0.5), rnd(dim)
        ln(p + ".mlp_ln", sd)
    ln("encoder.ln_post", sd)
    sd["decoder.token_embedding.weight"] = rnd(n_vocab, dim)
    sd["decoder.positional_embedding"] = rnd(n_text_ctx, dim)
    for n in range(text_layers):
        p = f"decoder.blocks.{n}"
        attn(p + ".attn", sd)
        ln(p + ".attn_ln", sd)
        attn(p + ".cross_attn", sd)
        ln(p + ".cross_attn_ln", sd)
        sd[p + ".mlp.0.weight"], sd[p + ".mlp.0.bias"] = rnd(4 * dim, dim), rnd(4 * dim)
        sd[p + ".mlp.2.weight"], sd[p + ".mlp.2.bias"] = rnd(dim, 4 * dim), rnd(dim)
        ln(p + ".mlp_ln", sd)
    ln("decoder.ln", sd)
    return sd


def write_whisper(path: str | Path, *, n_mels: int = 80, n_ctx: int = 100, dim: int = 32, heads: int = 4,
                  layers: int = 2, seed: int = 0, half: bool = False) -> Path:
    """An OpenAI whisper checkpoint: {"dims": ModelDimensions fields, "model_state_dict": ...}."""
    sd = whisper_state(n_mels, n_ctx, dim, layers, seed)
    if half:
        sd = {k: v.half() for k, v in sd.items()}
    dims = {"n_mels": n_mels, "n_audio_ctx": n_ctx, "n_audio_state": dim, "n_audio_head": heads,
            "n_audio_layer": layers, "n_vocab": 16, "n_text_ctx": 8, "n_text_state": dim, "n_text_head": heads,
            "n_text_layer": 1}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims, "model_state_dict": sd}, path)
    return path


def wavlm_cfg(layers: int = 2, dim: int = 32, ffn: int = 64, heads: int = 4, conv_dim: int = 24, conv_pos: int = 16,
              groups: int = 4, num_buckets: int = 320, max_distance: int = 800) -> dict:
    """The WavLMConfig fields a WavLM checkpoint's `cfg` holds (Base+ values except the sizes)."""
    return {
        "extractor_mode": "default", "encoder_layers": layers, "encoder_embed_dim": dim,
        "encoder_ffn_embed_dim": ffn, "encoder_attention_heads": heads, "activation_fn": "gelu",
        "layer_norm_first": False, "conv_feature_layers": f"[({conv_dim},10,5)] + [({conv_dim},3,2)] * 4 + "
        f"[({conv_dim},2,2)] * 2", "conv_bias": False, "feature_grad_mult": 0.1, "normalize": False,
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05,
        "dropout_input": 0.1, "dropout_features": 0.1, "mask_length": 10, "mask_prob": 0.8,
        "mask_selection": "static", "mask_other": 0, "no_mask_overlap": False, "mask_min_space": 1,
        "mask_channel_length": 10, "mask_channel_prob": 0.0, "conv_pos": conv_pos, "conv_pos_groups": groups,
        "relative_position_embedding": True, "num_buckets": num_buckets, "max_distance": max_distance,
        "gru_rel_pos": True,
    }


def wavlm_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A WavLM state dict: the HuBERT keys plus grep_linear / grep_a per layer and layer 0's
    relative_attention_bias table."""
    from vencoder.fairseq_writer import fairseq_hubert_state

    dim, heads, layers = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"], cfg["encoder_layers"]
    conv_dim = int(cfg["conv_feature_layers"].split(",")[0].strip("[("))
    sd = fairseq_hubert_state(layers, dim, cfg["encoder_ffn_embed_dim"], conv_dim, cfg["conv_pos"],
                              cfg["conv_pos_groups"], 8, seed=seed)
    for key in ("final_proj.weight", "final_proj.bias", "label_embs_concat"):
        del sd[key]
    g = torch.Generator().manual_seed(seed + 7)
    for n in range(layers):
        p = f"encoder.layers.{n}.self_attn."
        sd[p + "grep_linear.weight"] = torch.randn(8, dim // heads, generator=g) * 0.5
        sd[p + "grep_linear.bias"] = torch.randn(8, generator=g) * 0.5
        sd[p + "grep_a"] = 1 + 0.5 * torch.randn(1, heads, 1, 1, generator=g)
    sd["encoder.layers.0.self_attn.relative_attention_bias.weight"] = torch.randn(cfg["num_buckets"], heads,
                                                                                  generator=g)
    return sd


def write_wavlm(path: str | Path, seed: int = 0, **sizes) -> Path:
    """Microsoft's WavLM checkpoint layout: {"cfg": WavLMConfig fields, "model": state dict}."""
    cfg = wavlm_cfg(**sizes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": cfg, "model": wavlm_state(cfg, seed)}, path)
    return path


# A pruned model: per-layer conv widths, heads (0 = attention removed), FFN widths (0 = FFN removed).
DPHUBERT_CONV = [(20, 10, 5), (18, 3, 2), (16, 3, 2), (22, 3, 2), (15, 3, 2), (17, 2, 2), (19, 2, 2)]
DPHUBERT_HEADS = [2, 0, 3, 1]
DPHUBERT_FFN = [40, 50, 0, 10]


def dphubert_config(dim: int = 32, head_dim: int = 8, pos_kernel: int = 16, pos_groups: int = 4) -> dict:
    """The keyword arguments of DPHuBERT's wav2vec2_model() as its pruned checkpoint stores them."""
    return {
        "extractor_mode": "group_norm", "extractor_conv_layer_config": [list(c) for c in DPHUBERT_CONV],
        "extractor_conv_bias": False, "encoder_embed_dim": dim, "encoder_projection_dropout": 0.1,
        "encoder_pos_conv_kernel": pos_kernel, "encoder_pos_conv_groups": pos_groups,
        "encoder_num_layers": len(DPHUBERT_HEADS), "encoder_use_attention": [h > 0 for h in DPHUBERT_HEADS],
        "encoder_use_feed_forward": [f > 0 for f in DPHUBERT_FFN], "encoder_num_heads": DPHUBERT_HEADS,
        "encoder_head_dim": head_dim, "encoder_attention_dropout": 0.1, "encoder_ff_interm_features": DPHUBERT_FFN,
        "encoder_ff_interm_dropout": 0.0, "encoder_dropout": 0.1, "encoder_layer_norm_first": False,
        "encoder_layer_drop": 0.05, "aux_num_out": None, "normalize_waveform": False,
        "extractor_prune_conv_channels": False, "encoder_prune_attention_heads": False,
        "encoder_prune_attention_layer": False, "encoder_prune_feed_forward_intermediate": False,
        "encoder_prune_feed_forward_layer": False,
    }


def dphubert_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchaudio wav2vec 2.0 key names (conv_layers.N.conv / .layer_norm, feature_projection,
    transformer.pos_conv_embed.conv weight_g / weight_v, layers.N.attention / feed_forward)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    dim, hd = cfg["encoder_embed_dim"], cfg["encoder_head_dim"]
    sd: dict[str, torch.Tensor] = {}
    in_dim = 1
    for i, (out, k, _s) in enumerate(cfg["extractor_conv_layer_config"]):
        sd[f"feature_extractor.conv_layers.{i}.conv.weight"] = torch.randn(out, in_dim, k, generator=g) / (in_dim * k) ** 0.5
        if i == 0:
            sd["feature_extractor.conv_layers.0.layer_norm.weight"] = 1 + rnd(out)
            sd["feature_extractor.conv_layers.0.layer_norm.bias"] = rnd(out)
        in_dim = out
    sd["encoder.feature_projection.layer_norm.weight"] = 1 + rnd(in_dim)
    sd["encoder.feature_projection.layer_norm.bias"] = rnd(in_dim)
    sd["encoder.feature_projection.projection.weight"] = rnd(dim, in_dim)
    sd["encoder.feature_projection.projection.bias"] = rnd(dim)
    kernel, groups = cfg["encoder_pos_conv_kernel"], cfg["encoder_pos_conv_groups"]
    sd["encoder.transformer.pos_conv_embed.conv.bias"] = rnd(dim)
    sd["encoder.transformer.pos_conv_embed.conv.weight_g"] = rnd(1, 1, kernel).abs() + 0.5
    sd["encoder.transformer.pos_conv_embed.conv.weight_v"] = rnd(dim, dim // groups, kernel)
    sd["encoder.transformer.layer_norm.weight"] = 1 + rnd(dim)
    sd["encoder.transformer.layer_norm.bias"] = rnd(dim)
    for n, (heads, ffn) in enumerate(zip(cfg["encoder_num_heads"], cfg["encoder_ff_interm_features"])):
        p = f"encoder.transformer.layers.{n}."
        if cfg["encoder_use_attention"][n]:
            for proj in ("k_proj", "v_proj", "q_proj"):
                sd[p + f"attention.{proj}.weight"] = rnd(heads * hd, dim)
                sd[p + f"attention.{proj}.bias"] = rnd(heads * hd)
            sd[p + "attention.out_proj.weight"] = rnd(dim, heads * hd)
            sd[p + "attention.out_proj.bias"] = rnd(dim)
        if cfg["encoder_use_feed_forward"][n]:
            sd[p + "feed_forward.intermediate_dense.weight"] = rnd(ffn, dim)
            sd[p + "feed_forward.intermediate_dense.bias"] = rnd(ffn)
            sd[p + "feed_forward.output_dense.weight"] = rnd(dim, ffn)
            sd[p + "feed_forward.output_dense.bias"] = rnd(dim)
        for norm in ("layer_norm", "final_layer_norm"):
            sd[p + f"{norm}.weight"] = 1 + rnd(dim)
            sd[p + f"{norm}.bias"] = rnd(dim)
    return sd


def write_dphubert(path: str | Path, seed: int = 0, **sizes) -> Path:
    """DPHuBERT's pruned checkpoint layout: {"config": wav2vec2_model kwargs, "state_dict": ...}."""
    cfg = dphubert_config(**sizes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg, "state_dict": dphubert_state(cfg, seed)}, path)
    return path
