"""Objective conversion quality on the user's own model: speaker similarity, DNSMOS, F0 accuracy, speed.

    evaluator = Evaluator(reference_clips("bass"))
    rows = evaluate_models(["logs/44k/G_8000.pth"], "logs/44k/config.json", [Source(Path("song.wav"), -12)],
                           ConvertOptions(speaker="bass"), evaluator, parse_sweep(["noise_scale=0,0.4"]))
    print(format_table(rows))

Per converted file:
- SECS to the target: cosine between the output's speaker embedding and the normalised mean embedding
  of the target speaker's reference clips (higher = sounds more like the target; 1 = identical).
- SECS to the source: cosine between output and source embeddings (lower = less of the source
  singer's timbre leaks through).
- DNSMOS SIG / BAK / OVRL (and P.808): predicted opinion scores 1..5 (higher = cleaner).
- F0: the output's F0 against the source's F0 times 2^(t/12), both measured with the same predictor
  (`pm` by default, which needs no weights): Pearson correlation in Hz and RMSE in Hz and in cents on
  frames voiced in both; voicing decision error = share of frames where exactly one is voiced.
- RTF: conversion seconds per second of source audio (below 1 = faster than real time).
A row averages its files (each file counts once); RTF is total time over total audio.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from modules.audio import AUDIO_EXTENSIONS, load_audio
from modules.errors import AudioError, DatasetError, InferenceError

logger = logging.getLogger(__name__)

# F0 is measured on both signals at the project's usual analysis rate and hop.
MEASURE_SR = 44100
MEASURE_HOP = 512
DEFAULT_MAX_REFERENCES = 20
METRICS = ("secs_target", "secs_source", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808",
           "f0_corr", "f0_rmse_hz", "f0_rmse_cents", "vde")
# (column title, metric key, number format) of the printed table.
COLUMNS = (("SECS tgt↑", "secs_target", "{:.3f}"), ("SECS src↓", "secs_source", "{:.3f}"),
           ("SIG↑", "dnsmos_sig", "{:.2f}"), ("BAK↑", "dnsmos_bak", "{:.2f}"), ("OVRL↑", "dnsmos_ovrl", "{:.2f}"),
           ("F0 corr↑", "f0_corr", "{:.3f}"), ("F0 RMSE Hz↓", "f0_rmse_hz", "{:.1f}"),
           ("cents↓", "f0_rmse_cents", "{:.0f}"), ("VDE↓", "vde", "{:.3f}"), ("RTF↓", "rtf", "{:.2f}"))
# Sweep keys may also be spelled as inference_main.py's long flags.
SWEEP_ALIASES = {"trans": "transpose", "clip": "clip_seconds", "noice_scale": "noise_scale",
                 "f0_filter_threshold": "f0_threshold"}


# ----------------------------------------------------------------------------------- F0 metrics


@dataclass
class F0Scores:
    corr: float | None  # Pearson correlation of Hz values on frames voiced in both
    rmse_hz: float | None
    rmse_cents: float | None
    vde: float  # share of frames whose voicing decision differs
    frames: int  # frames voiced in both


def f0_scores(requested: np.ndarray, output: np.ndarray) -> F0Scores:
    """Compare per-frame F0 contours (Hz, 0 = unvoiced); the longer one is cut to the shorter."""
    n = min(len(requested), len(output))
    ref = np.asarray(requested[:n], dtype=np.float64)
    out = np.asarray(output[:n], dtype=np.float64)
    ref_v, out_v = ref > 0, out > 0
    vde = float(np.mean(ref_v != out_v)) if n else 0.0
    both = ref_v & out_v
    count = int(both.sum())
    if count == 0:
        return F0Scores(None, None, None, vde, 0)
    r, o = ref[both], out[both]
    rmse_hz = float(np.sqrt(np.mean((o - r) ** 2)))
    rmse_cents = float(np.sqrt(np.mean((1200.0 * np.log2(o / r)) ** 2)))
    corr = None
    if count >= 2 and np.std(r) > 0 and np.std(o) > 0:
        corr = float(np.corrcoef(r, o)[0, 1])
    return F0Scores(corr, rmse_hz, rmse_cents, vde, count)


# ----------------------------------------------------------------------------------- against a ground truth
#
# When the ideal output is known (the synthetic singers can sing the source's phrase in the target's voice,
# time-aligned), a conversion can be scored against it directly: spectral envelope distance (MCD) and
# voicing/pitch against the exact requested contour. These catch outputs a pitch score alone passes, e.g.
# a constant buzz that follows the requested F0 but has no vowels and is voiced through the pauses.

MCD_ORDER = 24  # cepstral coefficients c1..c24 are compared; c0 (loudness) is left out
MCD_MELS = 80
MCD_LEVEL_RMS = 0.1  # clips are scaled to this RMS before the analysis
# Frames quieter than this below the reference's loudest frame are pauses and are not scored.
MCD_ENERGY_RANGE_DB = 40.0
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def mel_cepstrum(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(cepstra [T, MCD_ORDER + 1], frame energy in dB [T]) at MEASURE_SR and MEASURE_HOP.

    The cepstrum is the cosine transform of the natural-log 80-band mel magnitude spectrum (not SPTK's
    all-pole mel-cepstrum), so MCD values compare within this project, only roughly with papers.
    c0 is scaled like the others and is not used by the MCD.
    """
    import scipy.fft
    import torch

    from modules.audio import resample
    from modules.frame_features import mel_spectrogram, spectrogram

    audio = resample(np.asarray(audio, dtype=np.float32), sr, MEASURE_SR) if sr != MEASURE_SR else audio
    audio = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(audio ** 2))) if audio.size else 0.0
    if rms > 0:
        # The mel analysis has a fixed floor; at a common level it lies equally far below every clip,
        # so a quieter output is not scored as a different timbre.
        audio = audio * (MCD_LEVEL_RMS / rms)
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if wave.numel() < 2048:
        raise AudioError(f"clip of {wave.numel()} samples is too short for a mel cepstrum (2048 needed)")
    with torch.no_grad():
        log_mel = mel_spectrogram(wave, MEASURE_SR, hop=MEASURE_HOP, n_mels=MCD_MELS).numpy().astype(np.float64)
        power = spectrogram(wave, hop=MEASURE_HOP).numpy().astype(np.float64) ** 2
    # The orthonormal DCT of N bands gives sqrt(2N) times the coefficient c_d of the expansion
    # log|X| = c0 + 2 * sum c_d cos(d w) that the MCD formula assumes; undo that factor.
    cepstra = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0)[: MCD_ORDER + 1].T / math.sqrt(2 * MCD_MELS)
    energy_db = 10.0 * np.log10(np.mean(power, axis=0) + 1e-12)
    return cepstra, energy_db


def mel_cepstral_distortion(reference: np.ndarray, reference_sr: int, output: np.ndarray, output_sr: int) -> float:
    """Mean MCD in dB over c1..c24 on the frames where the reference has energy (time-aligned clips;
    the longer one is cut to the shorter). 0 for identical clips; gain does not matter."""
    ref, ref_energy = mel_cepstrum(reference, reference_sr)
    out, _ = mel_cepstrum(output, output_sr)
    n = min(len(ref), len(out))
    ref, out, ref_energy = ref[:n], out[:n], ref_energy[:n]
    scored = ref_energy >= ref_energy.max() - MCD_ENERGY_RANGE_DB
    diff = ref[scored, 1:] - out[scored, 1:]
    return float(np.mean(_MCD_SCALE * np.sqrt(np.sum(diff ** 2, axis=1))))


@dataclass
class GroundTruthScores:
    mcd_target: float  # dB to the ideal output (lower = closer to the target singer singing the request)
    mcd_source: float | None  # dB to the unconverted input (how much of the input's timbre remains)
    vde: float  # share of frames whose measured voicing differs from the requested contour's
    f0_rmse_cents: float | None  # on frames voiced in both
    f0_frames: int

    def as_summary(self) -> dict[str, float | None]:
        return {"mcd_target": self.mcd_target, "mcd_source": self.mcd_source, "gt_vde": self.vde,
                "gt_f0_rmse_cents": self.f0_rmse_cents}


# format_table's extra columns for GroundTruthScores.as_summary().
GROUND_TRUTH_COLUMNS = (("MCD tgt↓", "mcd_target", "{:.2f}"), ("MCD src", "mcd_source", "{:.2f}"),
                        ("VDE vs truth↓", "gt_vde", "{:.3f}"), ("cents vs truth↓", "gt_f0_rmse_cents", "{:.0f}"))


def ground_truth_scores(output: np.ndarray, sr: int, target: np.ndarray, target_sr: int,
                        requested_f0: np.ndarray, source: np.ndarray | None = None, source_sr: int | None = None,
                        evaluator: Evaluator | None = None) -> GroundTruthScores:
    """Score a converted clip against its ideal rendering `target` and the exact requested contour
    (Hz per MEASURE_HOP frame at MEASURE_SR, 0 = unvoiced); the output's F0 is measured with the
    evaluator's predictor (`pm` by default, independent of the one that fed the conversion)."""
    evaluator = evaluator or Evaluator(dnsmos=False, speaker_similarity=False)
    f0 = f0_scores(requested_f0, evaluator.measure_f0(output, sr))
    return GroundTruthScores(
        mcd_target=mel_cepstral_distortion(target, target_sr, output, sr),
        mcd_source=mel_cepstral_distortion(source, source_sr, output, sr) if source is not None else None,
        vde=f0.vde, f0_rmse_cents=f0.rmse_cents, f0_frames=f0.frames)


# ----------------------------------------------------------------------------------- references


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not p.name.startswith("."))


def reference_clips(speaker: str | None, references: Sequence[str | os.PathLike] | None = None,
                    dataset_dir: str | os.PathLike = "dataset/44k",
                    limit: int = DEFAULT_MAX_REFERENCES) -> list[Path]:
    """The target speaker's reference clips: `references` (files or folders) or dataset_dir/<speaker>/.

    At most `limit` clips, spread evenly over the sorted list so the choice is reproducible.
    """
    clips: list[Path] = []
    if references:
        for ref in references:
            path = Path(ref)
            if path.is_dir():
                found = audio_files(path)
                if not found:
                    raise DatasetError(f"{path}: reference folder has no audio clips")
                clips += found
            elif path.is_file():
                clips.append(path)
            else:
                raise DatasetError(f"{path}: reference clip or folder not found")
    else:
        if not speaker:
            raise DatasetError("no target speaker for the reference clips; pass -s NAME or --reference")
        folder = Path(dataset_dir) / str(speaker)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: reference folder not found; pass the target speaker's clips with "
                               f"--reference, or --dataset_dir where resample.py wrote {speaker}/")
        clips = audio_files(folder)
        if not clips:
            raise DatasetError(f"{folder}: speaker '{speaker}' has no clips there; pass --reference")
    if limit > 0 and len(clips) > limit:
        picks = np.linspace(0, len(clips) - 1, limit).round().astype(int)
        clips = [clips[i] for i in picks]
    return clips


# ----------------------------------------------------------------------------------- scoring


@dataclass
class FileScores:
    name: str
    seconds: float
    secs_target: float | None = None
    secs_source: float | None = None
    dnsmos_sig: float | None = None
    dnsmos_bak: float | None = None
    dnsmos_ovrl: float | None = None
    dnsmos_p808: float | None = None
    f0_corr: float | None = None
    f0_rmse_hz: float | None = None
    f0_rmse_cents: float | None = None
    vde: float | None = None
    f0_frames: int = 0
    convert_seconds: float | None = None


class Evaluator:
    """The scoring models, loaded once, and the target speaker's reference embedding."""

    def __init__(self, references: Sequence[str | os.PathLike] = (), f0_predictor: str = "pm",
                 device: str = "cpu", dnsmos: bool = True, speaker_similarity: bool = True) -> None:
        self.references = [Path(p) for p in references]
        self.f0_predictor = f0_predictor
        self.device = device
        self.use_dnsmos = dnsmos
        self.use_secs = speaker_similarity
        self._target: np.ndarray | None = None
        self._predictor: Any = None
        self._source_cache: dict[str, dict[str, np.ndarray]] = {}

    @property
    def encoder(self):
        from modules.speaker_embedding import load_speaker_encoder

        return load_speaker_encoder()

    @property
    def target_embedding(self) -> np.ndarray | None:
        if self._target is None and self.use_secs and self.references:
            logger.info("embedding %d reference clip(s)", len(self.references))
            self._target = self.encoder.embed_speaker([load_audio(p) for p in self.references])
        return self._target

    def measure_f0(self, audio: np.ndarray, sr: int) -> np.ndarray:
        if self._predictor is None:
            from modules.pitch import get_f0_predictor

            try:
                self._predictor = get_f0_predictor(self.f0_predictor, hop_length=MEASURE_HOP,
                                                   sampling_rate=MEASURE_SR, device=self.device)
            except ValueError as e:
                raise InferenceError(str(e)) from None
        from modules.audio import resample

        return self._predictor.compute_f0(resample(audio, sr, MEASURE_SR))

    def _source_feature(self, key: str | None, kind: str, compute: Any) -> np.ndarray:
        """A source's embedding or F0, kept under `key` when given (the same source in several rows)."""
        if key is None:
            return compute()
        cached = self._source_cache.setdefault(key, {})
        if kind not in cached:
            cached[kind] = compute()
        return cached[kind]

    def score(self, name: str, output: np.ndarray, sr: int, source: np.ndarray | None = None,
              source_sr: int | None = None, transpose: float = 0.0, source_key: str | None = None) -> FileScores:
        """Scores of one converted clip; the source (with the transposition applied) enables F0 and leak.

        `source_key` names the source so its embedding and F0 are computed once across rows.
        """
        scores = FileScores(name, len(output) / sr)
        if self.use_secs:
            embedding = self.encoder.embed(output, sr)
            target = self.target_embedding
            if target is not None:
                scores.secs_target = _cosine(embedding, target)
            if source is not None:
                source_embedding = self._source_feature(source_key, "embedding",
                                                        lambda: self.encoder.embed(source, source_sr))
                scores.secs_source = _cosine(embedding, source_embedding)
        if self.use_dnsmos:
            from modules.dnsmos import load_dnsmos

            mos = load_dnsmos().score(output, sr)
            scores.dnsmos_sig, scores.dnsmos_bak, scores.dnsmos_ovrl, scores.dnsmos_p808 = (
                mos.sig, mos.bak, mos.ovrl, mos.p808)
        if source is not None:
            source_f0 = self._source_feature(source_key, "f0", lambda: self.measure_f0(source, source_sr))
            requested = source_f0 * float(2.0 ** (transpose / 12.0))
            f0 = f0_scores(requested, self.measure_f0(output, sr))
            scores.f0_corr, scores.f0_rmse_hz, scores.f0_rmse_cents = f0.corr, f0.rmse_hz, f0.rmse_cents
            scores.vde, scores.f0_frames = f0.vde, f0.frames
        return scores


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


# ----------------------------------------------------------------------------------- rows


@dataclass
class Source:
    path: Path
    transpose: float = 0.0


@dataclass
class Row:
    label: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    files: list[FileScores] = field(default_factory=list)

    @property
    def rtf(self) -> float | None:
        timed = [f for f in self.files if f.convert_seconds is not None]
        audio = sum(f.seconds for f in timed)
        return sum(f.convert_seconds for f in timed) / audio if timed and audio > 0 else None

    def summary(self) -> dict[str, float | None]:
        """Mean of each metric over the files that have it, plus the RTF."""
        result: dict[str, float | None] = {}
        for key in METRICS:
            values = [getattr(f, key) for f in self.files if getattr(f, key) is not None]
            result[key] = float(np.mean(values)) if values else None
        result["rtf"] = self.rtf
        return result

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "options": self.options, "summary": self.summary(),
                "files": [asdict(f) for f in self.files]}


def _option_fields() -> dict[str, type]:
    from modules.inference import ConvertOptions

    defaults = ConvertOptions()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(ConvertOptions)
            if f.name != "speaker" and isinstance(getattr(defaults, f.name), (bool, int, float, str))}


def _parse_value(key: str, text: str, kind: type) -> Any:
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise InferenceError(f"--sweep {key}: '{text}' is not a valid {kind.__name__}") from None
    return text


def parse_sweep(specs: Sequence[str]) -> list[dict[str, Any]]:
    """['noise_scale=0,0.4', 'f0_predictor=pm,harvest'] -> every combination, one dict per row."""
    if not specs:
        return [{}]
    known = _option_fields()
    axes: list[list[tuple[str, Any]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = SWEEP_ALIASES.get(key.strip().lstrip("-"), key.strip().lstrip("-"))
        if not sep or not values.strip():
            raise InferenceError(f"--sweep '{spec}': write NAME=V1,V2,... (e.g. noise_scale=0,0.4)")
        if key not in known:
            raise InferenceError(f"--sweep: unknown option '{key}'; choose one of {', '.join(sorted(known))}")
        axis = [(key, _parse_value(key, v, known[key])) for v in values.split(",")]
        if key == "f0_predictor":
            from modules.pitch import PREDICTOR_NAMES

            unknown = [v for _, v in axis if v not in PREDICTOR_NAMES]
            if unknown:
                raise InferenceError(f"--sweep f0_predictor: unknown predictor '{unknown[0]}'; choose one of "
                                     f"{', '.join(PREDICTOR_NAMES)}")
        axes.append(axis)
    return [dict(combo) for combo in itertools.product(*axes)]


def _label(model: str | None, combo: dict[str, Any], several_models: bool) -> str:
    parts = [Path(model).stem] if model and (several_models or not combo) else []
    parts += [f"{k}={v}" for k, v in combo.items()]
    return " ".join(parts) or "converted"


def evaluate_models(models: Sequence[str | os.PathLike], config: str | os.PathLike, sources: Sequence[Source],
                    base: Any, evaluator: Evaluator, sweep: Sequence[dict[str, Any]] = ({},),
                    engine_options: dict[str, Any] | None = None, save_dir: str | os.PathLike | None = None,
                    show_progress: bool = True) -> list[Row]:
    """Convert every source with every model and option set (through SvcEngine) and score the results.

    `base` is a ConvertOptions; a sweep value overrides it, a source's transposition applies unless
    the sweep sets `transpose`.
    """
    from tqdm import tqdm

    from modules.inference import SvcEngine

    loaded = [(src, *load_audio(src.path)) for src in sources]
    rows: list[Row] = []
    work = [(m, combo) for m in models for combo in sweep]
    bar = tqdm(total=len(work) * len(loaded), desc="evaluate", unit="file", disable=not show_progress)
    engine, engine_model = None, None
    for model, combo in work:
        if engine_model != model:
            engine = SvcEngine.load(model, config, **(engine_options or {}))
            engine_model = model
            engine.resolve_speaker(base.speaker)
        row = Row(_label(str(model), combo, len(models) > 1), str(model), dict(combo))
        for src, audio, sr in loaded:
            options = replace(base, transpose=src.transpose)
            options = replace(options, **combo)
            started = time.perf_counter()
            converted = engine.convert(audio, sr, options)
            elapsed = time.perf_counter() - started
            if save_dir is not None:
                from modules.audio import save_audio

                save_audio(Path(save_dir) / f"{row.label.replace(' ', '_').replace('/', '_')}_{src.path.stem}.wav",
                           converted, engine.sr)
            scores = evaluator.score(src.path.name, converted, engine.sr, audio, sr, options.transpose,
                                     source_key=str(src.path))
            scores.convert_seconds = elapsed
            row.files.append(scores)
            bar.update(1)
        rows.append(row)
    bar.close()
    return rows


def evaluate_files(converted: Sequence[str | os.PathLike], evaluator: Evaluator,
                   sources: Sequence[Source] | None = None, label: str = "converted") -> Row:
    """Score already converted files; `sources` (same order and count) enable F0 and source leak."""
    if sources and len(sources) != len(converted):
        raise InferenceError(f"{len(converted)} converted file(s) but {len(sources)} source(s); pair them one "
                             f"to one in the same order, or give no sources")
    row = Row(label)
    for i, path in enumerate(converted):
        audio, sr = load_audio(path)
        src = sources[i] if sources else None
        src_audio, src_sr = load_audio(src.path) if src else (None, None)
        row.files.append(evaluator.score(Path(path).name, audio, sr, src_audio, src_sr,
                                         src.transpose if src else 0.0))
    return row


def quality_scores(converted: str | os.PathLike, references: Sequence[str | os.PathLike],
                   source: str | os.PathLike | None = None, transpose: float = 0.0, f0_predictor: str = "pm",
                   device: str = "cpu") -> dict[str, float | None]:
    """One converted file's scores (the keys of METRICS), e.g. for the quick-start's summary."""
    return compare_outputs({"converted": converted}, references, source, transpose, f0_predictor, device)[0][1]


def compare_outputs(outputs: Mapping[str, str | os.PathLike], references: Sequence[str | os.PathLike],
                    source: str | os.PathLike | None = None, transpose: float = 0.0, f0_predictor: str = "pm",
                    device: str = "cpu") -> list[tuple[str, dict[str, float | None]]]:
    """(label, scores) per converted file of one source, e.g. an untrained and a trained model's outputs;
    the reference embedding is computed once. The result goes straight into `format_table`."""
    evaluator = Evaluator(references, f0_predictor=f0_predictor, device=device)
    sources = [Source(Path(source), transpose)] if source is not None else None
    return [(label, evaluate_files([path], evaluator, sources, label).summary()) for label, path in outputs.items()]


# ----------------------------------------------------------------------------------- output


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def format_table(rows: Iterable[Row | tuple[str, Mapping[str, float | None]]],
                 extra_columns: Sequence[tuple[str, str, str]] = ()) -> str:
    """Plain-text table, one line per row; rows are Row objects or (label, summary) pairs.

    `extra_columns` (title, key, format) append scores computed elsewhere, e.g. ("MCD↓", "mcd", "{:.2f}")
    for a summary that also holds "mcd".
    """
    items = [(r.label, r.summary()) if isinstance(r, Row) else r for r in rows]
    columns = (*COLUMNS, *extra_columns)
    header = ["row"] + [title for title, _, _ in columns]
    lines = [[label] + [_cell(summary.get(key), fmt) for _, key, fmt in columns] for label, summary in items]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    return "\n".join([render(header), render(["-" * w for w in widths]), *[render(line) for line in lines]])


def write_report(path: str | os.PathLike, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    from modules.atomic_write import write_text

    write_text(path, json.dumps({**meta, "rows": [r.as_dict() for r in rows]}, indent=2, ensure_ascii=False) + "\n")
