"""The resample stage (`resample.py`): every source file becomes zero or more 44.1 kHz mono 16-bit
clips, or a skip reason. A bad file never stops the batch; the reason ends up in the summary instead.

    load (native rate, channels averaged) -> reject empty / unreadable / NaN / silent / clipped
    -> trim leading and trailing silence (top_db 40, as the original) -> resample (soxr)
    -> [cut long recordings at silences into 5-15 s clips] -> loudness normalisation -> write atomically

Loudness normalisation defaults to ITU-R BS.1770 integrated loudness (pyloudnorm) at -23 LUFS with
the sample peak held at or below -1 dBFS: training clips then share one loudness instead of one peak
level (peak normalisation makes a clip with a single loud consonant much quieter than its neighbours),
-23 LUFS is the EBU R128 broadcast level, which leaves room for the training volume augmentation,
and with typical vocal crest factors the -1 dBFS ceiling rarely has to lower a clip. `peak` keeps
the original's behaviour (peak to exactly 1.0).
"""
from __future__ import annotations

import enum
import logging
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from modules.atomic_write import write_text
from modules.audio import AUDIO_EXTENSIONS, audio_duration, load_audio, resample, save_audio
from modules.dataset_files import name_problem, speaker_dirs
from modules.errors import AudioError, DatasetError
from modules.slicer import ClipParams, dataset_clips, frame_rms

logger = logging.getLogger(__name__)

DIGITAL_SILENCE_PEAK = 10.0 ** (-90.0 / 20.0)  # below this peak a file holds no usable signal
CLIP_LEVEL = 0.99  # |x| at or above this, held flat, counts as clipping
CLIP_MIN_RUN = 4  # flat run length that cannot come from an unclipped waveform peak
CLIP_MAX_FRACTION = 1e-3  # more clipped samples than this rejects the file
LOUDNESS_BLOCK_SECONDS = 0.4  # BS.1770 gating block
SILENCE_GATE_DB = -70.0  # BS.1770 absolute gate: blocks below it count as silence


class SkipReason(str, enum.Enum):
    """Why a source file produced no output."""

    DONE = "already done"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    NON_FINITE = "NaN/Inf samples"
    SILENT = "silent"
    TOO_SHORT = "too short"
    CLIPPED = "clipped"
    BAD_NAME = "bad name"
    NAME_CLASH = "name clash"
    ERROR = "unexpected error"


@dataclass(frozen=True)
class ResampleOptions:
    """Settings of the per-file pipeline (see `resample.py --help` for each)."""

    sr: int = 44100
    loudnorm: str = "lufs"  # "lufs", "peak" or "none"
    target_lufs: float = -23.0
    peak_ceiling_db: float = -1.0
    top_db: float = 40.0
    min_seconds: float = 0.3
    keep_clipped: bool = False
    slice: bool = False
    clip: ClipParams = field(default_factory=ClipParams)

    def check(self) -> None:
        if self.loudnorm not in ("lufs", "peak", "none"):
            raise DatasetError(f"loudness normalisation must be lufs, peak or none, got {self.loudnorm!r}")
        if self.sr <= 0:
            raise DatasetError(f"target sample rate must be positive, got {self.sr}")
        if self.peak_ceiling_db > 0:
            raise DatasetError(f"peak ceiling must be at most 0 dBFS, got {self.peak_ceiling_db}")
        if self.target_lufs >= 0:
            raise DatasetError(f"target loudness must be below 0 LUFS, got {self.target_lufs}")
        self.clip.check()


@dataclass(frozen=True)
class ResampleJob:
    """One source file and where its output goes. `reserved` are output names other sources will use."""

    speaker: str
    source: Path
    out_dir: Path
    reserved: frozenset[str] = frozenset()

    @property
    def stem(self) -> str:
        return self.source.stem

    @property
    def output(self) -> Path:
        return self.out_dir / f"{self.stem}.wav"

    @property
    def slice_marker(self) -> Path:
        """Hidden record of the clips a sliced source produced; its presence means the source is done."""
        return self.out_dir / f".{self.stem}.slices"


@dataclass
class ResampleResult:
    """What became of one source file."""

    speaker: str
    source: Path
    written: list[Path] = field(default_factory=list)
    reason: SkipReason | None = None
    detail: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return self.reason is not None


# --- resample: planning --------------------------------------------------------------------------------


def plan_resample(in_dir: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[list[ResampleJob], list[ResampleResult]]:
    """Jobs for every audio file under in_dir/<speaker>/, plus results for files refused by name.

    Raises DatasetError (before any work) when in_dir is missing, has no speaker folders or a speaker
    folder name cannot be used.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    speakers = speaker_dirs(in_dir)
    if not speakers:
        raise DatasetError(f"{in_dir}: no speaker folders; put clips in {in_dir}/<speaker>/")
    bad = [f"'{d.name}' ({problem})" for d in speakers if (problem := name_problem(d.name))]
    if bad:
        raise DatasetError(f"{in_dir}: speaker folder names that cannot be used: {', '.join(bad)}")
    loose = [p.name for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
    if loose:
        logger.warning("%s: %d audio files outside speaker folders are ignored (e.g. %s)", in_dir, len(loose), loose[0])
    jobs: list[ResampleJob] = []
    refused: list[ResampleResult] = []
    for spk_dir in speakers:
        files = sorted(p for p in spk_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS)
        ignored = sum(1 for p in spk_dir.iterdir() if p.is_file() and p.suffix.lower() not in AUDIO_EXTENSIONS)
        if ignored:
            logger.info("%s: ignored %d files without an audio extension", spk_dir, ignored)
        taken: dict[str, Path] = {}
        accepted: list[Path] = []
        for path in files:
            problem = name_problem(path.stem)
            if problem:
                refused.append(ResampleResult(spk_dir.name, path, reason=SkipReason.BAD_NAME, detail=f"name {problem}"))
            elif path.stem in taken:
                refused.append(ResampleResult(spk_dir.name, path, reason=SkipReason.NAME_CLASH,
                                              detail=f"{taken[path.stem].name} also becomes {path.stem}.wav"))
            else:
                taken[path.stem] = path
                accepted.append(path)
        names = frozenset(f"{p.stem}.wav" for p in accepted)
        for path in accepted:
            jobs.append(ResampleJob(spk_dir.name, path, out_dir / spk_dir.name, names - {f"{path.stem}.wav"}))
    return jobs, refused


# --- resample: signal steps ----------------------------------------------------------------------------


def clipped_fraction(audio: np.ndarray, level: float = CLIP_LEVEL, min_run: int = CLIP_MIN_RUN) -> float:
    """Fraction of samples in flat runs (>= min_run identical values) at |x| >= level.

    A clipped recording holds its extreme value for several samples; a real waveform peak does not.
    """
    audio = np.asarray(audio).reshape(-1)
    if audio.size < min_run:
        return 0.0
    starts = np.concatenate(([0], np.flatnonzero(np.diff(audio) != 0) + 1))
    lengths = np.diff(np.concatenate((starts, [audio.size])))
    flat = (lengths >= min_run) & (np.abs(audio[starts]) >= level)
    return float(lengths[flat].sum()) / audio.size


def trim_silence(audio: np.ndarray, top_db: float = 40.0, frame_length: int = 2048, hop: int = 512) -> np.ndarray:
    """Cut leading and trailing frames more than top_db below the loudest frame (as librosa.effects.trim,
    which the original calls with frame 2048 and hop 512). All-silent input comes back unchanged."""
    rms = frame_rms(audio, frame_length, hop).astype(np.float64)
    if rms.size == 0:
        return audio
    power = np.maximum(rms * rms, 1e-10)
    loud = np.flatnonzero(10.0 * np.log10(power / power.max()) > -top_db)
    start, end = int(loud[0]) * hop, min(len(audio), (int(loud[-1]) + 1) * hop)
    return audio[start:end]


def integrated_loudness(audio: np.ndarray, sr: int) -> float:
    """BS.1770 integrated loudness in LUFS; -inf when every 400 ms block is below the -70 LUFS gate.

    Clips shorter than one block are measured repeated end to end (the same mean-square level).
    """
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    if audio.size == 0:
        return float("-inf")
    need = int(np.ceil(LOUDNESS_BLOCK_SECONDS * sr)) + 1
    if audio.size < need:
        audio = np.tile(audio, int(np.ceil(need / audio.size)))
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(sr).integrated_loudness(audio))


@dataclass(frozen=True)
class LoudnessResult:
    audio: np.ndarray
    measured_lufs: float
    gain_db: float
    limited: bool  # the peak ceiling, not the target, set the gain


def normalise_lufs(audio: np.ndarray, sr: int, target_lufs: float = -23.0, peak_ceiling_db: float = -1.0,
                   measured_lufs: float | None = None) -> LoudnessResult:
    """Scale to `target_lufs`, lowering the gain if the sample peak would exceed `peak_ceiling_db`.

    Never clips: the output peak is at most 10^(ceiling/20) <= 1. The caller rejects silent audio first.
    """
    loudness = integrated_loudness(audio, sr) if measured_lufs is None else measured_lufs
    if not np.isfinite(loudness):
        raise ValueError("cannot loudness-normalise silent audio")
    gain_db = target_lufs - loudness
    peak = float(np.max(np.abs(audio)))
    ceiling = 10.0 ** (peak_ceiling_db / 20.0)
    limited = peak * 10.0 ** (gain_db / 20.0) > ceiling
    if limited:
        gain_db = 20.0 * np.log10(ceiling / peak)
    out = (np.asarray(audio, dtype=np.float64) * 10.0 ** (gain_db / 20.0)).astype(np.float32)
    return LoudnessResult(out, loudness, float(gain_db), bool(limited))


def normalise_peak(audio: np.ndarray) -> np.ndarray:
    """The original's normalisation: divide by the largest magnitude, so the peak is exactly 1.0."""
    peak = float(np.max(np.abs(audio)))
    return (audio / peak).astype(np.float32) if peak > 0 else audio


def _guard_overs(audio: np.ndarray) -> np.ndarray:
    """The original's rule for peaks above full scale: scale the peak to 0.98 instead of clipping."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (0.98 / peak)).astype(np.float32) if peak > 1.0 else audio


# --- resample: one file --------------------------------------------------------------------------------


def _skip(job: ResampleJob, reason: SkipReason, detail: str) -> ResampleResult:
    return ResampleResult(job.speaker, job.source, reason=reason, detail=detail)


def _is_done(job: ResampleJob, options: ResampleOptions) -> bool:
    return job.output.exists() or (options.slice and job.slice_marker.exists())


def _load_checked(job: ResampleJob, options: ResampleOptions) -> tuple[np.ndarray, int] | ResampleResult:
    """Native-rate mono audio, or the skip result saying why the file cannot be used."""
    if job.source.stat().st_size == 0:
        return _skip(job, SkipReason.EMPTY, "file is 0 bytes")
    try:
        if audio_duration(job.source) == 0.0:
            return _skip(job, SkipReason.EMPTY, "no samples after the header")
        audio, sr = load_audio(job.source, allow_nonfinite=True)
    except AudioError as e:
        return _skip(job, SkipReason.UNREADABLE, str(e).removeprefix(f"{job.source}: "))
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:
        return _skip(job, SkipReason.NON_FINITE, f"{bad} NaN or infinite samples")
    peak = float(np.max(np.abs(audio)))
    if peak < DIGITAL_SILENCE_PEAK:
        return _skip(job, SkipReason.SILENT, f"peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS")
    clipped = clipped_fraction(audio)
    if clipped > CLIP_MAX_FRACTION and not options.keep_clipped:
        return _skip(job, SkipReason.CLIPPED, f"{100 * clipped:.2f}% of samples clipped (use --keep_clipped to keep)")
    return audio, sr


def is_silent(audio: np.ndarray, sr: int, gate_db: float = SILENCE_GATE_DB) -> bool:
    """True when no 400 ms block reaches a mean square of `gate_db` dBFS (BS.1770's absolute gate level,
    unweighted, so it needs no filter and works for every normalisation mode)."""
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    block = max(1, int(LOUDNESS_BLOCK_SECONDS * sr))
    n_blocks = max(1, -(-audio.size // block))
    padded = np.zeros(n_blocks * block)
    padded[:audio.size] = audio * audio
    per_block = padded.reshape(n_blocks, block).sum(axis=1) / np.minimum(block, audio.size)
    return bool(np.all(per_block < 10.0 ** (gate_db / 10.0)))


def _normalise(audio: np.ndarray, options: ResampleOptions, notes: list[str], label: str) -> np.ndarray | None:
    """Loudness step for one output clip; None when the clip is silent."""
    if is_silent(audio, options.sr):
        return None
    if options.loudnorm == "lufs":
        loudness = integrated_loudness(audio, options.sr)
        if not np.isfinite(loudness):  # K-weighting can push a rumble below the gate
            return None
        result = normalise_lufs(audio, options.sr, options.target_lufs, options.peak_ceiling_db, loudness)
        if result.limited:
            where = f"{label}: " if label else ""
            notes.append(f"{where}the {options.peak_ceiling_db} dBFS peak ceiling held it at "
                         f"{loudness + result.gain_db:.1f} LUFS")
        return result.audio
    if options.loudnorm == "peak":
        return normalise_peak(audio)
    return _guard_overs(audio)


def process_file(job: ResampleJob, options: ResampleOptions) -> ResampleResult:
    """Run the whole pipeline on one source file. Bad input gives a skip reason, never an exception."""
    if _is_done(job, options):
        return _skip(job, SkipReason.DONE, "output exists")
    loaded = _load_checked(job, options)
    if isinstance(loaded, ResampleResult):
        return loaded
    audio, sr_in = loaded
    result = ResampleResult(job.speaker, job.source)
    if sr_in < 16000:
        result.notes.append(f"source is {sr_in} Hz: nothing above {sr_in // 2} Hz in the output")
    audio = trim_silence(audio, options.top_db)
    seconds = len(audio) / sr_in
    if seconds < options.min_seconds:
        return _skip(job, SkipReason.TOO_SHORT, f"{seconds:.2f} s after trimming silence (minimum {options.min_seconds} s)")
    audio = resample(_guard_overs(audio), sr_in, options.sr)
    sliced = options.slice and len(audio) > options.clip.max_seconds * options.sr
    ranges = dataset_clips(audio, options.sr, options.clip) if sliced else [(0, len(audio))]
    outputs: list[tuple[Path, np.ndarray]] = []
    for start, end in ranges:
        piece = audio[start:end]
        name = f"{job.stem}_{len(outputs):03d}.wav" if sliced else job.output.name  # silent pieces leave no gap
        if sliced:
            if name in job.reserved:
                return _skip(job, SkipReason.NAME_CLASH, f"clip {name} would replace another source's output")
            piece = trim_silence(piece, options.top_db)
            if len(piece) < options.min_seconds * options.sr:
                continue
        normalised = _normalise(piece, options, result.notes, name if sliced else "")
        if normalised is not None:
            outputs.append((job.out_dir / name, normalised))
    if not outputs:
        return _skip(job, SkipReason.SILENT, f"every 400 ms block is below {SILENCE_GATE_DB:.0f} dBFS")
    for path, clip in outputs:
        save_audio(path, clip, options.sr)
        result.written.append(path)
    if sliced:
        write_text(job.slice_marker, "".join(f"{p.name}\n" for p in result.written))
    return result


def _process_safely(job: ResampleJob, options: ResampleOptions) -> ResampleResult:
    """process_file, with anything unforeseen recorded as a skip (and logged) instead of ending the batch."""
    try:
        return process_file(job, options)
    except Exception as e:  # a batch of hundreds of files must not die on one; the reason is reported
        logger.exception("%s: unexpected error", job.source)
        return _skip(job, SkipReason.ERROR, f"{type(e).__name__}: {e}")


def default_num_processes(cpus: int | None = None) -> int:
    """The original's rule: 30 above 60 CPUs, CPUs - 2 above 4, else 1."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    if cpus > 60:
        return 30
    if cpus > 4:
        return cpus - 2
    return 1


def run_resample(jobs: Sequence[ResampleJob], options: ResampleOptions, num_processes: int = 1,
                 progress: bool = True) -> list[ResampleResult]:
    """Process every job (in `num_processes` spawned workers when > 1); results in job order."""
    from tqdm import tqdm

    options.check()
    work = partial(_process_safely, options=options)
    results: list[ResampleResult] = []
    bar = tqdm(total=len(jobs), desc="resample", unit="file", disable=not progress)
    try:
        if num_processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(work(job))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(num_processes, len(jobs))) as pool:
                for res in pool.imap_unordered(work, jobs, chunksize=1):
                    results.append(res)
                    bar.update()
    finally:
        bar.close()
    order = {job.source: i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.source])


def summarise_resample(results: Iterable[ResampleResult]) -> str:
    """Per-speaker table of written clips and skipped files, then one line per skipped file."""
    results = list(results)
    per_speaker: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        counts = per_speaker[r.speaker]
        counts["sources"] += 1
        counts["clips"] += len(r.written)
        if r.reason is not None:
            counts[r.reason.value] += 1
    reasons = [reason.value for reason in SkipReason]
    lines = [f"{'speaker':<20} {'sources':>7} {'written':>7}  skipped"]
    for speaker in sorted(per_speaker):
        counts = per_speaker[speaker]
        skipped = ", ".join(f"{reason}: {counts[reason]}" for reason in reasons if counts[reason]) or "-"
        lines.append(f"{speaker:<20} {counts['sources']:>7} {counts['clips']:>7}  {skipped}")
    total_written = sum(len(r.written) for r in results)
    total_skipped = sum(1 for r in results if r.skipped and r.reason is not SkipReason.DONE)
    total_done = sum(1 for r in results if r.reason is SkipReason.DONE)
    lines.append(f"total: {total_written} clips written, {total_done} files already done, {total_skipped} files skipped")
    for r in results:
        if r.skipped and r.reason is not SkipReason.DONE:
            lines.append(f"  skipped {r.speaker}/{r.source.name}: {r.reason.value} ({r.detail})")
        for note in r.notes:
            lines.append(f"  note {r.speaker}/{r.source.name}: {note}")
    return "\n".join(lines)
