"""F0 predictor benchmark on synthetic singing with a known contour.

    python -m bench.f0                 # every predictor, a bass and a soprano clip, about 1-3 minutes on CPU

Voices come from modules/synthetic_voices.py (random melodies with octave leaps, glides, vibrato,
consonant noise bursts and pauses), with note loudness evened out (balanced_singing)
because the generator's formant filter alone makes notes differ by 30-50 dB. Scores, over frames
that are not within 2 frames of a voicing change:

- RPA: raw pitch accuracy, share of voiced frames whose (interpolated) f0 is within 50 cents;
- RCA: raw chroma accuracy, the same with octave errors forgiven;
- recall: share of voiced frames marked voiced (uv = 1);
- FA: share of unvoiced frames (pauses and consonants) marked voiced; FA-sil: the same in pauses only;
- s/10s: seconds of compute per 10 s of 44.1 kHz audio (model loading excluded, shown separately).

Slow predictors (CREPE full) run on a shorter excerpt of each clip and their time is scaled.
A predictor that cannot be built (not written yet, weights missing) is listed with its error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import modules.frame_features  # noqa: F401  (torch/librosa import up front, not billed to the first predictor)
from modules.atomic_write import write_text
from modules.config import PROJECT_ROOT
from modules.pitch.base import PREDICTOR_NAMES, F0Predictor, get_f0_predictor
from modules.synthetic_voices import SyntheticVoice, balanced_singing, pause_frames, synth_singing

logger = logging.getLogger("bench.f0")

SR, HOP = 44100, 512
VOICES = (("bass", 11), ("soprano", 12))


@dataclasses.dataclass
class Clip:
    """A scored excerpt: audio plus per-frame reference and masks."""

    name: str
    audio: np.ndarray
    f0: np.ndarray
    voiced: np.ndarray
    stable: np.ndarray
    pause: np.ndarray

    def head(self, seconds: float) -> "Clip":
        n_samples = min(len(self.audio), int(seconds * SR))
        n_frames = n_samples // HOP
        return Clip(self.name, self.audio[:n_samples], self.f0[:n_frames], self.voiced[:n_frames],
                    self.stable[:n_frames], self.pause[:n_frames])

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


@dataclasses.dataclass
class Spec:
    label: str
    name: str
    kwargs: dict[str, Any]
    slow: bool = False
    note: str = ""


@dataclasses.dataclass
class Result:
    label: str
    note: str
    error: str | None = None
    rpa: dict[str, float] = dataclasses.field(default_factory=dict)
    rca: float = float("nan")
    recall: float = float("nan")
    false_alarm: float = float("nan")
    false_alarm_silence: float = float("nan")
    seconds_per_10s: float = float("nan")
    load_seconds: float = float("nan")
    audio_seconds: float = 0.0


def make_clip(voice: SyntheticVoice, name: str) -> Clip:
    return Clip(name, voice.audio, voice.f0, voice.voiced, voice.stable, pause_frames(voice))


def make_clips(seconds: float, raw_levels: bool) -> list[Clip]:
    clips = []
    for speaker, seed in VOICES:
        kwargs = dict(leap_prob=0.3, pause_prob=0.2)
        voice = (synth_singing(speaker, seconds, seed=seed, **kwargs) if raw_levels
                 else balanced_singing(speaker, seconds, seed=seed, **kwargs))
        clips.append(make_clip(voice, speaker))
    return clips


def random_rmvpe_checkpoint(folder: Path) -> Path:
    """A random-weight checkpoint in the published layout: same cost as the real network, meaningless output."""
    import torch

    from modules.pitch.rmvpe import RMVPENet

    torch.manual_seed(0)
    path = folder / "rmvpe_random.pt"
    state = {k: v.half() if v.is_floating_point() else v for k, v in RMVPENet().state_dict().items()}
    torch.save({"model": state}, path)
    return path


def build_specs(rmvpe_path: Path, tmp: Path, names: list[str] | None) -> list[Spec]:
    specs = [Spec("pm", "pm", {}), Spec("dio", "dio", {}), Spec("harvest", "harvest", {}),
             Spec("crepe", "crepe", {}, slow=True, note="full")]
    if "crepe-tiny" in PREDICTOR_NAMES:
        specs.append(Spec("crepe-tiny", "crepe-tiny", {}))
    else:
        specs.append(Spec("crepe-tiny", "crepe", {"model": "tiny"}))
    if rmvpe_path.is_file():
        specs.append(Spec("rmvpe", "rmvpe", {"model_path": rmvpe_path}, note=f"weights {rmvpe_path.name}"))
    elif names is None or "rmvpe" in names:
        specs.append(Spec("rmvpe", "rmvpe", {"model_path": random_rmvpe_checkpoint(tmp)},
                          note="RANDOM weights (no pretrain/rmvpe.pt): timing only"))
    specs.append(Spec("fcpe", "fcpe", {}))
    return [s for s in specs if names is None or s.label in names]


def cents(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return 1200.0 * np.log2(np.maximum(estimate, 1e-3) / np.maximum(reference, 1e-3))


def score(spec: Spec, clips: list[Clip], slow_seconds: float) -> Result:
    result = Result(spec.label, spec.note)
    start = time.perf_counter()
    try:
        predictor: F0Predictor = get_f0_predictor(spec.name, hop_length=HOP, sampling_rate=SR, **spec.kwargs)
        predictor.compute_f0_uv(clips[0].audio[: SR // 2])  # warm-up: lazy loads and first-call setup
    except Exception as e:  # any failure to build is reported in the table, not fatal
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if len(first_line) > 160:
            first_line = first_line[:157] + "..."
        result.error = f"not available: {type(e).__name__}: {first_line}"
        logger.warning("%s: not available: %s: %s", spec.label, type(e).__name__, e)
        return result
    result.load_seconds = time.perf_counter() - start

    used = [c.head(slow_seconds) if spec.slow else c for c in clips]
    if spec.slow:
        result.note = (result.note + f"; {slow_seconds:g} s per voice, time scaled").lstrip("; ")
    compute = 0.0
    within, chroma, recall, alarm, alarm_sil = [], [], [], [], []
    for clip in used:
        t0 = time.perf_counter()
        f0, uv = predictor.compute_f0_uv(clip.audio)
        compute += time.perf_counter() - t0
        voiced = clip.voiced & clip.stable
        unvoiced = ~clip.voiced & clip.stable
        error = cents(f0[voiced], clip.f0[voiced])
        result.rpa[clip.name] = float(np.mean(np.abs(error) < 50.0))
        within.append(np.abs(error) < 50.0)
        chroma.append(np.abs(error - 1200.0 * np.round(error / 1200.0)) < 50.0)
        recall.append(uv[voiced] > 0)
        alarm.append(uv[unvoiced] > 0)
        alarm_sil.append(uv[clip.pause] > 0)
    result.rca = float(np.mean(np.concatenate(chroma)))
    result.recall = float(np.mean(np.concatenate(recall)))
    result.false_alarm = float(np.mean(np.concatenate(alarm)))
    result.false_alarm_silence = float(np.mean(np.concatenate(alarm_sil)))
    result.audio_seconds = sum(c.seconds for c in used)
    result.seconds_per_10s = compute / result.audio_seconds * 10.0
    return result


def format_table(results: list[Result], clips: list[Clip]) -> str:
    names = [c.name for c in clips]
    header = ["predictor"] + [f"RPA {n}" for n in names] + ["RCA", "recall", "FA", "FA-sil", "s/10s", "load s", "note"]
    rows = [header]
    pct = lambda x: f"{100 * x:5.1f}%"  # noqa: E731
    for r in results:
        if r.error:
            rows.append([r.label] + [""] * (len(header) - 2) + [r.error])
            continue
        rows.append([r.label] + [pct(r.rpa[n]) for n in names] + [
            pct(r.rca), pct(r.recall), pct(r.false_alarm), pct(r.false_alarm_silence),
            f"{r.seconds_per_10s:.2f}", f"{r.load_seconds:.1f}", r.note])
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(header) - 1)]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(len(header) - 1)] + [row[-1]]
        lines.append(" | ".join(cells).rstrip())
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths) + "-+-----")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of each synthetic voice (bass and soprano) in seconds (default 10)")
    parser.add_argument("--slow-seconds", type=float, default=2.5,
                        help="seconds per voice for slow predictors (CREPE full); their time is scaled (default 2.5)")
    parser.add_argument("--predictors", default=None,
                        help="comma-separated subset, e.g. pm,dio,rmvpe (default: all, crepe-tiny included)")
    parser.add_argument("--rmvpe-path", type=Path, default=PROJECT_ROOT / "pretrain" / "rmvpe.pt",
                        help="RMVPE weights; if missing, a random-weight network is timed (accuracy meaningless)")
    parser.add_argument("--raw-levels", action="store_true",
                        help="keep voices.py's uneven note loudness instead of evening the notes out")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    names = [n.strip() for n in args.predictors.split(",")] if args.predictors else None
    start = time.perf_counter()
    clips = make_clips(args.seconds, args.raw_levels)
    with tempfile.TemporaryDirectory(prefix="bench_f0_") as tmp:
        specs = build_specs(args.rmvpe_path, Path(tmp), names)
        results = [score(spec, clips, args.slow_seconds) for spec in tqdm(specs, desc="predictors", unit="pred")]
    print(f"\nF0 benchmark: {len(clips)} voices x {args.seconds:g} s at {SR} Hz, hop {HOP}"
          f"{' (raw voices.py levels)' if args.raw_levels else ' (note levels evened out)'}")
    print(format_table(results, clips))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        write_text(args.json, json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
