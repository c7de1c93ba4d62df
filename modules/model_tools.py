"""Checkpoint tools: release compression and static model mixing.

    python -m modules.model_tools compress -c logs/44k/config.json -i logs/44k/G_8000.pth [-hf] [-o OUT]
    python -m modules.model_tools mix -i a.pth b.pth -r 70 30 --mode exact -o mixed.pth

compress: the release file of so-vits-svc 4.1's compress_model.py -- `model` without any key
containing "enc_q" (posterior encoder, training only), optionally float16; `iteration` 0; a fresh,
empty AdamW state of the full model; `learning_rate` 0.0001. Both this project's inference and the
original load it (the original fills enc_q with fresh values, which inference never uses).

mix: every tensor of the FIRST checkpoint's `model` becomes sum_i w_i * model_i[key]; the first
checkpoint's other fields are kept, so the result is a normal G checkpoint. Weights from rates:
  convex  w = softmax(rate / 100)   (the original webUI's "convex" mode; note rates 100/0 give
                                     0.73/0.27, not 1/0, because it is a softmax of rate/100)
  linear  w = rate / 100            (used as given; they need not sum to 1)
  exact   w = rate / sum(rates)     (a true convex combination with exactly the given proportions)
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from modules.checkpoint import safe_load
from modules.config import HParams, load_config
from modules.errors import CheckpointError, ConfigError
from modules.fileio import save_torch

logger = logging.getLogger(__name__)

MIX_MODES = ("convex", "linear", "exact")
RELEASE_LEARNING_RATE = 0.0001
TRAINING_ONLY = "enc_q"


class ModelToolError(ValueError):
    """A checkpoint cannot be compressed or mixed; the message names the file and the problem."""


def _model_state(ckpt: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise ModelToolError(f"{path}: not a G checkpoint (expected a dict with a 'model' state dict)")
    return dict(ckpt["model"])


def release_state(state: Mapping[str, torch.Tensor], half: bool = False) -> dict[str, torch.Tensor]:
    """The model tensors a release keeps: everything except keys containing "enc_q", optionally fp16."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if TRAINING_ONLY in key:
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
    state = _model_state(ckpt, input_path)
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


def mix_weights(rates: Sequence[float], mode: str) -> list[float]:
    """Per-model weights from rates (percent) for a mixing mode; see the module docstring."""
    if mode not in MIX_MODES:
        raise ModelToolError(f"unknown mix mode '{mode}'; choose one of {', '.join(MIX_MODES)}")
    if not rates:
        raise ModelToolError("no rates given")
    rates = [float(r) for r in rates]
    if mode == "convex":
        scaled = [r / 100.0 for r in rates]
        top = max(scaled)
        exps = [math.exp(s - top) for s in scaled]
        return [e / sum(exps) for e in exps]
    if mode == "linear":
        return [r / 100.0 for r in rates]
    if any(r < 0 for r in rates) or sum(rates) <= 0:
        raise ModelToolError(f"exact mode needs non-negative rates with a positive sum, got {rates}")
    return [r / sum(rates) for r in rates]


def mix_state_dicts(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """sum_i w_i * states[i][key] for every key of states[0]; computed in float64, stored in the first's dtype."""
    if len(states) != len(weights):
        raise ModelToolError(f"{len(states)} models but {len(weights)} weights")
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
                raise ModelToolError(f"{name}: has no tensor '{key}' (all models must come from the same config)")
            if other.shape != first.shape:
                raise ModelToolError(
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
        raise ModelToolError("mixing needs at least two checkpoints")
    if len(rates) != len(paths):
        raise ModelToolError(f"{len(paths)} checkpoints but {len(rates)} rates; give one rate per checkpoint")
    weights = mix_weights(rates, mode)
    ckpts = [safe_load(p) for p in paths]
    states = [_model_state(c, p) for c, p in zip(ckpts, paths)]
    result = dict(ckpts[0])
    result["model"] = mix_state_dicts(states, weights, [str(p) for p in paths])
    out = Path(output_path)
    save_torch(result, out)
    logger.info("mixed %d models (%s, weights %s) -> %s", len(paths), mode, [round(w, 4) for w in weights], out)
    return out


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modules.model_tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compress", help="write a release file (no optimizer, no enc_q, optional fp16)")
    add_compress_arguments(comp)
    mix = sub.add_parser("mix", help="static mix of several G checkpoints of the same config")
    mix.add_argument("-i", "--inputs", nargs="+", required=True, help="G checkpoints to mix (the first one's "
                     "keys and non-model fields are kept)")
    mix.add_argument("-r", "--rates", nargs="+", type=float, required=True,
                     help="one rate (percent) per checkpoint, e.g. 70 30")
    mix.add_argument("-m", "--mode", choices=MIX_MODES, default="exact",
                     help="exact: rate/sum(rates); convex: softmax(rate/100) like the original webUI; "
                     "linear: rate/100 as given (default: exact)")
    mix.add_argument("-o", "--output", default="output.pth", help="output checkpoint (default: output.pth)")
    return parser


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default="configs/config.json",
                        help="config.json the checkpoint was trained with (default: configs/config.json)")
    parser.add_argument("-i", "--input", required=True, help="G checkpoint to compress")
    parser.add_argument("-o", "--output", default=None,
                        help="output file (default: <input stem>_release[_half]<ext> next to the input)")
    parser.add_argument("-hf", "--half", action="store_true", help="store the weights as float16")


def run_compress(args: argparse.Namespace) -> Path:
    return compress_checkpoint(args.input, args.config, args.output, args.half)


def run_cli(action: Callable[[], Path]) -> int:
    """Run a tool action for a command line: one-line error and exit 2 on a known failure."""
    try:
        out = action()
    except (ModelToolError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = _build_parser().parse_args(argv)
    if args.command == "compress":
        return run_cli(lambda: run_compress(args))
    return run_cli(lambda: mix_checkpoints(args.inputs, args.rates, args.mode, args.output))


if __name__ == "__main__":
    sys.exit(main())
