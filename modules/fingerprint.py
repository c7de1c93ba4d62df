"""What made a clip's feature files: a small JSON record next to them (`x.wav.features.json`).

Preprocessing writes the record last, after every feature file of the clip, so it also marks the clip
done. A rerun recomputes a clip whose record is missing or differs from what the current settings would
write (another speech encoder or weight file, F0 predictor, rate, hop...), and training refuses features
whose record does not fit its config, naming the clip and the field. Files made by so-vits-svc 4.1 have
no record: preprocessing redoes them, training checks their unit width directly.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from modules.atomic_write import write_text
from modules.config import HParams
from modules.dataset_files import ClipFiles

IDENTITY_BYTES = 1 << 20  # a weight file is identified by its size and a hash of its first MB


def file_identity(path: str | os.PathLike | None) -> str | None:
    """'<size>:<sha256 of the first MB, 16 hex digits>', or None for no file."""
    if path is None or not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(IDENTITY_BYTES)
    return f"{Path(path).stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


def read_record(wav: str | os.PathLike) -> dict[str, Any] | None:
    """The clip's record, or None when there is none or it is unreadable (then the clip counts as unverified)."""
    try:
        data = json.loads(ClipFiles(Path(wav)).record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(wav: str | os.PathLike, fingerprint: Mapping[str, Any]) -> None:
    write_text(ClipFiles(Path(wav)).record, json.dumps({**fingerprint, "wav": file_identity(wav)}, sort_keys=True) + "\n")


def first_difference(record: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """'<field>: <recorded> -> <expected>' for the first field that differs, or None."""
    for key, value in expected.items():
        if record.get(key) != value:
            return f"{key}: {record.get(key)!r} -> {value!r}"
    return None


def training_expectation(hps: HParams) -> dict[str, Any]:
    """The record fields a model trained with this config depends on."""
    return {
        "speech_encoder": hps.model.speech_encoder,
        "ssl_dim": hps.model.ssl_dim,
        "sampling_rate": hps.data.sampling_rate,
        "hop_length": hps.data.hop_length,
        "filter_length": hps.data.filter_length,
        "win_length": hps.data.win_length,
    }
