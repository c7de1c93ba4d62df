"""Timbre-leak files laid out exactly as so-vits-svc 4.1 writes them, built here from the published format.

- `write_reference_kmeans`: what cluster/train_cluster.py saves: `torch.save` of
  {speaker name: {"n_features_in_": D, "_n_threads": int, "cluster_centers_": float32 ndarray [K, D]}}.
- `write_reference_index`: what train_index.py saves: `pickle.dump` of {speaker id: faiss IVF{n},Flat index}
  with nprobe 1, filled from the given vectors.
- `write_unit_files`: `dataset/44k/<speaker>/<clip>.wav.soft.pt` files ([1, D, T] float tensors) as
  preprocess_hubert_f0.py writes them.
- `malicious_*`: files whose unpickling would run a shell command that creates `marker`.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Mapping

import faiss
import numpy as np
import torch


def write_reference_kmeans(path: Path, centres: Mapping[str, np.ndarray], n_threads: int = 6) -> Path:
    payload = {name: {"n_features_in_": int(c.shape[1]), "_n_threads": n_threads,
                      "cluster_centers_": np.asarray(c, dtype=np.float32)} for name, c in centres.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def write_reference_index(path: Path, vectors: Mapping[int, np.ndarray]) -> Path:
    indexes = {}
    for spk_id, rows in vectors.items():
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n_lists = max(1, min(int(16 * np.sqrt(len(rows))), len(rows) // 39))
        index = faiss.index_factory(rows.shape[1], f"IVF{n_lists},Flat")
        index.train(rows)
        faiss.extract_index_ivf(index).nprobe = 1
        index.add(rows)
        indexes[spk_id] = index
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(indexes, f)
    return path


def write_unit_files(dataset: Path, units: Mapping[str, list[np.ndarray]]) -> Path:
    """units: {speaker: [frames [T, D], ...]} -> dataset/<speaker>/clipN.wav.soft.pt holding [1, D, T]."""
    for speaker, clips in units.items():
        folder = dataset / speaker
        folder.mkdir(parents=True, exist_ok=True)
        for i, frames in enumerate(clips):
            torch.save(torch.from_numpy(np.ascontiguousarray(frames.T, dtype=np.float32))[None],
                       folder / f"clip{i}.wav.soft.pt")
    return dataset


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious_kmeans(path: Path, marker: Path) -> Path:
    """A .pt file whose entry would run `touch marker` when unpickled without restrictions."""
    torch.save({"alto": {"n_features_in_": 4, "_n_threads": 1, "cluster_centers_": _RunsCommand(f"touch {marker}")}},
               path)
    return path


def malicious_index(path: Path, marker: Path) -> Path:
    """A .pkl whose entry would run `touch marker` when unpickled without restrictions."""
    path.write_bytes(pickle.dumps({0: _RunsCommand(f"touch {marker}")}))
    return path
