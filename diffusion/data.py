"""The diffusion training set: the same file lists and feature files as so-vits, plus the --use_diff mels.

Per clip `x.wav`: x.wav.soft.pt (units [1, D, T_u]), x.wav.f0.npy (f0 row 0, Hz, interpolated),
x.wav.vol.npy, x.wav.mel.npy (T, 128), x.wav.aug_mel.npy ((T, 128) mel of a volume- and key-shifted
copy, keyshift) and x.wav.aug_vol.npy. Crops are `data.duration` seconds (frames = int(duration *
sr / hop)) at a random start; clips shorter than duration + 0.1 s are replaced by the next clip, as
the original does. With `use_pitch_aug`, half of the crops use the augmented mel/volume with f0
times 2^(keyshift/12) and the keyshift as an extra input.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.checkpoint import load_torch_file
from modules.dataset_files import ClipFiles
from modules.errors import CheckpointError, DatasetError, UnsafeCheckpointError
from modules.frame_features import repeat_expand_2d
from modules.npy_files import load_aug_mel, load_f0, load_npy

logger = logging.getLogger(__name__)


@dataclass
class ClipData:
    name: str
    spk_id: int
    units: torch.Tensor  # [T, D] at frame rate
    f0: torch.Tensor  # [T]
    vol: torch.Tensor  # [T]
    mel: torch.Tensor  # [T, M]
    aug_mel: torch.Tensor | None
    aug_vol: torch.Tensor | None
    keyshift: float

    @property
    def frames(self) -> int:
        return int(self.mel.shape[0])


def read_filelist(path: str | Path) -> list[Path]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file list not found (run preprocess_flist_config.py)") from None
    wavs = [Path(line.strip()) for line in lines if line.strip()]
    if not wavs:
        raise DatasetError(f"{path}: file list is empty")
    return wavs


def load_clip(wav: Path, spk_id: int, unit_mode: str, with_aug: bool, n_mels: int) -> ClipData:
    """Read one clip's feature files; a missing or inconsistent file is a DatasetError naming it."""
    files = ClipFiles(wav)
    needed = [files.units, files.f0, files.vol, files.mel] + ([files.aug_mel, files.aug_vol] if with_aug else [])
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise DatasetError(f"{wav}: missing feature file(s) {', '.join(missing)}; run preprocess_hubert_f0.py "
                           f"--use_diff")
    try:
        mel = np.asarray(load_npy(files.mel), dtype=np.float32)
        f0, _uv = load_f0(files.f0)
        vol = np.asarray(load_npy(files.vol), dtype=np.float32).reshape(-1)
        aug_mel = aug_vol = None
        keyshift = 0.0
        if with_aug:
            aug_mel, keyshift = load_aug_mel(files.aug_mel)
            aug_vol = np.asarray(load_npy(files.aug_vol), dtype=np.float32).reshape(-1)
    except UnsafeCheckpointError as e:
        raise DatasetError(str(e)) from None
    if mel.ndim != 2 or mel.shape[1] != n_mels:
        raise DatasetError(f"{files.mel}: expected a mel of shape (T, {n_mels}), got {mel.shape}")
    n = mel.shape[0]
    short = [(p.name, len(a)) for p, a in ((files.f0, f0), (files.vol, vol)) if len(a) < n]
    if with_aug:
        short += [(p.name, len(a)) for p, a in ((files.aug_mel, aug_mel), (files.aug_vol, aug_vol)) if len(a) < n]
    if short:
        raise DatasetError(f"{wav}: {short[0][0]} has {short[0][1]} frames but the mel has {n}; rerun preprocessing")
    try:
        units = load_torch_file(files.units, "units file")
    except CheckpointError as e:
        raise DatasetError(f"{e} (rerun preprocess_hubert_f0.py for this clip)") from None
    if not isinstance(units, torch.Tensor) or units.dim() not in (2, 3):
        raise DatasetError(f"{files.units}: expected a units tensor [1, D, T_u]")
    units = units.reshape(units.shape[-2], units.shape[-1]).float()
    units = repeat_expand_2d(units, n, mode=unit_mode).transpose(0, 1).contiguous()
    clip = ClipData(wav.name, spk_id, units, torch.from_numpy(f0[:n].copy()), torch.from_numpy(vol[:n].copy()),
                    torch.from_numpy(mel), None, None, keyshift)
    if with_aug:
        clip.aug_mel = torch.from_numpy(aug_mel[:n].copy())
        clip.aug_vol = torch.from_numpy(aug_vol[:n].copy())
    if not all(torch.isfinite(t).all() for t in (clip.units, clip.f0, clip.vol, clip.mel)):
        raise DatasetError(f"{wav}: a feature file holds NaN or Inf values; rerun preprocessing for this clip")
    return clip


class DiffusionDataset(torch.utils.data.Dataset):
    """Random crops (training) or whole clips (validation) of preprocessed clips."""

    def __init__(self, filelist: str | Path, args: Any, whole: bool = False, n_mels: int = 128,
                 cache: bool = True) -> None:
        self.args = args
        self.whole = whole
        self.n_mels = n_mels
        self.sr, self.hop = int(args.data.sampling_rate), int(args.data.block_size)
        self.crop_seconds = float(args.data.duration)
        self.crop_frames = int(self.crop_seconds / (self.hop / self.sr))
        self.use_aug = bool(args.model.use_pitch_aug) and not whole
        self.unit_mode = str(args.data.get("unit_interpolate_mode", "nearest"))
        spk_map = {str(k): int(v) for k, v in dict(args.spk).items()}
        n_spk = int(args.model.n_spk)
        self.wavs = read_filelist(filelist)
        self.spk_ids = []
        for wav in self.wavs:
            spk = wav.parent.name
            if n_spk > 1:
                if spk not in spk_map:
                    raise DatasetError(f"{wav}: speaker folder '{spk}' is not in the config's spk map")
                if not 0 <= spk_map[spk] < n_spk:
                    raise DatasetError(f"{wav}: speaker id {spk_map[spk]} is not below model.n_spk {n_spk}")
            self.spk_ids.append(spk_map.get(spk, 0) if n_spk > 1 else 0)
        self.cache_enabled = cache
        self._cache: dict[int, ClipData] = {}
        if cache:
            for i in range(len(self.wavs)):
                self._cache[i] = self._load(i)
            if not whole and not any(self._long_enough(c) for c in self._cache.values()):
                raise DatasetError(f"{filelist}: no clip is longer than data.duration + 0.1 s "
                                   f"({self.crop_seconds + 0.1:.2f} s); lower data.duration")

    def _load(self, i: int) -> ClipData:
        clip = load_clip(self.wavs[i], self.spk_ids[i], self.unit_mode, self.use_aug, self.n_mels)
        if self.args.train.get("cache_fp16", False) and self.cache_enabled:
            clip.units, clip.mel = clip.units.half(), clip.mel.half()
            if clip.aug_mel is not None:
                clip.aug_mel = clip.aug_mel.half()
        return clip

    def clip(self, i: int) -> ClipData:
        return self._cache[i] if i in self._cache else self._load(i)

    def _long_enough(self, clip: ClipData) -> bool:
        return clip.frames * self.hop / self.sr >= self.crop_seconds + 0.1

    def __len__(self) -> int:
        return len(self.wavs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clip(index)
        if not self.whole:
            tries = 0
            while not self._long_enough(clip):  # the original substitutes the next clip
                index = (index + 1) % len(self.wavs)
                clip = self.clip(index)
                tries += 1
                if tries > len(self.wavs):
                    raise DatasetError("no clip is longer than data.duration + 0.1 s; lower data.duration")
        if self.whole:
            start, n = 0, clip.frames
        else:
            duration = clip.frames * self.hop / self.sr
            start = int(random.uniform(0, duration - self.crop_seconds - 0.1) / (self.hop / self.sr))
            n = self.crop_frames
        aug = self.use_aug and clip.aug_mel is not None and random.choice([True, False])
        mel = (clip.aug_mel if aug else clip.mel)[start: start + n].float()
        vol = (clip.aug_vol if aug else clip.vol)[start: start + n].float()
        shift = clip.keyshift if aug else 0.0
        f0 = clip.f0[start: start + n].float() * 2 ** (shift / 12)
        return {
            "mel": mel, "f0": f0[:, None], "volume": vol[:, None], "units": clip.units[start: start + n].float(),
            "spk_id": torch.tensor([clip.spk_id], dtype=torch.long),
            "aug_shift": torch.tensor([[shift]], dtype=torch.float32), "name": clip.name,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "name"}
    out["name"] = [it["name"] for it in items]
    return out
