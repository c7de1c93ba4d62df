"""Read and write the pickled numpy object arrays of so-vits-svc 4.1 without trusting the pickle.

`x.wav.f0.npy` is an object array (2, T) of Python floats and `x.wav.aug_mel.npy` an object array
(2,) holding (float32 mel (T, 128), keyshift float). numpy can only read such files with
`allow_pickle=True`, which would run whatever a crafted file asks for. Here the header is parsed
by numpy and the payload by an unpickler that knows exactly the globals a numpy array needs
(`_reconstruct`, `ndarray`, `dtype`, `scalar`) and refuses every other one. The result is then
checked for the expected shape and converted to plain float32 arrays.

Writing uses the names numpy 1.x pickles (`numpy.core.multiarray`), so the original
(numpy 1.23) can read our files; numpy 2 writes `numpy._core...`, which numpy < 1.26 cannot import.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from modules.atomic_write import atomic_path
from modules.errors import UnsafeCheckpointError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.multiarray import scalar as _scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _scalar


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for numpy arrays only: every global outside `_ALLOWED` is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a numpy array file") from None


class _Numpy1Pickler(pickle._Pickler):  # type: ignore[misc]  # the pure-Python pickler exposes save_global
    """Pickles `_reconstruct` under numpy 1.x's module name so older numpy can load the result."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        if obj is _scalar:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def save_object_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an object array as `np.save` does (format 1.0, pickle protocol 3), atomically."""
    if array.dtype != object:
        raise ValueError("save_object_array is for object arrays; use modules.atomic_write.save_numpy")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
            _Numpy1Pickler(f, protocol=3).dump(array)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Load any .npy: plain arrays with allow_pickle=False, object arrays through the restricted unpickler."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise UnsafeCheckpointError(f"{path}: unsupported .npy format version {version}")
        except ValueError as e:
            if isinstance(e, UnsafeCheckpointError):
                raise
            raise UnsafeCheckpointError(f"{path}: not a .npy file ({e})") from None
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        payload = f.read()
    try:
        array = _ArrayUnpickler(io.BytesIO(payload)).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as e:
        raise UnsafeCheckpointError(f"{path}: refusing the pickled payload ({e})") from None
    if not isinstance(array, np.ndarray) or tuple(array.shape) != tuple(shape):
        raise UnsafeCheckpointError(f"{path}: the pickled payload is not the declared array of shape {shape}")
    return array


def load_f0(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(f0, uv) as float32 [T] from an `x.wav.f0.npy` (object or float array of shape (2, T))."""
    array = load_npy(path)
    if array.ndim != 2 or array.shape[0] != 2:
        raise UnsafeCheckpointError(f"{path}: expected an f0 array of shape (2, T), got {array.shape}")
    try:
        values = np.asarray(array.tolist() if array.dtype == object else array, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise UnsafeCheckpointError(f"{path}: f0 array holds non-numbers ({e})") from None
    return values[0], values[1]


def save_f0(path: str | os.PathLike, f0: np.ndarray, uv: np.ndarray) -> None:
    """Write (f0, uv) as the original does: an object array (2, T) of Python floats."""
    f0 = np.asarray(f0, dtype=np.float32).reshape(-1)
    uv = np.asarray(uv, dtype=np.float32).reshape(-1)
    if f0.shape != uv.shape:
        raise ValueError(f"f0 and uv lengths differ: {f0.shape} vs {uv.shape}")
    save_object_array(path, np.asanyarray((f0, uv), dtype=object))


def load_aug_mel(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """(mel float32 (T, n_mels), keyshift) from an `x.wav.aug_mel.npy`."""
    array = load_npy(path)
    if array.shape != (2,) or not isinstance(array[0], np.ndarray) or array[0].ndim != 2:
        raise UnsafeCheckpointError(f"{path}: expected an object array (mel (T, n_mels), keyshift)")
    try:
        keyshift = float(array[1])
    except (TypeError, ValueError):
        raise UnsafeCheckpointError(f"{path}: keyshift is not a number") from None
    return np.asarray(array[0], dtype=np.float32), keyshift


def save_aug_mel(path: str | os.PathLike, mel: np.ndarray, keyshift: float) -> None:
    """Write (mel (T, n_mels) float32, keyshift) as the original's object array (2,)."""
    array = np.empty(2, dtype=object)
    array[0] = np.asarray(mel, dtype=np.float32)
    array[1] = float(keyshift)
    save_object_array(path, array)
