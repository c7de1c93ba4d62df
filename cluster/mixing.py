"""Pull the source singer's units toward the target speaker's own units (`-cm`, `-cr`, `-fr`).

With ratio r, each unit frame c (after resizing to the F0 frame count) becomes `r·t + (1−r)·c`, where t is
- k-means (`kmeans_10000.pt`, keyed by speaker NAME): the speaker's centre nearest to c;
- feature retrieval (`-fr`, `feature_and_index.pkl`, keyed by speaker ID): the average of the 8 indexed
  training units nearest to c (search of the speaker's faiss index), weighted by 1/d⁴ where d² is
  the squared distance, normalised per frame.
r = 0 leaves the units untouched, so a conversion is then identical to one without any file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from cluster.files import SpeakerCentres, load_index_file, load_kmeans_file
from modules.errors import InferenceError

logger = logging.getLogger(__name__)

DEFAULT_KMEANS_PATH = "logs/44k/kmeans_10000.pt"
DEFAULT_INDEX_PATH = "logs/44k/feature_and_index.pkl"
RETRIEVAL_NEIGHBOURS = 8
# A query that equals an indexed unit has distance 0; its weight 1/d⁴ would be infinite. Clamping
# the distance keeps that unit's weight overwhelming (the original divided by zero and produced NaN).
_MIN_SQUARED_DISTANCE = 1e-12


def resolve_cluster_path(path: str | None, ratio: float, feature_retrieval: bool) -> str:
    """The file `-cm` means: none when the ratio is 0; the default file of the chosen kind when `-cm` is empty."""
    if ratio == 0:
        return ""
    if path:
        return str(path)
    return DEFAULT_INDEX_PATH if feature_retrieval else DEFAULT_KMEANS_PATH


class UnitMixer:
    """Loaded k-means centres or feature indexes plus the ratio; call it on [1, D, T] units."""

    def __init__(self, path: str | os.PathLike, ratio: float, feature_retrieval: bool,
                 speakers: Mapping[str, int]) -> None:
        self.path = Path(path)
        self.ratio = float(ratio)
        self.feature_retrieval = bool(feature_retrieval)
        self.speakers = {str(k): int(v) for k, v in speakers.items()}
        self._names = {v: k for k, v in self.speakers.items()}
        self._centres: dict[str, SpeakerCentres] = {}
        self._indexes: dict[int, Any] = {}
        self._cache: dict[Any, Any] = {}  # per speaker: flat index over centres, or reconstructed vectors
        if not self.path.is_file():
            what = "feature index (train_index.py)" if feature_retrieval else "k-means model (cluster/train_cluster.py)"
            raise InferenceError(f"{self.path}: {what} file not found; give its path with -cm or set -cr 0")
        if self.feature_retrieval:
            self._indexes = load_index_file(self.path)
        else:
            self._centres = load_kmeans_file(self.path)

    @property
    def kind(self) -> str:
        return "feature index" if self.feature_retrieval else "k-means model"

    def _key(self, speaker: str | int) -> str | int:
        """The file's key for `speaker`: its name for k-means, its id for the feature index."""
        name, spk_id = str(speaker), self.speakers.get(str(speaker))
        if spk_id is None:
            try:
                spk_id = int(speaker)
            except (TypeError, ValueError):
                spk_id = None
            name = self._names.get(spk_id, name) if spk_id is not None else name
        if self.feature_retrieval:
            if spk_id is None:
                raise InferenceError(f"speaker '{speaker}' has no id in the model's config, needed by the {self.kind} "
                                     f"{self.path}")
            return spk_id
        return name

    def check(self, speaker: str | int, ssl_dim: int) -> None:
        """One-line error unless the file has `speaker` with units as wide as the model's `ssl_dim`."""
        key = self._key(speaker)
        table: Mapping[Any, Any] = self._indexes if self.feature_retrieval else self._centres
        if key not in table:
            have = ", ".join(str(k) for k in sorted(table, key=str))
            label = f"id {key}" if self.feature_retrieval else f"'{key}'"
            raise InferenceError(f"speaker {label} (from -s {speaker}) is not in the {self.kind} {self.path} "
                                 f"(it has {have})")
        width = table[key].d if self.feature_retrieval else table[key].width
        if width != ssl_dim:
            raise InferenceError(f"{self.path}: speaker {key} has {width}-dim units but the model's ssl_dim is "
                                 f"{ssl_dim}; use the {self.kind} made for this model's speech encoder")

    def target_units(self, frames: np.ndarray, speaker: str | int) -> np.ndarray:
        """The speaker's own units [T, D] that frames [T, D] are pulled toward."""
        key = self._key(speaker)
        self.check(speaker, frames.shape[1])
        if self.feature_retrieval:
            return self._retrieve(frames, key)
        return self._nearest_centres(frames, key)

    def _nearest_centres(self, frames: np.ndarray, key: Any) -> np.ndarray:
        import faiss

        centres = self._centres[key].centres
        index = self._cache.get(key)
        if index is None:
            index = self._cache[key] = faiss.IndexFlatL2(centres.shape[1])
            index.add(centres)
        _, nearest = index.search(frames, 1)
        return centres[nearest[:, 0]]

    def _retrieve(self, frames: np.ndarray, key: Any) -> np.ndarray:
        index = self._indexes[key]
        vectors = self._cache.get(key)
        if vectors is None:
            vectors = self._cache[key] = index.reconstruct_n(0, index.ntotal)
        k = min(RETRIEVAL_NEIGHBOURS, int(index.ntotal))
        distances, ids = index.search(frames, k)
        found = ids >= 0  # an IVF search may find fewer than k in the probed lists
        weights = np.where(found, 1.0 / np.square(np.maximum(distances.astype(np.float64), _MIN_SQUARED_DISTANCE)), 0.0)
        totals = weights.sum(axis=1, keepdims=True)
        blended = np.einsum("tk,tkd->td", weights / np.where(totals > 0, totals, 1.0), vectors[np.maximum(ids, 0)])
        none = totals[:, 0] == 0  # nothing found: keep the frame as it is
        blended[none] = frames[none]
        return blended.astype(np.float32)

    def __call__(self, units: torch.Tensor, speaker: str | int) -> torch.Tensor:
        """units [1, D, T] -> ratio·target + (1 − ratio)·units, same shape, dtype and device."""
        if self.ratio == 0:
            return units
        frames = np.ascontiguousarray(units[0].detach().float().cpu().numpy().T)
        target = torch.from_numpy(self.target_units(frames, speaker).T.copy())[None].to(units.device, units.dtype)
        return self.ratio * target + (1.0 - self.ratio) * units


__all__ = ["UnitMixer", "resolve_cluster_path", "DEFAULT_KMEANS_PATH", "DEFAULT_INDEX_PATH"]
