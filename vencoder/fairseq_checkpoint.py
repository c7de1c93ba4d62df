"""Read fairseq checkpoints (ContentVec, HuBERT) without fairseq and without running pickled code.

A fairseq checkpoint is a `torch.save` pickle that refers to fairseq classes (the task's
`Dictionary`), sometimes `argparse.Namespace` (older `args`) and omegaconf containers. We load it
with torch's own restricted unpickler (`weights_only=True`) and allow, besides torch's defaults,
only *inert stand-ins* registered under those fairseq / omegaconf / argparse names. A stand-in
never imports or calls anything: it just keeps the arguments and state the pickle gives it. Any
other global (`os.system`, `builtins.eval`, ...) is refused before loading starts, and torch's
unpickler would refuse it again if it were somehow missed.

The globals are found by a static scan of the pickle opcodes (`pickletools.genops`), which
executes nothing.
"""
from __future__ import annotations

import argparse
import io
import logging
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import _weights_only_unpickler

from modules.checkpoint import load_torch_file
from modules.errors import CheckpointError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

# Names mapped to inert stand-ins. Prefixes cover every class fairseq / omegaconf may pickle.
STANDIN_PREFIXES: tuple[str, ...] = ("fairseq.", "omegaconf.")
STANDIN_NAMES: frozenset[str] = frozenset({
    "argparse.Namespace",
    # omegaconf metadata refers to these as type annotations; nothing needs them as values.
    "typing.Any",
    "builtins.dict",
    "builtins.list",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bool",
    "builtins.object",
    # numpy scalars in training meters (extra_state); their values are never used.
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
})


class StandIn:
    """Inert placeholder for a class we do not import. Keeps constructor args and pickled state."""

    qualified_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        obj = super().__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified_name}>"


_standin_cache: dict[str, type[StandIn]] = {}


def standin_class(qualified_name: str) -> type[StandIn]:
    """One stand-in class per qualified name, so `type(x).qualified_name` says what it replaced."""
    cls = _standin_cache.get(qualified_name)
    if cls is None:
        short = qualified_name.rsplit(".", 1)[-1]
        cls = type(short, (StandIn,), {"qualified_name": qualified_name, "__module__": __name__})
        _standin_cache[qualified_name] = cls
    return cls


def may_stand_in(name: str) -> bool:
    return name in STANDIN_NAMES or name.startswith(STANDIN_PREFIXES)


def _globals_in_pickle(data: io.BufferedIOBase | io.BytesIO, n_pickles: int = 1) -> set[str]:
    """GLOBAL / INST names in `n_pickles` consecutive pickles, without executing anything."""
    found: set[str] = set()
    for _ in range(n_pickles):
        recent_strings: list[str] = []
        for opcode, arg, _pos in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                found.add(str(arg).replace(" ", "."))
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                recent_strings = (recent_strings + [str(arg)])[-2:]
            elif opcode.name == "STACK_GLOBAL":
                # Protocol 4+: module and name were pushed as the two preceding strings. If they came
                # from the memo we cannot see them here; torch's unpickler still refuses them.
                if len(recent_strings) == 2:
                    found.add(".".join(recent_strings))
    return found


def pickle_globals(path: Path) -> set[str]:
    """Every global a torch checkpoint's object pickle names (zip format or the legacy format)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not names:
                    raise CheckpointError(f"{path}: a zip file without data.pkl is not a torch checkpoint")
                return _globals_in_pickle(io.BytesIO(archive.read(names[0])))
        with open(path, "rb") as f:
            # Legacy format: magic number, protocol version, system info, then the object itself.
            return _globals_in_pickle(f, n_pickles=4)
    except (ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` with fairseq / omegaconf / argparse classes replaced by stand-ins.

    Raises UnsafeCheckpointError naming the globals that are neither torch-safe nor stand-in-able.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    torch_safe = set(_weights_only_unpickler._get_allowed_globals())
    unsafe = sorted(pickle_globals(path) - torch_safe)
    refused = [name for name in unsafe if not may_stand_in(name)]
    if refused:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load; the pickle refers to code that would run on load: {', '.join(refused)}"
        )
    standins = [(standin_class(name), name) for name in unsafe]
    return load_torch_file(path, "torch checkpoint", map_location, extra_globals=standins)


def to_plain(obj: Any) -> Any:
    """Turn stand-ins for config objects (Namespace, omegaconf containers and nodes, enums) into plain
    dicts, lists and values; other stand-ins (e.g. a fairseq Dictionary) come back unchanged."""
    if isinstance(obj, dict):
        return {key: to_plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(value) for value in obj]
    if isinstance(obj, argparse.Namespace):
        return to_plain(vars(obj))
    if not isinstance(obj, StandIn):
        return obj
    name = obj.qualified_name
    state = obj.__dict__.get("_state")
    args = obj.__dict__.get("_args") or ()
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]
    if name == "argparse.Namespace":
        return to_plain(state or {})
    if name.startswith("omegaconf."):
        if isinstance(state, dict) and "_content" in state:
            content = state["_content"]
            return None if content is None or isinstance(content, str) else to_plain(content)
        if isinstance(state, dict) and "_val" in state:
            return to_plain(state["_val"])
    if state is None and len(args) == 1 and isinstance(args[0], (str, int, float, bool)):
        return args[0]  # an Enum member pickled as EnumClass(value)
    return obj


@dataclass
class FairseqCheckpoint:
    """What we take from a fairseq checkpoint: the model weights and the model / task config."""

    path: Path
    model_state: dict[str, torch.Tensor]
    model_cfg: dict[str, Any] = field(default_factory=dict)
    task_cfg: dict[str, Any] = field(default_factory=dict)


def _config_sections(ckpt: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = to_plain(ckpt.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
        return cfg["model"], task
    args = to_plain(ckpt.get("args"))
    if isinstance(args, dict) and args:
        # Pre-hydra checkpoints keep model and task fields together in one Namespace.
        return args, args
    raise CheckpointError(
        f"{path}: no model config found (neither cfg['model'] nor args); not a fairseq checkpoint?"
    )


def load_fairseq_checkpoint(path: str | Path) -> FairseqCheckpoint:
    """Load a fairseq checkpoint safely; returns float32 weights plus the model and task config."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a fairseq checkpoint dict with a 'model' state dict")
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()
             if isinstance(v, torch.Tensor)}
    model_cfg, task_cfg = _config_sections(ckpt, path)
    logger.debug("%s: %d tensors, model '%s'", path, len(state), model_cfg.get("_name", model_cfg.get("arch")))
    return FairseqCheckpoint(path, state, model_cfg, task_cfg)


def iter_standins(obj: Any) -> Iterable[StandIn]:
    """All stand-ins reachable in a loaded object (for diagnostics and tests)."""
    if isinstance(obj, StandIn):
        yield obj
        for value in obj.__dict__.values():
            yield from iter_standins(value)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_standins(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from iter_standins(value)
