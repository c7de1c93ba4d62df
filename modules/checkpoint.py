"""Saving, loading and pruning `G_<step>.pth` / `D_<step>.pth` in the so-vits 4.1 format.

A file is `{'model': state_dict, 'iteration': epoch, 'optimizer': AdamW state_dict,
'learning_rate': initial lr}`, so the original can resume from ours and we from theirs.

Differences from the original loader, on purpose:
- Files are read with `torch.load(weights_only=True)`: a checkpoint cannot run code. Anything
  else is refused with `CheckpointError` naming the file.
- Missing or shape-mismatched tensors still keep their fresh initialisation (this is how a
  pretrained `G_0.pth` with another speaker count is used), but every such key is logged in one
  loud warning and returned, instead of being printed among hundreds of lines.
- A half-precision file is cast to the model's dtype (the original casts the model to the file's).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from modules.atomic_write import save_torch
from modules.errors import CheckpointError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

_CKPT_NAME = re.compile(r"^(?P<prefix>[GD])_(?P<step>\d+)\.pth$")


@dataclass
class LoadReport:
    """What `load_weights` did: keys left at their fresh initialisation, and file keys not used."""

    reinitialized: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)


class LoadedCheckpoint(tuple):
    """`(model, optimizer, learning_rate, iteration)`, plus `.report` (a LoadReport) and `.reinitialized`."""

    report: LoadReport

    def __new__(cls, model: nn.Module, optimizer: Any, learning_rate: Any, iteration: Any, report: LoadReport):
        obj = super().__new__(cls, (model, optimizer, learning_rate, iteration))
        obj.report = report
        return obj

    @property
    def reinitialized(self) -> list[str]:
        return self.report.reinitialized


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", map_location: str | torch.device = "cpu",
                    extra_globals: Sequence[Any] = ()) -> Any:
    """The project's one `torch.load`: `weights_only=True`, so a file cannot run code while it loads.

    `extra_globals` are further classes (inert stand-ins) the unpickler may build. Errors name the file:
    CheckpointError "file not found", UnsafeCheckpointError when the pickle refers to code, and
    CheckpointError "not a <what> (...)" for an empty, truncated or foreign file. torch's
    own advice to retry with `weights_only=False` is never passed on: that is the unsafe workaround.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not {_article(what)} {what} (the file is empty)")
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _weights_only_detail(str(e))
        code = _CODE_REFERENCE.search(str(e))
        if code:
            raise UnsafeCheckpointError(
                f"{path}: refused: the file refers to {code.group(1)}, code that would run on load; only tensors "
                f"and plain containers are read. Load files only from sources you trust."
            ) from None
        raise CheckpointError(f"{path}: not {_article(what)} {what} ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError,
            AttributeError, TypeError, UnicodeDecodeError) as e:
        # Text, random bytes and truncated archives surface as any of these from torch's readers.
        raise CheckpointError(
            f"{path}: not {_article(what)} {what} ({type(e).__name__}: {_weights_only_detail(str(e))})"
        ) from None


# torch names a refused class or function as "GLOBAL module.name" in its error text.
_CODE_REFERENCE = re.compile(r"GLOBAL ([\w.]+)")
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "Re-running")


def _article(noun: str) -> str:
    """'a' or 'an' before `noun`; an acronym goes by the sound of its first letter (an FCPE, an RMVPE)."""
    word = noun.split()[0]
    vowel_sound = word[0] in "aeiouAEIOU" or (word.isupper() and word[0] in "AEFHILMNORSX")
    return "an" if vowel_sound else "a"


def _weights_only_detail(text: str) -> str:
    """The informative line of a torch load error, without its advice to load with weights_only=False."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    detail = (useful or lines or ["unreadable"])[0]
    return detail.replace("WeightsUnpickler error: ", "")[:200] or "unreadable"


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint whose top level is a dict (G_/D_ files, the vocoder's `model`, release files)."""
    data = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(data).__name__}")
    return data


def save_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, learning_rate: float, iteration: int,
    path: str | os.PathLike,
) -> None:
    """Write `{'model', 'iteration', 'optimizer', 'learning_rate'}` atomically (no 'module.' prefix)."""
    state = {
        "model": unwrap(model).state_dict(),
        "iteration": iteration,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "learning_rate": learning_rate,
    }
    save_torch(state, path)
    logger.info("saved model and optimizer state at iteration %s to %s", iteration, path)


# Keys a release file may lack: the posterior encoder is used only in training (compress_model drops it).
TRAINING_ONLY_PREFIXES: tuple[str, ...] = ("enc_q.",)
_MISSING = "missing from the file"


def strip_wrapper_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without the "module." that DistributedDataParallel / DataParallel put in front of them."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def compare_state(model: nn.Module, saved: Mapping[str, Any]) -> LoadReport:
    """Which of the model's keys `saved` cannot fill (missing or another shape), without loading anything."""
    current = unwrap(model).state_dict()
    saved = strip_wrapper_prefix(saved)
    report = LoadReport()
    for key, fresh in current.items():
        value = saved.get(key)
        if not isinstance(value, torch.Tensor):
            report.reinitialized.append(key)
            report.reasons[key] = _MISSING
        elif tuple(value.shape) != tuple(fresh.shape):
            report.reinitialized.append(key)
            report.reasons[key] = f"shape {list(value.shape)} in the file, {list(fresh.shape)} in the model"
    report.unexpected = [k for k in saved if k not in current]
    return report


def load_weights(model: nn.Module, saved: Mapping[str, Any], source: str = "checkpoint", strict: bool = True,
                 optional: tuple[str, ...] = TRAINING_ONLY_PREFIXES, hint: str = "",
                 assign: bool = False) -> LoadReport:
    """The one way weights get into a model; tensors are cast to the model's dtypes and device.

    assign: the model takes the loaded tensors themselves instead of copying them into its own (for a
    model whose own tensors are placeholders: no second copy of every weight in memory).

    strict: every tensor of the model must be in `saved` with its shape (keys starting with one of
    `optional` may be absent and keep their values) and `saved` may hold nothing else; otherwise
    CheckpointError names the first offending tensor, followed by `hint`.
    not strict (resuming training, a pretrained G_0 with another speaker count): missing and
    reshaped tensors keep their fresh initialisation, listed in one warning.
    """
    target = unwrap(model)
    saved = strip_wrapper_prefix(saved)
    report = compare_state(target, saved)
    if strict:
        suffix = f"; {hint}" if hint else ""
        for key in report.reinitialized:
            if report.reasons[key] == _MISSING and key.startswith(optional):
                continue
            verb = "is" if report.reasons[key] == _MISSING else "has"
            raise CheckpointError(f"{source}: '{key}' {verb} {report.reasons[key]}{suffix}")
        if report.unexpected:
            raise CheckpointError(f"{source}: holds tensors the model does not build (e.g. '{report.unexpected[0]}')"
                                  f"{suffix}")
    skip = set(report.reinitialized)
    merged = {
        key: fresh if key in skip else saved[key].to(dtype=fresh.dtype, device=fresh.device)
        for key, fresh in target.state_dict().items()
    }
    target.load_state_dict(merged, strict=True, assign=assign)
    if strict:
        return report
    if report.reinitialized:
        lines = "\n".join(f"  {k}: {report.reasons[k]}" for k in report.reinitialized)
        logger.warning(
            "%s: %d tensor(s) were NOT loaded and keep their fresh random initialisation:\n%s",
            source, len(report.reinitialized), lines,
        )
    if report.unexpected:
        logger.warning("%s: %d tensor(s) in the file are not used by this model: %s",
                       source, len(report.unexpected), ", ".join(report.unexpected[:20])
                       + (" ..." if len(report.unexpected) > 20 else ""))
    return report


def model_state(ckpt: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The `model` state dict of a G_/D_ checkpoint; CheckpointError when there is none."""
    if not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a G checkpoint (no 'model' state dict; keys: {sorted(ckpt)})")
    return dict(ckpt["model"])


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    skip_optimizer: bool = False,
) -> LoadedCheckpoint:
    """Load a G_/D_ checkpoint tolerantly; returns (model, optimizer, learning_rate, iteration).

    The optimizer state is restored only when no parameter changed shape (moments of another shape
    would break the first step); otherwise the optimizer starts fresh, with a warning.
    """
    ckpt = safe_load(path)
    report = load_weights(model, model_state(ckpt, path), source=str(path), strict=False)
    iteration = ckpt.get("iteration", 0)
    learning_rate = ckpt.get("learning_rate")
    opt_state = ckpt.get("optimizer")
    if optimizer is not None and not skip_optimizer and opt_state is not None:
        reshaped = [k for k, why in report.reasons.items() if why.startswith("shape")]
        if reshaped:
            logger.warning("%s: optimizer state not loaded because %d parameter(s) changed shape", path, len(reshaped))
        else:
            try:
                optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"{path}: optimizer state does not fit this model's optimizer ({e})") from None
    logger.info("loaded %s (iteration %s)", path, iteration)
    return LoadedCheckpoint(model, optimizer, learning_rate, iteration, report)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step number in a `G_<step>.pth` name (all digits of the file name, like the original)."""
    digits = "".join(ch for ch in Path(path).name if ch.isdigit())
    if not digits:
        raise CheckpointError(f"{path}: no step number in the file name")
    return int(digits)


def latest_checkpoint_path(directory: str | os.PathLike, pattern: str = "G_*.pth") -> str | None:
    """The checkpoint with the highest step number matching `pattern`, or None if there is none."""
    files = [p for p in Path(directory).glob(pattern) if p.is_file() and any(ch.isdigit() for ch in p.name)]
    if not files:
        return None
    return str(max(files, key=checkpoint_step))


def clean_checkpoints(directory: str | os.PathLike, keep: int) -> list[str]:
    """Delete all but the newest `keep` G_ and D_ files each (by mtime, then step); never `*_0.pth`.

    keep <= 0 keeps everything. Returns the deleted paths.
    """
    if keep <= 0:
        return []
    groups: dict[str, list[tuple[float, int, Path]]] = {"G": [], "D": []}
    for p in Path(directory).iterdir():
        match = _CKPT_NAME.match(p.name)
        if not match or not p.is_file() or int(match["step"]) == 0 or p.name.endswith("_0.pth"):
            continue
        groups[match["prefix"]].append((p.stat().st_mtime, int(match["step"]), p))
    deleted: list[str] = []
    for entries in groups.values():
        entries.sort(key=lambda e: (e[0], e[1]))
        for _, _, p in entries[:-keep]:
            p.unlink()
            deleted.append(str(p))
            logger.info("deleted old checkpoint %s", p)
    return deleted
