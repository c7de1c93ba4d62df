"""Per-speaker feature-retrieval indexes for MoeSS: `feature_and_index.pkl` -> `Index-<id>.index`.

`feature_and_index.pkl` (train_index.py) is read by cluster.files without running pickled code;
MoeSS reads each speaker's index from `Index-<id>.index` (faiss `write_index` format).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from cluster.files import load_index_file
from modules.atomic_write import atomic_path

logger = logging.getLogger(__name__)


def export_feature_indexes(pkl_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write `out_dir/Index-<id>.index` for every speaker in the pkl; returns the paths, by id."""
    import faiss

    written = []
    for speaker_id, index in sorted(load_index_file(pkl_path).items()):
        target = Path(out_dir) / f"Index-{speaker_id}.index"
        with atomic_path(target) as tmp:
            faiss.write_index(index, str(tmp))
        logger.info("speaker %d: %d vectors -> %s", speaker_id, index.ntotal, target)
        written.append(target)
    return written


__all__ = ["export_feature_indexes"]
