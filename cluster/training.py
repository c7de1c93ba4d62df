"""Build the per-speaker timbre-leak files from preprocessed units (`x.wav.soft.pt`, [1, D, T_u] at 50 Hz).

- `train_cluster_models`: k-means centres per speaker NAME -> `<output>/kmeans_10000.pt`
  (cluster/train_cluster.py). Speakers are the sub-folders of the dataset folder.
- `train_feature_indexes`: a faiss `IVF{n},Flat` index per speaker ID (from the config's `spk` map) ->
  `<output_dir>/feature_and_index.pkl` (train_index.py). More than 200,000 units are first replaced by
  10,000 k-means centres; the IVF list count is n = min(int(16·sqrt(N)), N // 39), searched with nprobe 1;
  vectors are added in batches of 8192. The IVF's coarse centres come from `cluster.kmeans` when there are
  many lists (faiss's own full k-means would take minutes there).
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cluster.files import SpeakerCentres, save_index_file, save_kmeans_file
from cluster.kmeans import fit_centres
from modules.checkpoint import load_torch_file
from modules.errors import CheckpointError, DatasetError

logger = logging.getLogger(__name__)

KMEANS_FILE = "kmeans_10000.pt"  # the name inference looks for, whatever the centre count
INDEX_FILE = "feature_and_index.pkl"
UNITS_SUFFIX = ".wav.soft.pt"
INDEX_REDUCE_ABOVE = 200_000  # more units than this are summarised by k-means before indexing
INDEX_REDUCED_SIZE = 10_000
INDEX_ADD_BATCH = 8192
FAST_QUANTIZER_LISTS = 256  # from this many IVF lists on, the coarse centres come from cluster.kmeans


def speaker_unit_files(folder: Path) -> list[Path]:
    """A speaker folder's unit files, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(UNITS_SUFFIX))


def load_units(files: Sequence[Path]) -> np.ndarray:
    """Unit frames [N, D] (float32) of all `files`, in order; each file holds [1, D, T_u] or [D, T_u]."""
    parts: list[np.ndarray] = []
    width = None
    for path in files:
        try:
            value = load_torch_file(path, "units file")
        except CheckpointError as e:
            raise DatasetError(str(e)) from None
        if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3) or (value.dim() == 3 and value.size(0) != 1):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise DatasetError(f"{path}: expected units [1, D, T], got {shape}")
        frames = value.reshape(value.shape[-2], value.shape[-1]).float().T.numpy()
        if width is not None and frames.shape[1] != width:
            raise DatasetError(f"{path}: {frames.shape[1]}-dim units, but earlier files of this speaker have {width}")
        width = frames.shape[1]
        parts.append(frames)
    if not parts:
        raise DatasetError("no unit files given")
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _pick_device(gpu: bool) -> str:
    if gpu and not torch.cuda.is_available():
        logger.warning("--gpu given but no CUDA device is available; fitting on the CPU")
        return "cpu"
    return "cuda" if gpu else "cpu"


def _fit_speaker(name: str, files: list[Path], n_clusters: int, device: str, seed: int, threads: int,
                 progress: bool) -> tuple[str, np.ndarray, float, int]:
    if threads > 0:
        import faiss

        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)
    units = load_units(files)
    report = fit_centres(units, n_clusters, seed=seed, device=device, progress=progress, label=name)
    return name, report.centres, report.seconds, len(units)


def train_cluster_models(
    dataset: str | os.PathLike, output: str | os.PathLike, n_clusters: int = 10_000, gpu: bool = False,
    num_processes: int = 1, seed: int = 0, progress: bool = True,
) -> Path:
    """Fit k-means per speaker folder of `dataset` and write `<output>/kmeans_10000.pt`; returns its path."""
    from tqdm import tqdm

    dataset, output = Path(dataset), Path(output)
    if not dataset.is_dir():
        raise DatasetError(f"{dataset}: dataset folder not found (run preprocess_hubert_f0.py first)")
    if n_clusters < 1:
        raise DatasetError(f"--n_clusters must be at least 1, got {n_clusters}")
    jobs: list[tuple[str, list[Path]]] = []
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        files = speaker_unit_files(folder)
        if files:
            jobs.append((folder.name, files))
        else:
            logger.warning("%s: no *%s files; speaker '%s' skipped", folder, UNITS_SUFFIX, folder.name)
    if not jobs:
        raise DatasetError(f"{dataset}: no speaker folder has *{UNITS_SUFFIX} files (run preprocess_hubert_f0.py)")
    device = _pick_device(gpu)
    workers = max(1, min(int(num_processes), len(jobs))) if device == "cpu" else 1
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    results: dict[str, tuple[np.ndarray, float, int]] = {}
    if workers == 1:
        for name, files in tqdm(jobs, desc="speakers", unit="spk", disable=not progress):
            _, centres, seconds, n = _fit_speaker(name, files, n_clusters, device, seed, 0, progress)
            results[name] = (centres, seconds, n)
    else:
        # spawn: forked children of a process that has used OpenMP (faiss, torch) can hang
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_fit_speaker, name, files, n_clusters, device, seed, threads, False)
                       for name, files in jobs]
            for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="speakers",
                               unit="spk", disable=not progress):
                name, centres, seconds, n = future.result()
                results[name] = (centres, seconds, n)
    n_threads = 4 if device != "cpu" else (os.cpu_count() or 1)  # what the original records for sklearn's predict
    models: dict[str, SpeakerCentres] = {}
    for name, _ in jobs:
        centres, seconds, n = results[name]
        if len(centres) < n_clusters:
            logger.warning("speaker '%s': only %d unit frames, so %d centres instead of %d", name, n, len(centres),
                           n_clusters)
        logger.info("speaker '%s': %d centres from %d frames in %.1f s", name, len(centres), n, seconds)
        models[name] = SpeakerCentres(centres, n_threads)
    path = output / KMEANS_FILE
    save_kmeans_file(models, path)
    logger.info("wrote %s (%d speakers)", path, len(models))
    return path


def ivf_list_count(n_rows: int) -> int:
    """IVF lists for n indexed vectors: min(int(16·sqrt(n)), n // 39), at least 1."""
    return max(1, min(int(16 * math.sqrt(n_rows)), n_rows // 39))


def build_feature_index(units: np.ndarray, seed: int = 0, progress: bool = False, label: str = "") -> Any:
    """A trained and filled faiss `IVF{n},Flat` index (nprobe 1) over `units` [N, D]."""
    import faiss

    rows = np.ascontiguousarray(units, dtype=np.float32)
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    if len(rows) > INDEX_REDUCE_ABOVE:
        logger.info("%s: %d units, summarised by %d k-means centres", label or "index", len(rows), INDEX_REDUCED_SIZE)
        rows = fit_centres(rows, INDEX_REDUCED_SIZE, seed=seed, progress=progress, label=label).centres
    n_lists = ivf_list_count(len(rows))
    index = faiss.index_factory(rows.shape[1], f"IVF{n_lists},Flat")
    ivf = faiss.extract_index_ivf(index)
    if n_lists >= FAST_QUANTIZER_LISTS:
        # faiss's own training is full k-means with n_lists centres (minutes for an hour of units); the
        # two-level k-means gives the coarse centres in seconds, and the index is the same kind of file
        ivf.quantizer.add(fit_centres(rows, n_lists, seed=seed, progress=progress, label=f"{label} lists").centres)
        ivf.is_trained = True
    else:
        ivf.cp.seed = seed
        index.train(rows)
    ivf.nprobe = 1
    for start in range(0, len(rows), INDEX_ADD_BATCH):
        index.add(rows[start: start + INDEX_ADD_BATCH])
    return index


def train_feature_indexes(
    root_dir: str | os.PathLike, speakers: Mapping[str, int], output_dir: str | os.PathLike, seed: int = 0,
    progress: bool = True,
) -> Path:
    """Index every config speaker's units from `root_dir/<name>/` and write `<output_dir>/feature_and_index.pkl`."""
    from tqdm import tqdm

    root = Path(root_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (run preprocess_hubert_f0.py first)")
    indexes: dict[int, Any] = {}
    for name, spk_id in tqdm(list(speakers.items()), desc="speakers", unit="spk", disable=not progress):
        folder = root / name
        files = speaker_unit_files(folder) if folder.is_dir() else []
        if not files:
            logger.warning("%s: no *%s files; speaker '%s' (id %s) skipped", folder, UNITS_SUFFIX, name, spk_id)
            continue
        units = load_units(files)
        indexes[int(spk_id)] = build_feature_index(units, seed=seed, progress=progress, label=name)
        logger.info("speaker '%s' (id %d): indexed %d of %d units", name, spk_id, indexes[int(spk_id)].ntotal,
                    len(units))
    if not indexes:
        raise DatasetError(f"{root}: none of the config's speakers ({', '.join(speakers)}) has *{UNITS_SUFFIX} files")
    path = Path(output_dir) / INDEX_FILE
    save_index_file(indexes, path)
    logger.info("wrote %s (%d speakers)", path, len(indexes))
    return path
