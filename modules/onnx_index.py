"""Per-speaker feature-retrieval indexes for MoeSS: `feature_and_index.pkl` -> `Index-<id>.index`.

`feature_and_index.pkl` (train_index.py) is a pickled dict {speaker id (int): faiss index}. faiss
pickles an index as its class (from `faiss.swigfaiss*`) plus the state {"this": serialized index
bytes}. The file is read with an unpickler that accepts only that shape: every faiss class becomes an
inert placeholder that keeps the bytes, which `faiss.deserialize_index` then parses; any other global
is refused. MoeSS reads each speaker's index from `Index-<id>.index` (faiss `write_index` format).
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from modules.atomic_write import atomic_path
from modules.errors import UnsafeCheckpointError

logger = logging.getLogger(__name__)


class _PickledIndex:
    """What a pickled faiss index is read as: its class name and serialized bytes, nothing executed."""

    class_name = "Index"
    data: bytes | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and isinstance(state.get("this"), (bytes, bytearray)):
            self.data = bytes(state["this"])


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module == "faiss" or module.startswith("faiss.swigfaiss")) and name.startswith("Index"):
            return type(name, (_PickledIndex,), {"class_name": name})
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a feature index file")


def read_feature_indexes(path: str | os.PathLike) -> dict[int, Any]:
    """{speaker id: faiss index} from a feature_and_index.pkl, without running pickled code."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise UnsafeCheckpointError(f"{path}: feature index file not found; build it with train_index.py")
    try:
        with open(path, "rb") as f:
            raw = _IndexUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise UnsafeCheckpointError(f"{path}: refusing the pickled content ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise UnsafeCheckpointError(f"{path}: expected a non-empty dict {{speaker id: faiss index}}")
    indexes: dict[int, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, int) or not isinstance(value, _PickledIndex) or value.data is None:
            raise UnsafeCheckpointError(f"{path}: entry {key!r} is not (speaker id, faiss index)")
        try:
            indexes[key] = faiss.deserialize_index(np.frombuffer(value.data, dtype=np.uint8))
        except RuntimeError as e:
            raise UnsafeCheckpointError(f"{path}: the index of speaker {key} is damaged ({str(e).splitlines()[0]})") from None
    return indexes


def export_feature_indexes(pkl_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write `out_dir/Index-<id>.index` for every speaker in the pkl; returns the paths, by id."""
    import faiss

    written = []
    for speaker_id, index in sorted(read_feature_indexes(pkl_path).items()):
        target = Path(out_dir) / f"Index-{speaker_id}.index"
        with atomic_path(target) as tmp:
            faiss.write_index(index, str(tmp))
        logger.info("speaker %d: %d vectors -> %s", speaker_id, index.ntotal, target)
        written.append(target)
    return written


__all__ = ["export_feature_indexes", "read_feature_indexes"]
