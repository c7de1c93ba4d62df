"""The file-list and config stage (`preprocess_flist_config.py`).

Speakers are the sub-folders of the dataset, numbered in sorted order unless an existing config
already numbers them; the split is seeded; configs come from the templates with the speech
encoder's dimensions.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from modules.atomic_write import write_text
from modules.audio import audio_duration
from modules.config import load_config, load_diffusion_template, load_template, save_config, save_diffusion_config
from modules.dataset_files import name_problem, speaker_dirs
from modules.errors import AudioError, ConfigError, DatasetError
from vencoder import encoder_spec

logger = logging.getLogger(__name__)

MIN_CLIP_SECONDS = 0.3
VAL_PER_SPEAKER = 2
MIN_CLIPS_PER_SPEAKER = VAL_PER_SPEAKER + 1



@dataclass
class DatasetScan:
    """Usable clips per speaker (sorted names) and the clips left out as too short."""

    root: Path
    clips: dict[str, list[str]]
    too_short: list[tuple[str, str, float]] = field(default_factory=list)


def scan_dataset(source_dir: str | os.PathLike, min_seconds: float = MIN_CLIP_SECONDS) -> DatasetScan:
    """Find source_dir/<speaker>/*.wav and check everything a file list needs, before anything is written.

    Raises DatasetError listing every problem: missing/empty dataset, unusable speaker or file names,
    unreadable headers, speakers with fewer than 3 usable clips.
    """
    root = Path(source_dir)
    speakers = speaker_dirs(root)
    problems: list[str] = []
    clips: dict[str, list[str]] = {}
    too_short: list[tuple[str, str, float]] = []
    for spk_dir in speakers:
        if (problem := name_problem(spk_dir.name)):
            problems.append(f"speaker folder '{spk_dir.name}' {problem}")
            continue
        usable: list[str] = []
        for path in sorted(spk_dir.iterdir()):
            if not path.is_file() or path.name.startswith(".") or not path.name.endswith(".wav"):
                continue
            if (problem := name_problem(path.name)):
                problems.append(f"{path}: file name {problem}")
                continue
            try:
                seconds = audio_duration(path)
            except AudioError as e:
                problems.append(str(e))
                continue
            if seconds < min_seconds:
                too_short.append((spk_dir.name, path.name, seconds))
            else:
                usable.append(path.name)
        if len(usable) < MIN_CLIPS_PER_SPEAKER:
            problems.append(f"{spk_dir}: {len(usable)} usable clips; each speaker needs at least "
                            f"{MIN_CLIPS_PER_SPEAKER} ({VAL_PER_SPEAKER} for validation, 1 or more for training)")
        clips[spk_dir.name] = usable
    if not speakers:
        problems.append(f"{root}: no speaker folders (run resample.py first)")
    if problems:
        raise DatasetError("dataset cannot be used:\n  " + "\n  ".join(problems))
    for spk, name, seconds in too_short:
        logger.warning("%s/%s/%s: left out, %.2f s is shorter than %.1f s", root, spk, name, seconds, min_seconds)
    return DatasetScan(root, clips, too_short)


def read_speaker_map(config_path: str | os.PathLike) -> dict[str, int]:
    """The `spk` map of an existing config, or {} when the file is absent or empty (as the original ships it)."""
    path = Path(config_path)
    if not path.exists() or not path.read_text(encoding="utf-8").strip():
        return {}
    try:
        spk = load_config(path).spk.to_dict()
    except ConfigError as e:
        raise DatasetError(f"{e}; fix or delete it to number speakers afresh") from None
    ids = list(spk.values())
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise DatasetError(f"{path}: 'spk' gives two speakers the same id or a negative id: {spk}")
    return spk


def assign_speaker_ids(names: Iterable[str], existing: dict[str, int] | None = None) -> dict[str, int]:
    """Speaker -> id: existing ids are kept; new names (sorted) take the smallest ids no existing entry uses.

    Ids of speakers that left the dataset are not reused, so an id always means the same voice in a
    model that is fine-tuned further. The result is ordered by id.
    """
    existing = existing or {}
    names = sorted(set(names))
    spk = {n: existing[n] for n in names if n in existing}
    used = set(existing.values())
    next_id = 0
    for name in names:
        if name in spk:
            continue
        while next_id in used:
            next_id += 1
        spk[name] = next_id
        used.add(next_id)
    gone = sorted(set(existing) - set(names))
    if gone:
        logger.warning("speakers in the existing config without clips are dropped (ids not reused): %s", ", ".join(gone))
    return dict(sorted(spk.items(), key=lambda item: item[1]))


def split_dataset(clips: dict[str, list[str]], source_dir: str, seed: int = 1234,
                  n_val: int = VAL_PER_SPEAKER) -> tuple[list[str], list[str]]:
    """Seeded split: per speaker (sorted), shuffle and take n_val for validation; then shuffle both lists.

    Lines are `source_dir + "/" + speaker + "/" + file`, as the original writes them.
    """
    rng = random.Random(seed)
    prefix = source_dir.rstrip("/\\") or source_dir
    train: list[str] = []
    val: list[str] = []
    for speaker in sorted(clips):
        files = sorted(clips[speaker])
        rng.shuffle(files)
        lines = [f"{prefix}/{speaker}/{name}" for name in files]
        val.extend(lines[:n_val])
        train.extend(lines[n_val:])
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def encoder_dim(speech_encoder: str) -> int:
    """Unit width of a speech encoder this project builds; ConfigError (listing the built ones) otherwise."""
    return encoder_spec(speech_encoder).dim


def build_configs(spk: dict[str, int], speech_encoder: str = "vec768l12", vol_aug: bool = False, tiny: bool = False,
                  train_list: str | None = None, val_list: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json and diffusion.yaml contents from the templates (the unit width sets ssl_dim and gin_channels)."""
    if not spk:
        raise DatasetError("no speakers to write into the config")
    dim = encoder_dim(speech_encoder)
    config = load_template(tiny=tiny)
    diffusion = load_diffusion_template()
    n_speakers = max(spk.values()) + 1
    model = config["model"]
    model["ssl_dim"] = dim
    model["gin_channels"] = dim
    if dim != 256:  # the original leaves filter_channels alone for the 256-wide encoders
        model["filter_channels"] = dim
    if tiny:
        model["filter_channels"] = 512
    model["speech_encoder"] = speech_encoder
    model["n_speakers"] = n_speakers
    if vol_aug:
        config["train"]["vol_aug"] = True
        model["vol_embedding"] = True
    config["spk"] = dict(spk)
    for key, given in (("training_files", train_list), ("validation_files", val_list)):
        if given is not None and os.path.normpath(given) != os.path.normpath(config["data"][key]):
            config["data"][key] = given
            diffusion["data"][key] = given
    diffusion["data"]["encoder"] = speech_encoder
    diffusion["data"]["encoder_out_channels"] = dim
    diffusion["model"]["n_spk"] = n_speakers
    diffusion["spk"] = dict(spk)
    return config, diffusion


@dataclass
class FlistConfigResult:
    spk: dict[str, int]
    train: list[str]
    val: list[str]
    too_short: list[tuple[str, str, float]]


def prepare_flist_config(source_dir: str = "./dataset/44k", train_list: str = "./filelists/train.txt",
                         val_list: str = "./filelists/val.txt", config_out: str = "./configs/config.json",
                         diffusion_out: str = "./configs/diffusion.yaml", speech_encoder: str = "vec768l12",
                         vol_aug: bool = False, tiny: bool = False, seed: int = 1234) -> FlistConfigResult:
    """Scan, number, split and build everything in memory first; only then write the four files."""
    encoder_dim(speech_encoder)  # fail on a bad encoder before scanning
    scan = scan_dataset(source_dir)
    spk = assign_speaker_ids(scan.clips, read_speaker_map(config_out))
    train, val = split_dataset(scan.clips, source_dir, seed)
    config, diffusion = build_configs(spk, speech_encoder, vol_aug, tiny, train_list, val_list)
    write_text(train_list, "".join(f"{line}\n" for line in train))
    write_text(val_list, "".join(f"{line}\n" for line in val))
    save_config(config, config_out)
    save_diffusion_config(diffusion, diffusion_out)
    return FlistConfigResult(spk, train, val, scan.too_short)
