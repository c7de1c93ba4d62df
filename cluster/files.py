"""Read and write the two timbre-leak files of so-vits-svc 4.1 without running code from them.

`kmeans_10000.pt` (cluster/train_cluster.py) is a `torch.save` pickle of
`{speaker NAME: {"n_features_in_": D, "_n_threads": int, "cluster_centers_": float32 ndarray [K, D]}}`.
It is read with `torch.load(weights_only=True)`, allowing only the four numpy globals an ndarray
needs (`_reconstruct` under its numpy 1 and numpy 2 module names, `ndarray`, `dtype`, `scalar`).
We write it with numpy 1's module names, because so-vits-svc 4.1 pins numpy 1.23, which cannot
import the `numpy._core` names numpy 2 writes.

`feature_and_index.pkl` (train_index.py) is a plain pickle of `{speaker ID (int): faiss index}`.
faiss pickles an index as its class (`faiss.swigfaiss*.Index...`) plus a state
`{"this": <bytes of faiss.serialize_index>}`. A restricted unpickler maps every faiss index class to
an inert holder of those bytes and refuses every other global; the indexes are then rebuilt with
`faiss.deserialize_index`, which parses faiss's binary format and runs no Python.
"""
from __future__ import annotations

import codecs
import io
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from modules.atomic_write import atomic_path
from modules.checkpoint import load_torch_file
from modules.errors import CheckpointError, UnsafeCheckpointError
from modules.npy_files import _Numpy1Pickler

logger = logging.getLogger(__name__)

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.multiarray import scalar as _scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _scalar

# (object, the name a pickle may call it by): the only globals a kmeans file may refer to.
_KMEANS_GLOBALS: list[tuple[Any, str]] = [
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_scalar, "numpy.core.multiarray.scalar"),
    (_scalar, "numpy._core.multiarray.scalar"),
    (np.ndarray, "numpy.ndarray"),
    (np.dtype, "numpy.dtype"),
]
# Unpickling a dtype sets state on an instance of its concrete class (numpy.dtypes.Float32DType, ...).
_KMEANS_GLOBALS += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64")]


@dataclass(frozen=True)
class SpeakerCentres:
    """One speaker's k-means model: the centres and the thread count the original stores with them."""

    centres: np.ndarray  # float32 [K, D], C-contiguous
    n_threads: int = 1

    @property
    def width(self) -> int:
        return int(self.centres.shape[1])


# ----------------------------------------------------------------------------------------- kmeans_10000.pt


def _as_centres(value: Any, path: Path, speaker: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.shape[0] == 0 or value.dtype.kind != "f":
        raise CheckpointError(f"{path}: speaker '{speaker}': cluster_centers_ is not a float matrix [K, D]")
    centres = np.ascontiguousarray(value, dtype=np.float32)
    if not np.all(np.isfinite(centres)):
        raise CheckpointError(f"{path}: speaker '{speaker}': cluster centres contain NaN or infinite values")
    return centres


def load_kmeans_file(path: str | os.PathLike) -> dict[str, SpeakerCentres]:
    """`{speaker name: SpeakerCentres}` from a kmeans_10000.pt (ours or the original's)."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a .pkl index is not one
        raise CheckpointError(f"{path}: not a k-means model file (torch zip archive); for a feature index add -fr")
    try:
        data = load_torch_file(path, "k-means model file", extra_globals=_KMEANS_GLOBALS)
    except CheckpointError as e:  # UnsafeCheckpointError keeps its class
        raise type(e)(f"{e} (expected a k-means model file written by cluster/train_cluster.py)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict {{speaker: k-means}}, got {type(data).__name__}")
    models: dict[str, SpeakerCentres] = {}
    for speaker, entry in data.items():
        if not isinstance(entry, Mapping) or "cluster_centers_" not in entry:
            raise CheckpointError(f"{path}: entry '{speaker}' has no cluster_centers_; not a k-means model file")
        centres = _as_centres(entry["cluster_centers_"], path, str(speaker))
        declared = entry.get("n_features_in_", centres.shape[1])
        if int(declared) != centres.shape[1]:
            raise CheckpointError(f"{path}: speaker '{speaker}': n_features_in_ {declared} but centres are "
                                  f"{centres.shape[1]} wide")
        try:
            n_threads = int(entry.get("_n_threads", 1))
        except (TypeError, ValueError):
            n_threads = 1  # only a hint for sklearn's predict in the original; not used here
        models[str(speaker)] = SpeakerCentres(centres, n_threads)
    if not models:
        raise CheckpointError(f"{path}: the k-means model file holds no speakers")
    return models


class _TorchSaveNumpy1:
    """A stand-in for the `pickle` module handed to torch.save, so arrays are written with numpy 1 names."""

    Pickler = _Numpy1Pickler
    Unpickler = pickle.Unpickler
    __name__ = "pickle"


def save_kmeans_file(models: Mapping[str, SpeakerCentres], path: str | os.PathLike) -> None:
    """Write `{name: {"n_features_in_", "_n_threads", "cluster_centers_"}}` as the original does, atomically."""
    payload = {
        str(name): {
            "n_features_in_": int(m.centres.shape[1]),
            "_n_threads": int(m.n_threads),
            "cluster_centers_": np.ascontiguousarray(m.centres, dtype=np.float32),
        }
        for name, m in models.items()
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp, pickle_module=_TorchSaveNumpy1)


# ----------------------------------------------------------------------------------- feature_and_index.pkl

# faiss loads one of several builds of its SWIG module (plain, avx2, avx512, sve); pickles name the one in use.
_FAISS_MODULE = re.compile(r"^faiss(\.swigfaiss(_[a-z0-9_]+)?)?$")


class _SerializedIndex:
    """Inert holder for the bytes a pickled faiss index carries; it imports and calls nothing."""

    class_name = "Index"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _index_holder(name: str) -> type[_SerializedIndex]:
    return type(name, (_SerializedIndex,), {"class_name": name})


class _IndexFileUnpickler(pickle.Unpickler):
    """Allows faiss index classes (as inert holders) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if _FAISS_MODULE.match(module) and re.fullmatch(r"Index[A-Za-z0-9_]*", name):
            return _index_holder(name)
        if (module, name) == ("_codecs", "encode"):  # protocol 2 pickles bytes as encode(text, "latin1")
            return codecs.encode
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a feature index file")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a feature index file")


def _rebuild_index(holder: _SerializedIndex, path: Path, key: Any) -> Any:
    import faiss

    state = getattr(holder, "state", None)
    data = state.get("this") if isinstance(state, dict) else None
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"{path}: speaker {key}: the pickled {holder.class_name} holds no serialized index")
    try:
        index = faiss.deserialize_index(np.frombuffer(bytes(data), dtype=np.uint8))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: speaker {key}: corrupt faiss index ({str(e).splitlines()[0]})") from None
    if index.ntotal == 0:
        raise CheckpointError(f"{path}: speaker {key}: the faiss index holds no vectors")
    return index


def load_index_file(path: str | os.PathLike) -> dict[int, Any]:
    """`{speaker id: faiss index}` from a feature_and_index.pkl, without unpickling anything but index bytes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: feature index file not found (run train_index.py)")
    try:
        data = _IndexFileUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as e:
        text = str(e).splitlines()[0] if str(e) else "invalid pickle"
        if "not allowed" in text:
            raise UnsafeCheckpointError(f"{path}: refused to load: {text}; the file could run code") from None
        raise CheckpointError(f"{path}: not a readable feature index file ({text})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a readable feature index file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path}: expected a dict {{speaker id: faiss index}}, got {type(data).__name__}")
    indexes: dict[int, Any] = {}
    for key, holder in data.items():
        if not isinstance(holder, _SerializedIndex):
            raise CheckpointError(f"{path}: entry {key!r} is {type(holder).__name__}, not a faiss index")
        try:
            spk_id = int(key)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: key {key!r} is not a speaker id") from None
        indexes[spk_id] = _rebuild_index(holder, path, key)
    return indexes


def save_index_file(indexes: Mapping[int, Any], path: str | os.PathLike) -> None:
    """Pickle `{speaker id: faiss index}` as the original does (faiss's own pickling of each index), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump({int(k): v for k, v in indexes.items()}, f)


__all__ = ["SpeakerCentres", "load_kmeans_file", "save_kmeans_file", "load_index_file", "save_index_file"]
