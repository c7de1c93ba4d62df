"""Small fake pretrained files in the real on-disk layouts, with random weights.

`write_fairseq_hubert` writes a fairseq 0.12 HuBERT checkpoint: the real key names (listed here by
hand from fairseq's HubertModel, not derived from our model code), the real config fields, and
pickled fairseq / argparse / omegaconf objects. Those classes are faked by temporary modules named
`fairseq.*` / `omegaconf.*`, so the pickle names the same globals a real file does.
`write_hubert_soft` writes bshall's HuBERT-Soft state dict layout (packed attention in_proj).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path
from typing import Iterator

import torch

CONV_SPEC = "[(C, 10, 5)] + [(C, 3, 2)] * 4 + [(C, 2, 2)] * 2"
CONV_KERNELS = [10, 3, 3, 3, 3, 2, 2]


class _FakeDictionary:
    """Stands for fairseq.data.dictionary.Dictionary (a plain object pickled by its __dict__)."""

    def __init__(self) -> None:
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>", "0", "1", "2"]
        self.count = [1, 1, 1, 1, 10, 10, 10]
        self.indices = {s: i for i, s in enumerate(self.symbols)}


class _FakeDictConfig:
    """Stands for omegaconf.dictconfig.DictConfig: pickled state holds `_content` of nodes."""

    def __init__(self, content: dict) -> None:
        self._content = {k: _FakeAnyNode(v) for k, v in content.items()}
        self._metadata = None
        self._parent = None

    def __getstate__(self) -> dict:
        return {"_content": self._content, "_metadata": self._metadata, "_parent": self._parent,
                "_flags_cache": None}


class _FakeAnyNode:
    def __init__(self, value) -> None:
        self._val = value

    def __getstate__(self) -> dict:
        return {"_val": self._val, "_metadata": None, "_parent": None}


class _Evil:
    """Pickles to a call of os.system: loading it must be refused."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@contextlib.contextmanager
def _fake_modules() -> Iterator[None]:
    """Temporarily register fake `fairseq.data.dictionary` and `omegaconf.*` modules for pickling."""
    specs = {
        "fairseq.data.dictionary": {"Dictionary": _FakeDictionary},
        "omegaconf.dictconfig": {"DictConfig": _FakeDictConfig},
        "omegaconf.nodes": {"AnyNode": _FakeAnyNode},
    }
    added = []
    originals = {}
    for module_name, classes in specs.items():
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls_name, cls in classes.items():
            originals[cls] = (cls.__module__, cls.__qualname__)
            cls.__module__, cls.__qualname__ = module_name, cls_name
            setattr(sys.modules[module_name], cls_name, cls)
    try:
        yield
    finally:
        for cls, (module, qualname) in originals.items():
            cls.__module__, cls.__qualname__ = module, qualname
        for name in reversed(added):
            sys.modules.pop(name, None)


def fairseq_model_cfg(layers: int, dim: int, ffn: int, heads: int, conv_dim: int, conv_pos: int,
                      groups: int, final_dim: int, layer_norm_first: bool = False) -> dict:
    return {
        "_name": "hubert", "label_rate": 50.0, "extractor_mode": "default", "encoder_layers": layers,
        "encoder_embed_dim": dim, "encoder_ffn_embed_dim": ffn, "encoder_attention_heads": heads,
        "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
        "final_dim": final_dim, "untie_final_proj": False, "layer_norm_first": layer_norm_first,
        "conv_feature_layers": CONV_SPEC.replace("C", str(conv_dim)), "conv_bias": False, "logit_temp": 0.1,
        "target_glu": False, "feature_grad_mult": 0.1, "mask_length": 10, "mask_prob": 0.8,
        "conv_pos": conv_pos, "conv_pos_groups": groups, "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False, "skip_nomask": False,
    }


def fairseq_hubert_state(layers: int = 12, dim: int = 32, ffn: int = 64, conv_dim: int = 32, conv_pos: int = 16,
                         groups: int = 4, final_dim: int = 16, n_classes: int = 7, seed: int = 0,
                         scale: float = 0.3) -> dict[str, torch.Tensor]:
    """A fairseq HubertModel state dict (default extractor, post-LN) with random weights."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def ones_ish(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    sd: dict[str, torch.Tensor] = {"mask_emb": torch.rand(dim, generator=g)}
    in_dim = 1
    for i, k in enumerate(CONV_KERNELS):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = rnd(conv_dim, in_dim, k) / (in_dim * k) ** 0.5 / scale
        if i == 0:
            sd["feature_extractor.conv_layers.0.2.weight"] = ones_ish(conv_dim)
            sd["feature_extractor.conv_layers.0.2.bias"] = rnd(conv_dim)
        in_dim = conv_dim
    sd["post_extract_proj.weight"] = rnd(dim, conv_dim)
    sd["post_extract_proj.bias"] = rnd(dim)
    sd["encoder.pos_conv.0.bias"] = rnd(dim)
    sd["encoder.pos_conv.0.weight_g"] = rnd(1, 1, conv_pos).abs() + 0.5
    sd["encoder.pos_conv.0.weight_v"] = rnd(dim, dim // groups, conv_pos)
    for n in range(layers):
        p = f"encoder.layers.{n}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"] = rnd(dim, dim)
            sd[p + f"self_attn.{proj}.bias"] = rnd(dim)
        sd[p + "self_attn_layer_norm.weight"] = ones_ish(dim)
        sd[p + "self_attn_layer_norm.bias"] = rnd(dim)
        sd[p + "fc1.weight"] = rnd(ffn, dim)
        sd[p + "fc1.bias"] = rnd(ffn)
        sd[p + "fc2.weight"] = rnd(dim, ffn)
        sd[p + "fc2.bias"] = rnd(dim)
        sd[p + "final_layer_norm.weight"] = ones_ish(dim)
        sd[p + "final_layer_norm.bias"] = rnd(dim)
    sd["encoder.layer_norm.weight"] = ones_ish(dim)
    sd["encoder.layer_norm.bias"] = rnd(dim)
    sd["layer_norm.weight"] = ones_ish(conv_dim)
    sd["layer_norm.bias"] = rnd(conv_dim)
    sd["final_proj.weight"] = rnd(final_dim, dim)
    sd["final_proj.bias"] = rnd(final_dim)
    sd["label_embs_concat"] = rnd(n_classes, final_dim)
    return sd


def write_fairseq_hubert(path: str | Path, *, layers: int = 12, dim: int = 32, ffn: int = 64, heads: int = 4,
                         conv_dim: int = 24, conv_pos: int = 16, groups: int = 4, final_dim: int = 16,
                         seed: int = 0, config_style: str = "dict", half: bool = False,
                         legacy_format: bool = False) -> Path:
    """Write a fairseq HuBERT checkpoint. config_style: "dict" (hydra era, plain dict cfg),
    "namespace" (older: args is an argparse.Namespace, cfg absent) or "omegaconf" (cfg.model a DictConfig)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = fairseq_hubert_state(layers, dim, ffn, conv_dim, conv_pos, groups, final_dim, seed=seed)
    if half:
        state = {k: v.half() for k, v in state.items()}
    model_cfg = fairseq_model_cfg(layers, dim, ffn, heads, conv_dim, conv_pos, groups, final_dim)
    task_cfg = {"_name": "hubert_pretraining", "data": "/data", "labels": ["km"], "label_rate": 50.0,
                "sample_rate": 16000, "normalize": False, "enable_padding": False, "max_sample_size": 250000}
    with _fake_modules():
        ckpt: dict = {
            "args": None,
            "cfg": {"_name": None, "common": {"seed": 1, "fp16": True}, "model": model_cfg, "task": task_cfg},
            "model": state,
            "criterion": None,
            "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 500}],
            "task_state": {"dictionaries": [_FakeDictionary()]},
            "extra_state": {"epoch": 3, "previous_training_time": 123.0},
        }
        if config_style == "namespace":
            ckpt["cfg"] = None
            ckpt["args"] = argparse.Namespace(arch="hubert", task="hubert_pretraining", **model_cfg,
                                              **{k: v for k, v in task_cfg.items() if k not in model_cfg})
        elif config_style == "omegaconf":
            ckpt["cfg"]["model"] = _FakeDictConfig(model_cfg)
        elif config_style != "dict":
            raise ValueError(config_style)
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def write_malicious_checkpoint(path: str | Path, marker: str | Path) -> Path:
    """A checkpoint whose pickle runs `touch marker` when loaded with a plain unpickler."""
    path = Path(path)
    with _fake_modules():
        torch.save({"model": {"w": torch.zeros(1)}, "cfg": {"model": {}},
                    "task_state": {"x": _Evil(f"touch {marker}")}}, path)
    return path


def write_hubert_soft(path: str | Path, *, layers: int = 12, dim: int = 48, ffn: int = 64, conv_dim: int = 24,
                      conv_pos: int = 16, groups: int = 4, final_dim: int = 16, seed: int = 1,
                      module_prefix: bool = True) -> Path:
    """bshall HuBERT-Soft layout: conv0..6, norm0, feature_projection, positional_embedding, packed in_proj."""
    fs = fairseq_hubert_state(layers, dim, ffn, conv_dim, conv_pos, groups, final_dim, seed=seed)
    sd: dict[str, torch.Tensor] = {}
    for i in range(len(CONV_KERNELS)):
        sd[f"feature_extractor.conv{i}.weight"] = fs[f"feature_extractor.conv_layers.{i}.0.weight"]
    sd["feature_extractor.norm0.weight"] = fs["feature_extractor.conv_layers.0.2.weight"]
    sd["feature_extractor.norm0.bias"] = fs["feature_extractor.conv_layers.0.2.bias"]
    sd["feature_projection.norm.weight"] = fs["layer_norm.weight"]
    sd["feature_projection.norm.bias"] = fs["layer_norm.bias"]
    sd["feature_projection.projection.weight"] = fs["post_extract_proj.weight"]
    sd["feature_projection.projection.bias"] = fs["post_extract_proj.bias"]
    for name in ("bias", "weight_g", "weight_v"):
        sd[f"positional_embedding.conv.{name}"] = fs[f"encoder.pos_conv.0.{name}"]
    sd["norm.weight"] = fs["encoder.layer_norm.weight"]
    sd["norm.bias"] = fs["encoder.layer_norm.bias"]
    for n in range(layers):
        p, q = f"encoder.layers.{n}.", f"encoder.layers.{n}."
        sd[q + "self_attn.in_proj_weight"] = torch.cat([fs[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        sd[q + "self_attn.in_proj_bias"] = torch.cat([fs[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        sd[q + "self_attn.out_proj.weight"] = fs[p + "self_attn.out_proj.weight"]
        sd[q + "self_attn.out_proj.bias"] = fs[p + "self_attn.out_proj.bias"]
        for ours, theirs in (("linear1", "fc1"), ("linear2", "fc2"), ("norm1", "self_attn_layer_norm"),
                             ("norm2", "final_layer_norm")):
            sd[q + f"{ours}.weight"] = fs[p + f"{theirs}.weight"]
            sd[q + f"{ours}.bias"] = fs[p + f"{theirs}.bias"]
    sd["proj.weight"] = fs["final_proj.weight"]
    sd["proj.bias"] = fs["final_proj.bias"]
    sd["masked_spec_embed"] = fs["mask_emb"]
    sd["label_embedding.weight"] = torch.randn(100, final_dim)
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path
