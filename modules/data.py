"""Training data: the per-clip feature files written by preprocessing, a dataset, collate and loaders.

For a clip `x.wav` the preprocessing writes `x.wav.soft.pt` (units
[1, D, T_u] at about 50 frames/s), `x.wav.f0.npy` (a pickled object array (2, T): interpolated
f0 in Hz and uv), `x.spec.pt` (linear spectrogram [n_fft//2+1, T]; note the name REPLACES
`.wav`) and, with `vol_embedding`, `x.wav.vol.npy` (frame RMS [T]). Every per-frame file of an
L-sample clip has T = L // hop frames; units are resized to T on the fly.

Files are read without executing pickled code: tensors with `torch.load(weights_only=True)`
and the object-array f0 file with modules.npy_files's restricted unpickler.
Inconsistent or unreadable clips raise `DatasetError` naming the clip, so a bad file found
after hours of training says which file to fix.
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from modules.atomic_write import save_torch
from modules.audio import load_audio
from modules.checkpoint import load_torch_file
from modules.config import HParams
from modules.dataset_files import ClipFiles
from modules.errors import AudioError, CheckpointError, DatasetError, UnsafeCheckpointError
from modules.fingerprint import first_difference, read_record, training_expectation
from modules.frame_features import repeat_expand_2d, spectrogram, volume
from modules.npy_files import load_f0

logger = logging.getLogger(__name__)

# The original asserts that per-frame lengths differ by fewer than 3 frames before truncating.
LENGTH_TOLERANCE_FRAMES = 3
# Clips longer than CROP_THRESHOLD frames are randomly cropped to CROP_FRAMES (hard-coded in the original).
CROP_THRESHOLD = 800
CROP_FRAMES = 790
# Speech encoders emit about 50 unit frames per second; a units file far off that rate belongs to another clip.
UNIT_FRAME_RATE = 50.0


# --------------------------------------------------------------------------------------------- files


def read_filelist(path: str | os.PathLike) -> list[Path]:
    """Wav paths from a file list (one per line; blank lines ignored). Raises DatasetError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file list not found (run preprocess_flist_config.py first)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read file list ({e})") from None
    wavs = [Path(line.strip()) for line in lines if line.strip()]
    if not wavs:
        raise DatasetError(f"{path}: file list is empty")
    return wavs


def read_f0_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(f0, uv) float32 [T] from an `x.wav.f0.npy` (object array (2, T) or a float (2, T) array).

    Uses the project's restricted reader (modules.npy_files), so a crafted file cannot run code.
    """
    path = Path(path)
    try:
        f0, uv = load_f0(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: f0 file not found (run preprocess_hubert_f0.py)") from None
    except (UnsafeCheckpointError, ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{path}: not a valid f0 file ({e})") from None
    if not (np.all(np.isfinite(f0)) and np.all(np.isfinite(uv))):
        raise DatasetError(f"{path}: f0 file contains NaN or infinite values")
    return f0, uv


def _load_tensor(path: Path, what: str) -> torch.Tensor:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found (run preprocess_hubert_f0.py)")
    try:
        value = load_torch_file(path, f"{what} file")
    except CheckpointError as e:
        raise DatasetError(f"{e} (rerun preprocess_hubert_f0.py for this clip)") from None
    if not isinstance(value, torch.Tensor):
        raise DatasetError(f"{path}: {what} file holds {type(value).__name__}, expected a tensor")
    return value.float()


# --------------------------------------------------------------------------------------------- items


@dataclass
class ClipItem:
    """One clip ready for collation; every per-frame tensor has the same T, audio has T*hop samples."""

    units: torch.Tensor  # [D, T]
    f0: torch.Tensor  # [T] Hz, interpolated
    spec: torch.Tensor  # [F, T]
    audio: torch.Tensor  # [1, T*hop]
    speaker: int
    uv: torch.Tensor  # [T]
    vol: torch.Tensor | None  # [T]
    name: str

    @property
    def frames(self) -> int:
        return self.spec.size(-1)


@dataclass
class Batch:
    """A padded batch, sorted by length (longest first) like the original's collate."""

    units: torch.Tensor  # [B, D, T]
    f0: torch.Tensor  # [B, T]
    spec: torch.Tensor  # [B, F, T]
    audio: torch.Tensor  # [B, 1, T*hop]
    speaker: torch.Tensor  # [B, 1] long
    lengths: torch.Tensor  # [B] long
    uv: torch.Tensor  # [B, T]
    vol: torch.Tensor | None  # [B, T]
    names: list[str] = field(default_factory=list)

    def _map(self, fn) -> "Batch":
        return Batch(
            fn(self.units), fn(self.f0), fn(self.spec), fn(self.audio), fn(self.speaker), fn(self.lengths),
            fn(self.uv), None if self.vol is None else fn(self.vol), list(self.names),
        )

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) so host-to-GPU copies can overlap compute."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    @property
    def size(self) -> int:
        return self.spec.size(0)


def collate_clips(items: Sequence[ClipItem]) -> Batch:
    """Zero-pad to the longest clip; lengths are frame counts. vol is None unless every item has it."""
    items = sorted(items, key=lambda it: it.frames, reverse=True)
    n, t_max = len(items), items[0].frames
    hop = items[0].audio.size(-1) // items[0].frames
    first = items[0]
    units = first.units.new_zeros(n, first.units.size(0), t_max)
    spec = first.spec.new_zeros(n, first.spec.size(0), t_max)
    f0 = torch.zeros(n, t_max)
    uv = torch.zeros(n, t_max)
    audio = torch.zeros(n, 1, t_max * hop)
    has_vol = all(it.vol is not None for it in items)
    vol = torch.zeros(n, t_max) if has_vol else None
    lengths = torch.zeros(n, dtype=torch.long)
    speaker = torch.zeros(n, 1, dtype=torch.long)
    for i, it in enumerate(items):
        t = it.frames
        units[i, :, :t] = it.units
        spec[i, :, :t] = it.spec
        f0[i, :t] = it.f0
        uv[i, :t] = it.uv
        audio[i, :, : it.audio.size(-1)] = it.audio
        if vol is not None:
            vol[i, :t] = it.vol
        lengths[i] = t
        speaker[i, 0] = it.speaker
    return Batch(units, f0, spec, audio, speaker, lengths, uv, vol, [it.name for it in items])


# --------------------------------------------------------------------------------------------- dataset


class ClipDataset(Dataset):
    """so-vits training clips from a file list.

    `train=True` applies the random 790-frame crop of long clips and volume augmentation;
    evaluation crops deterministically (first 790 frames) so eval numbers are comparable.
    With `all_in_mem` every clip is decoded once and kept in RAM (use num_workers=0 then).
    """

    def __init__(self, filelist: str | os.PathLike | Sequence[str | os.PathLike], hps: HParams,
                 train: bool = True, all_in_mem: bool = False) -> None:
        self.hps = hps
        self.segment_frames = hps.train.segment_size // hps.data.hop_length
        self.use_vol = hps.model.vol_embedding
        self.vol_aug = hps.train.vol_aug and hps.model.vol_embedding
        self.train = train
        if isinstance(filelist, (str, os.PathLike)):
            self.source = str(filelist)
            wavs = read_filelist(filelist)
        else:
            self.source = "<list>"
            wavs = [Path(p) for p in filelist]
        self.clips = self._check_clips(wavs)
        self._cache: list[ClipItem] | None = None
        if all_in_mem:
            self._cache = [self.load_clip(i) for i in range(len(self.clips))]

    def _check_clips(self, wavs: list[Path]) -> list[ClipFiles]:
        """Fail early on missing files and unknown speakers; drop clips too short for one segment."""
        missing: list[str] = []
        clips: list[ClipFiles] = []
        for wav in wavs:
            files = ClipFiles(wav)
            if files.speaker not in self.hps.spk:
                raise DatasetError(
                    f"{wav}: speaker folder '{files.speaker}' is not in the config's 'spk' map "
                    f"({', '.join(sorted(self.hps.spk))})"
                )
            for required in (files.wav, files.units, files.f0):
                if not required.is_file():
                    missing.append(str(required))
            if not files.wav.is_file():
                continue
            try:
                frames = sf.info(str(files.wav)).frames // self.hps.data.hop_length
            except (sf.LibsndfileError, RuntimeError) as e:
                raise DatasetError(f"{wav}: not a readable audio file ({e})") from None
            if frames < self.segment_frames:
                logger.warning("%s: only %d frames, shorter than one training segment (%d); skipped",
                               wav, frames, self.segment_frames)
                continue
            clips.append(files)
        if missing:
            shown = "\n  ".join(missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DatasetError(
                f"{self.source}: {len(missing)} feature file(s) missing (run preprocess_hubert_f0.py):\n  {shown}{more}"
            )
        self._check_features_fit_the_config(clips)
        if not clips:
            raise DatasetError(f"{self.source}: no usable clips (all missing or shorter than one segment)")
        return clips

    def _check_features_fit_the_config(self, clips: list[ClipFiles]) -> None:
        """In the main process, before any worker starts: every clip's feature record must fit this config;
        clips without a record (preprocessed by so-vits-svc 4.1) get their unit width checked directly."""
        expected = training_expectation(self.hps)
        unrecorded = 0
        for files in clips:
            record = read_record(files.wav)
            if record is not None:
                difference = first_difference(record, expected)
                if difference is not None:
                    raise DatasetError(f"{files.wav}: its features do not fit the config ({difference}); rerun "
                                       f"preprocess_hubert_f0.py with this config")
                if self.use_vol and not record.get("volume"):
                    raise DatasetError(f"{files.wav}: model.vol_embedding is on but its features have no volume "
                                       f"file; rerun preprocess_hubert_f0.py with this config")
                continue
            unrecorded += 1
            units = _load_tensor(files.units, "units")
            width = units.shape[-2] if units.dim() >= 2 else -1
            if width != self.hps.model.ssl_dim:
                raise DatasetError(f"{files.units}: units are {width} wide but the config's model.ssl_dim is "
                                   f"{self.hps.model.ssl_dim}; rerun preprocess_hubert_f0.py with this config")
        if unrecorded:
            logger.info("%s: %d clip(s) have no feature record (made by another tool); their unit width fits",
                        self.source, unrecorded)

    def __len__(self) -> int:
        return len(self.clips)

    def load_clip(self, index: int) -> ClipItem:
        """Read and validate one clip's files; everything truncated to the common frame count."""
        files = self.clips[index]
        name = str(files.wav)
        try:
            audio_np, sr = load_audio(files.wav)
        except AudioError as e:
            raise DatasetError(str(e)) from None
        if sr != self.hps.data.sampling_rate:
            raise DatasetError(f"{name}: sample rate is {sr} Hz but the config says {self.hps.data.sampling_rate} Hz (run resample.py)")
        audio = torch.from_numpy(audio_np)

        if files.spec.is_file():
            spec = _load_tensor(files.spec, "spectrogram")
            if spec.dim() == 3 and spec.size(0) == 1:
                spec = spec[0]
        else:
            spec = spectrogram(audio, self.hps.data.filter_length, self.hps.data.hop_length, self.hps.data.win_length)
            save_torch(spec, files.spec)  # atomic, so concurrent workers cannot leave a torn file
        if spec.dim() != 2 or spec.size(0) != self.hps.data.filter_length // 2 + 1:
            raise DatasetError(
                f"{files.spec}: spectrogram shape {tuple(spec.shape)}, expected [{self.hps.data.filter_length // 2 + 1}, T] "
                f"for filter_length {self.hps.data.filter_length}"
            )

        f0_np, uv_np = read_f0_file(files.f0)
        f0, uv = torch.from_numpy(f0_np), torch.from_numpy(uv_np)

        units = _load_tensor(files.units, "units")
        if units.dim() == 3 and units.size(0) == 1:
            units = units[0]
        if units.dim() != 2 or units.size(0) != self.hps.model.ssl_dim:
            raise DatasetError(
                f"{files.units}: units shape {tuple(units.shape)}, expected [1, {self.hps.model.ssl_dim}, T_u] "
                f"(model.ssl_dim is {self.hps.model.ssl_dim}; was the clip encoded with another speech encoder?)"
            )
        expected_units = len(audio) / self.hps.data.sampling_rate * UNIT_FRAME_RATE
        if not (0.5 * expected_units - 2 <= units.size(1) <= 2.0 * expected_units + 2):
            raise DatasetError(
                f"{name}: units have {units.size(1)} frames but {len(audio) / self.hps.data.sampling_rate:.2f} s of audio "
                f"should give about {expected_units:.0f}; the units file belongs to another clip or is stale"
            )
        units = repeat_expand_2d(units, f0.size(0), self.hps.data.unit_interpolate_mode)

        vol = None
        if self.use_vol:
            vol = torch.from_numpy(self._read_vol(files)) if files.vol.is_file() else volume(audio, self.hps.data.hop_length)

        lengths = {"units/f0": f0.size(0), "uv": uv.size(0), "spec": spec.size(1), "audio": len(audio) // self.hps.data.hop_length}
        if vol is not None:
            lengths["vol"] = vol.size(0)
        t = min(lengths.values())
        if max(lengths.values()) - t >= LENGTH_TOLERANCE_FRAMES or t < 1:
            detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
            raise DatasetError(
                f"{name}: inconsistent feature lengths in frames ({detail}; hop {self.hps.data.hop_length}); "
                f"delete its feature files and rerun preprocess_hubert_f0.py"
            )
        item = ClipItem(
            units=units[:, :t], f0=f0[:t], spec=spec[:, :t], audio=audio[None, : t * self.hps.data.hop_length],
            speaker=self.hps.spk[files.speaker], uv=uv[:t], vol=None if vol is None else vol[:t].float(), name=name,
        )
        for key in ("units", "spec"):
            if not torch.isfinite(getattr(item, key)).all():
                raise DatasetError(f"{name}: {key} contain NaN or infinite values")
        return item

    @staticmethod
    def _read_vol(files: ClipFiles) -> np.ndarray:
        try:
            vol = np.load(files.vol, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatasetError(f"{files.vol}: not a valid volume file ({e})") from None
        if vol.ndim != 1:
            raise DatasetError(f"{files.vol}: volume shape {vol.shape}, expected (T,)")
        return vol.astype(np.float32)

    def _crop(self, item: ClipItem) -> ClipItem:
        if item.frames <= CROP_THRESHOLD:
            return item
        start = random.randint(0, item.frames - CROP_THRESHOLD) if self.train else 0
        end = start + CROP_FRAMES
        hop = self.hps.data.hop_length
        return ClipItem(
            units=item.units[:, start:end], f0=item.f0[start:end], spec=item.spec[:, start:end],
            audio=item.audio[:, start * hop: end * hop], speaker=item.speaker, uv=item.uv[start:end],
            vol=None if item.vol is None else item.vol[start:end], name=item.name,
        )

    def _volume_augment(self, item: ClipItem) -> ClipItem:
        """With probability 0.5 scale the audio by 10^s, s ~ U(-1, min(1, log10(1/peak))); rescale vol, redo spec."""
        if random.random() >= 0.5:
            return item
        peak = float(item.audio.abs().max()) + 1e-5
        high = min(1.0, math.log10(1.0 / peak))
        gain = 10.0 ** random.uniform(-1.0, high)
        audio = item.audio * gain
        spec = spectrogram(audio[0], self.hps.data.filter_length, self.hps.data.hop_length, self.hps.data.win_length)[:, : item.frames]
        vol = None if item.vol is None else item.vol * gain
        return ClipItem(item.units, item.f0, spec, audio, item.speaker, item.uv, vol, item.name)

    def __getitem__(self, index: int) -> ClipItem:
        item = self._cache[index] if self._cache is not None else self.load_clip(index)
        item = self._crop(item)
        if self.train and self.vol_aug:
            item = self._volume_augment(item)
        return item


# --------------------------------------------------------------------------------------------- loaders


def _worker_init(worker_id: int) -> None:
    """Workers use one thread each (the main process owns the cores) and leave Ctrl-C to the main process."""
    import signal

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_num_workers(all_in_mem: bool) -> int:
    """Loader workers: none with all_in_mem (items are in RAM); otherwise a few, leaving cores for compute."""
    if all_in_mem:
        return 0
    cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // 2))


def make_loader(dataset: ClipDataset, batch_size: int, rank: int, world_size: int, seed: int,
                shuffle: bool = True, num_workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False) -> tuple[DataLoader, DistributedSampler]:
    """DataLoader over this rank's share of `dataset`.

    A DistributedSampler is used even for one process: it gives a seeded reshuffle per epoch
    (call `sampler.set_epoch(epoch)`) and, with several ranks, disjoint shares of the data.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_clips, pin_memory=pin_memory, drop_last=drop_last, **kwargs)
    return loader, sampler

