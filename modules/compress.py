"""The compress stage (`compress_model.py`): the release file of a G checkpoint.

The release keeps `model` without the training-only posterior encoder (enc_q), optionally in float16,
with `iteration` 0, a fresh empty AdamW state of the full model and `learning_rate` 0.0001, as
so-vits-svc 4.1's compress_model.py writes it. Both this project's inference and the original load
it (the original fills enc_q with fresh values, which inference never uses).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from modules.atomic_write import save_torch
from modules.checkpoint import TRAINING_ONLY_PREFIXES, model_state, safe_load
from modules.config import HParams, load_config

logger = logging.getLogger(__name__)

RELEASE_LEARNING_RATE = 0.0001


def release_state(state: Mapping[str, torch.Tensor], half: bool = False) -> dict[str, torch.Tensor]:
    """The model tensors a release keeps: everything but the training-only ones, optionally fp16."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TRAINING_ONLY_PREFIXES):
            continue
        if half and torch.is_tensor(value) and value.is_floating_point():
            value = value.half()
        out[key] = value
    return out


def fresh_optimizer_state(hps: HParams) -> dict[str, Any]:
    """An empty AdamW state_dict of the full model built from the config (the original stores this)."""
    from models import SynthesizerTrn  # the model is only needed for the parameter list

    model = SynthesizerTrn.from_hparams(hps)
    optimizer = torch.optim.AdamW(
        model.parameters(), hps.train.learning_rate, betas=tuple(hps.train.betas), eps=hps.train.eps
    )
    return optimizer.state_dict()


def default_release_path(input_path: str | os.PathLike, half: bool) -> Path:
    p = Path(input_path)
    return p.with_name(f"{p.stem}_release{'_half' if half else ''}{p.suffix}")


def compress_checkpoint(
    input_path: str | os.PathLike,
    config_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    half: bool = False,
) -> Path:
    """Write the release file of a G checkpoint; returns its path."""
    hps = load_config(config_path)
    ckpt = safe_load(input_path)
    state = model_state(ckpt, input_path)
    out = Path(output_path) if output_path else default_release_path(input_path, half)
    release = {
        "model": release_state(state, half),
        "iteration": 0,
        "optimizer": fresh_optimizer_state(hps),
        "learning_rate": RELEASE_LEARNING_RATE,
    }
    save_torch(release, out)
    dropped = len(state) - len(release["model"])
    logger.info("%s -> %s: kept %d tensors, dropped %d training-only", input_path, out, len(release["model"]), dropped)
    return out
