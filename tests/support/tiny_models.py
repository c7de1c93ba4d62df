"""Tiny random-weight model files for the inference and model-tool tests.

`write_tiny_project(root)` lays out what inference_main.py expects under a project folder:
logs/44k/config.json (a narrow model, hop 512 at 44.1 kHz, speech encoder vec256l9 with 16-dim
units), logs/44k/G_1.pth (random weights, including the normally zero-initialised flow `post`
layers, so the flow is not the identity) and pretrain/checkpoint_best_legacy_500.pt (a tiny fairseq
HuBERT written by the vencoder tests' helper).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from modules.config import HParams, load_config, load_template
from tests.support.train_data import SMALL_MODEL, deep_update
from vencoder.fairseq_writer import write_fairseq_hubert

UNIT_DIM = 16
# Narrower still than the training tests' SMALL_MODEL: inference tests only need the code paths.
TINY_MODEL: dict[str, Any] = {
    **SMALL_MODEL,
    "inter_channels": 8, "hidden_channels": 16, "filter_channels": 32, "upsample_initial_channel": 32,
    "gin_channels": 8, "ssl_dim": UNIT_DIM, "n_speakers": 4, "speech_encoder": "vec256l9",
}
del TINY_MODEL["n_layers_trans_flow"]
SPEAKERS = {"alto": 0, "bass": 1, "soprano": 2}


@dataclass
class TinyProject:
    root: Path
    config: Path
    model: Path
    hps: HParams


def tiny_config_dict(model_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg = load_template(tiny=True)
    cfg["model"] = deep_update(cfg["model"], {**TINY_MODEL, **dict(model_overrides or {})})
    cfg["spk"] = dict(SPEAKERS)
    return cfg


def random_generator(hps: HParams, seed: int = 0) -> torch.nn.Module:
    """A SynthesizerTrn with random weights everywhere (flow `post` too), still weight-normed."""
    from models import SynthesizerTrn

    torch.manual_seed(seed)
    model = SynthesizerTrn.from_hparams(hps)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flow.") and ".post." in name:
                p.normal_(0.0, 0.3)
    return model.eval()


def write_generator(path: Path, model: torch.nn.Module, with_optimizer: bool = True) -> Path:
    """A G_*.pth as train.py writes it (model, iteration, optimizer, learning_rate)."""
    optim = torch.optim.AdamW(model.parameters(), 1e-4, betas=(0.8, 0.99), eps=1e-9)
    if with_optimizer:  # one step so the optimizer holds moment tensors, like a real training file
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optim.step()
        optim.zero_grad(set_to_none=True)
    ckpt = {"model": model.state_dict(), "iteration": 3, "optimizer": optim.state_dict(), "learning_rate": 1e-4}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def write_tiny_project(root: Path, model_overrides: Mapping[str, Any] | None = None, seed: int = 0) -> TinyProject:
    root = Path(root)
    config = root / "logs" / "44k" / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(tiny_config_dict(model_overrides), indent=2), encoding="utf-8")
    hps = load_config(config)
    model_path = write_generator(root / "logs" / "44k" / "G_1.pth", random_generator(hps, seed))
    write_fairseq_hubert(root / "pretrain" / "checkpoint_best_legacy_500.pt", layers=9, dim=32, ffn=64,
                         heads=4, conv_dim=32, final_dim=UNIT_DIM)
    return TinyProject(root, config, model_path, hps)
