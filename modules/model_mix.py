"""Static model mixing: one G checkpoint from several trained on the same config.

Every tensor of the FIRST checkpoint's `model` becomes sum_i w_i * model_i[key]; the first
checkpoint's other fields are kept, so the result is a normal G checkpoint. Weights from rates:
  convex  w = softmax(rate / 100)   (the original web UI's "convex" mode; note rates 100/0 give
                                     0.73/0.27, not 1/0, because it is a softmax of rate/100)
  linear  w = rate / 100            (used as given; they need not sum to 1)
  exact   w = rate / sum(rates)     (a true convex combination with exactly the given proportions)
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from modules.atomic_write import save_torch
from modules.checkpoint import model_state, safe_load
from modules.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

MIX_MODES = ("convex", "linear", "exact")


def mix_weights(rates: Sequence[float], mode: str) -> list[float]:
    """Per-model weights from rates (percent) for a mixing mode; see the module docstring."""
    if mode not in MIX_MODES:
        raise ConfigError(f"unknown mix mode '{mode}'; choose one of {', '.join(MIX_MODES)}")
    if not rates:
        raise ConfigError("no rates given")
    rates = [float(r) for r in rates]
    if mode == "convex":
        scaled = [r / 100.0 for r in rates]
        top = max(scaled)
        exps = [math.exp(s - top) for s in scaled]
        return [e / sum(exps) for e in exps]
    if mode == "linear":
        return [r / 100.0 for r in rates]
    if any(r < 0 for r in rates) or sum(rates) <= 0:
        raise ConfigError(f"exact mode needs non-negative rates with a positive sum, got {rates}")
    return [r / sum(rates) for r in rates]


def mix_state_dicts(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """sum_i w_i * states[i][key] for every key of states[0]; computed in float64, stored in the first's dtype."""
    if len(states) != len(weights):
        raise CheckpointError(f"{len(states)} models but {len(weights)} weights")
    names = list(names) if names else [f"model {i}" for i in range(len(states))]
    mixed: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not torch.is_tensor(first) or not first.is_floating_point():
            mixed[key] = first
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for state, w, name in zip(states, weights, names):
            other = state.get(key)
            if other is None:
                raise CheckpointError(f"{name}: has no tensor '{key}' (all models must come from the same config)")
            if other.shape != first.shape:
                raise CheckpointError(
                    f"{name}: '{key}' has shape {list(other.shape)} but the first model has {list(first.shape)} "
                    f"(all models must come from the same config)"
                )
            acc += w * other.double()
        mixed[key] = acc.to(first.dtype)
    return mixed


def mix_checkpoints(
    paths: Sequence[str | os.PathLike], rates: Sequence[float], mode: str, output_path: str | os.PathLike
) -> Path:
    """Mix G checkpoints and write a normal checkpoint (the first one's other fields kept)."""
    if len(paths) < 2:
        raise ConfigError("mixing needs at least two checkpoints")
    if len(rates) != len(paths):
        raise ConfigError(f"{len(paths)} checkpoints but {len(rates)} rates; give one rate per checkpoint")
    weights = mix_weights(rates, mode)
    ckpts = [safe_load(p) for p in paths]
    states = [model_state(c, p) for c, p in zip(ckpts, paths)]
    result = dict(ckpts[0])
    result["model"] = mix_state_dicts(states, weights, [str(p) for p in paths])
    out = Path(output_path)
    save_torch(result, out)
    logger.info("mixed %d models (%s, weights %s) -> %s", len(paths), mode, [round(w, 4) for w in weights], out)
    return out
