"""A built-in demo speech encoder for the quick-start when no pretrained ContentVec is present.

It is the real HuBERT architecture at a small size with seeded random weights, written in the
fairseq checkpoint layout, so the quick-start exercises the same loading and encoding code as a
real `checkpoint_best_legacy_500.pt`. Its units carry no learned phonetic content: conversion
quality with it is NOT representative of a real model.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from modules.atomic_write import save_torch
from vencoder.hubert import HubertConfig, HubertModel

DEMO_CONFIG = HubertConfig(
    encoder_layers=12, encoder_embed_dim=96, encoder_ffn_embed_dim=192, encoder_attention_heads=4,
    conv_feature_layers="[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
    conv_pos=32, conv_pos_groups=4, final_dim=256,
)


def write_demo_contentvec(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight HuBERT in the fairseq layout; vec256l9 reads it (256-dim units)."""
    torch.manual_seed(seed)
    model = HubertModel(dataclasses.replace(DEMO_CONFIG))
    model_cfg = {"_name": "hubert", **dataclasses.asdict(DEMO_CONFIG)}
    model_cfg.pop("normalize")
    checkpoint = {
        "args": None,
        "cfg": {"model": model_cfg, "task": {"_name": "hubert_pretraining", "normalize": False, "sample_rate": 16000}},
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "demo": "random weights: built-in quick-start encoder, not ContentVec",
    }
    path = Path(path)
    save_torch(checkpoint, path)
    return path
