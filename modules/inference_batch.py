"""The conversion stage (`inference_main.py`): resolve the inputs, load the model once, convert every
input for every target speaker and write the results.

`-n` entries are names under raw/ (".wav" appended when there is no dot, as the original does), file
paths, or folders (every audio file inside, recursively). Each entry gets the matching `-t` (missing
ones repeat the first). Results go to results/{name}_{key}_{spk}_sovits_{f0p}.{wf}.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from cluster.mixing import UnitMixer, resolve_cluster_path
from modules.audio import AUDIO_EXTENSIONS, save_audio
from modules.config import DIFFUSION_METHODS
from modules.device import PRECISIONS
from modules.diffusion_infer import DiffusionOnlyEngine, DiffusionOptions, attach
from modules.errors import ConfigError, InferenceError
from modules.inference import ConvertOptions, SvcEngine
from modules.inference_plan import output_name
from modules.pitch import PREDICTOR_NAMES
from modules.speaker_mix import load_spk_mix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    source: Path  # audio file to read
    clean_name: str  # name used in the result file name (may contain sub-folders)
    transpose: int


@dataclass
class BatchRequest:
    """One run of inference_main.py: what to load, what to convert, where to write."""

    model_path: str | os.PathLike
    config_path: str | os.PathLike
    names: Sequence[str]
    transposes: Sequence[int] = (0,)
    speakers: Sequence[str] | None = None  # None: the config's first speaker
    options: ConvertOptions = field(default_factory=ConvertOptions)  # speaker/transpose are set per job
    spk_mix_file: str | os.PathLike | None = None  # set: dynamic speaker mix from this map file
    raw_dir: str | os.PathLike = "raw"
    results_dir: str | os.PathLike = "results"
    wav_format: str = "flac"
    device: str | None = None
    fast: bool = False  # --fast: the same as precision "auto"
    precision: str | None = None  # --precision (modules.device.PRECISIONS); None: auto if fast, else fp32
    pretrain_dir: str | os.PathLike | None = None
    show_progress: bool = True
    backend: str = "torch"  # "onnx": the exported graph on onnxruntime
    onnx_model: str | os.PathLike | None = None  # None: <model>_SoVits.onnx next to the checkpoint
    cluster_model_path: str | os.PathLike = ""  # -cm ("" with a ratio: the default file in logs/44k)
    cluster_infer_ratio: float = 0.0  # -cr
    feature_retrieval: bool = False  # -fr: -cm is a faiss feature index
    diffusion: DiffusionOptions = field(default_factory=DiffusionOptions)  # -shd/-od/-eh and their settings
    diffusion_model_path: str | os.PathLike = "logs/44k/diffusion/model_0.pt"
    diffusion_config_path: str | os.PathLike = "logs/44k/diffusion/config.yaml"
    vocoder_dir: str | os.PathLike | None = None  # None: the diffusion config's, or pretrain/nsf_hifigan


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that shape one conversion, shared by inference_main.py and evaluate.py (names, meanings
    and defaults as so-vits-svc 4.1's inference_main.py)."""
    p.add_argument("-cl", "--clip", type=float, default=0, help="forced slice length in seconds; 0 = only cut at silences")
    p.add_argument("-a", "--auto_predict_f0", action="store_true",
                   help="use the model's f0 decoder (speech only; transposition then has no effect)")
    p.add_argument("-cm", "--cluster_model_path", default="",
                   help="k-means model (or feature index with -fr); empty with -cr > 0 means "
                        "logs/44k/kmeans_10000.pt, or logs/44k/feature_and_index.pkl with -fr")
    p.add_argument("-cr", "--cluster_infer_ratio", type=float, default=0,
                   help="0..1: how far units are pulled toward the target speaker's own (less timbre leak, "
                        "less clear words); 0 = off (default)")
    p.add_argument("-fr", "--feature_retrieval", action="store_true",
                   help="-cm/-cr refer to a faiss feature index (train_index.py) instead of a k-means model")
    p.add_argument("-lg", "--linear_gradient", type=float, default=0,
                   help="overlap and crossfade between forced slices, in seconds (with -cl)")
    p.add_argument("-f0p", "--f0_predictor", default="pm", choices=PREDICTOR_NAMES, help="F0 predictor (default pm)")
    p.add_argument("-lea", "--loudness_envelope_adjustment", type=float, default=1,
                   help="1 keeps the output's loudness envelope, 0 imposes the input's, in between mixes")
    p.add_argument("-sd", "--slice_db", type=float, default=-40, help="silence threshold in dBFS for slicing (default -40)")
    p.add_argument("-d", "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("-ns", "--noice_scale", type=float, default=0.4,
                   help="prior noise scale (spelled as in the original; default 0.4)")
    p.add_argument("-p", "--pad_seconds", type=float, default=0.5,
                   help="silence padded on both sides of each slice, in seconds (default 0.5)")
    p.add_argument("-lgr", "--linear_gradient_retain", type=float, default=0.75,
                   help="fraction of the -lg overlap that is blended (0 < lgr <= 1, default 0.75)")
    p.add_argument("-ft", "--f0_filter_threshold", type=float, default=0.05,
                   help="voicing threshold of the crepe, rmvpe and fcpe predictors (default 0.05)")
    p.add_argument("-eh", "--enhance", action="store_true",
                   help="re-synthesise the output with the NSF-HiFiGAN vocoder (pretrain/nsf_hifigan/); off with -shd")
    p.add_argument("-eak", "--enhancer_adaptive_key", type=float, default=0,
                   help="semitones the enhancer shifts its working range by, for very high or low voices (default 0)")
    p.add_argument("-shd", "--shallow_diffusion", action="store_true",
                   help="refine the so-vits output with the diffusion model (-dm, -dc); turns -eh off")
    p.add_argument("-ks", "--k_step", type=int, default=100,
                   help="shallow diffusion depth in steps, at most the model's k_step_max (default 100)")
    p.add_argument("-se", "--second_encoding", action="store_true",
                   help="shallow diffusion: re-encode units from the so-vits output instead of the input")
    p.add_argument("-od", "--only_diffusion", action="store_true",
                   help="convert with the diffusion model and vocoder alone; no so-vits model (-m, -c unused)")
    p.add_argument("-dm", "--diffusion_model_path", default="logs/44k/diffusion/model_0.pt",
                   help="diffusion model (model_*.pt) for -shd / -od")
    p.add_argument("-dc", "--diffusion_config_path", default="logs/44k/diffusion/config.yaml",
                   help="config.yaml the diffusion model was trained with")
    p.add_argument("--diffusion_method", default=None, choices=DIFFUSION_METHODS,
                   help="diffusion sampler (default: infer.method of the diffusion config)")
    p.add_argument("--diffusion_speedup", type=int, default=None,
                   help="steps skipped per solver step; 1 = full ancestral sampling (default: infer.speedup)")
    p.add_argument("--vocoder_dir", default=None,
                   help="NSF-HiFiGAN folder (config.json, model); default: the diffusion config's, or pretrain/nsf_hifigan")
    p.add_argument("--raw_dir", default="raw", help="folder bare -n names are looked up in (default raw)")
    p.add_argument("--pretrain_dir", default="pretrain", help="folder with the speech encoder's weights (default pretrain)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="synthesis precision: fp32 (default), bf16, fp16, or auto = the fastest the device runs "
                        "natively (fp16 on a GPU; bf16 on a CPU with native bf16 kernels, else fp32, which it logs)")
    p.add_argument("--fast", action="store_true", help="same as --precision auto")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")


def convert_options(args: argparse.Namespace) -> ConvertOptions:
    """ConvertOptions from the flags of `add_convert_arguments`; ConfigError for values out of range."""
    if not 0 < args.linear_gradient_retain <= 1:
        raise ConfigError(f"-lgr must be in (0, 1], got {args.linear_gradient_retain}")
    if args.clip < 0 or args.linear_gradient < 0 or args.pad_seconds < 0:
        raise ConfigError("-cl, -lg and -p must not be negative")
    return ConvertOptions(
        clip_seconds=args.clip, linear_gradient=args.linear_gradient,
        linear_gradient_retain=args.linear_gradient_retain, pad_seconds=args.pad_seconds, slice_db=args.slice_db,
        auto_predict_f0=args.auto_predict_f0, f0_predictor=args.f0_predictor, f0_threshold=args.f0_filter_threshold,
        noise_scale=args.noice_scale, loudness_envelope_adjustment=args.loudness_envelope_adjustment,
    )


def diffusion_options(args: argparse.Namespace) -> DiffusionOptions:
    """DiffusionOptions from the flags of `add_convert_arguments`."""
    return DiffusionOptions(shallow=args.shallow_diffusion, only=args.only_diffusion, k_step=args.k_step,
                            second_encoding=args.second_encoding, method=args.diffusion_method,
                            speedup=args.diffusion_speedup, enhance=args.enhance,
                            enhancer_adaptive_key=args.enhancer_adaptive_key)


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def resolve_jobs(names: Sequence[str], transposes: Sequence[int], raw_dir: str | os.PathLike) -> list[Job]:
    """Expand -n entries into files; bare names resolve under raw/ like the original."""
    raw_dir = Path(raw_dir)
    transposes = list(transposes) + [transposes[0]] * max(0, len(names) - len(transposes))
    jobs: list[Job] = []
    for name, t in zip(names, transposes):
        path = Path(name)
        if path.is_dir():
            files = audio_files(path)
            if not files:
                raise InferenceError(f"{path}: folder has no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
            jobs += [Job(f, f.relative_to(path).as_posix(), t) for f in files]
        elif path.is_file():
            jobs.append(Job(path, path.name, t))
        else:
            raw = raw_dir / name
            if "." not in name:
                raw = raw.with_name(raw.name + ".wav")
            if not raw.is_file():
                raise InferenceError(f"input '{name}' not found (looked for {path} and {raw}); pass a file, a folder, "
                                     f"or a name under {raw_dir}/")
            jobs.append(Job(raw, name, t))
    return jobs


def unit_mixer_for(request: BatchRequest, engine: SvcEngine, speakers: Sequence[str],
                spk_mix: bool) -> UnitMixer | None:
    """The -cm/-cr/-fr unit mixer, checked against every requested speaker before any work; None when off."""
    path = resolve_cluster_path(str(request.cluster_model_path), request.cluster_infer_ratio,
                                request.feature_retrieval)
    if not path:
        return None
    if spk_mix:
        logger.warning("-cr is ignored with -usm: the original skips cluster and feature retrieval with a speaker mix")
        return None
    mixer = UnitMixer(path, request.cluster_infer_ratio, request.feature_retrieval, engine.speakers)
    for spk in speakers:
        mixer.check(spk, engine.hps.model.ssl_dim)
    return mixer


def output_mode(diffusion: DiffusionOptions) -> str:
    """The mode part of a result name: diff (-od), sovdiff (-shd) or sovits, as the original names results."""
    return "diff" if diffusion.only else "sovdiff" if diffusion.shallow else "sovits"


def load_engine(request: BatchRequest) -> SvcEngine:
    """The engine a request asks for: the so-vits model (torch or onnxruntime) with the shallow diffusion or
    enhancer step attached, or the diffusion model alone (-od). Shared by the command line and the web UI."""
    diff = request.diffusion
    if diff.only:
        return DiffusionOnlyEngine.load(request.diffusion_model_path, request.diffusion_config_path, diff,
                                        device=request.device, pretrain_dir=request.pretrain_dir,
                                        vocoder_dir=request.vocoder_dir)
    if request.backend == "onnx":
        from modules.onnx_inference import load_onnx_engine

        engine = load_onnx_engine(request.model_path, request.config_path, request.onnx_model,
                                  pretrain_dir=request.pretrain_dir)
    else:
        engine = SvcEngine.load(request.model_path, request.config_path, device=request.device,
                                fast=request.fast, pretrain_dir=request.pretrain_dir, precision=request.precision)
    attach(engine, diff, request.diffusion_model_path, request.diffusion_config_path, request.vocoder_dir)
    return engine


def convert_batch(request: BatchRequest) -> list[Path]:
    """Convert every job for every speaker; returns the files written. Everything that can fail on the
    user's input (names, speakers, model, encoder weights) is checked before the first conversion."""
    jobs = resolve_jobs(request.names, request.transposes, request.raw_dir)
    engine = load_engine(request)
    diff = request.diffusion
    mode = output_mode(diff)
    mix = None
    if request.spk_mix_file is not None:
        mix = load_spk_mix(request.spk_mix_file, engine.speakers, engine.n_speakers)
        if not mix.enabled:
            logger.warning("%s: fewer than two speakers in the map; speaker mixing is off", request.spk_mix_file)
            mix = None
    speakers = list(request.speakers or [min(engine.speakers, key=engine.speakers.get) if engine.speakers else "0"])
    for spk in speakers:
        engine.resolve_speaker(spk)
    unit_mixer = unit_mixer_for(request, engine, speakers, mix is not None)
    _ = engine.encoder  # built now, so a missing pretrained file stops the run before any work
    if mix is not None:
        speakers = speakers[:1]
    base = request.options
    written: list[Path] = []
    work = [(job, spk) for job in jobs for spk in speakers]
    for job, spk in tqdm(work, desc="files", unit="file", disable=not request.show_progress, position=0):
        options = dataclasses.replace(base, speaker=spk, transpose=job.transpose, spk_mix=mix, unit_mixer=unit_mixer)
        audio = engine.convert_file(job.source, options, show_progress=request.show_progress)
        name = output_name(job.clean_name, job.transpose, str(spk), base.f0_predictor, request.wav_format,
                           auto_f0=base.auto_predict_f0, spk_mix=mix is not None,
                           cluster_ratio=request.cluster_infer_ratio, mode=mode)
        out = Path(request.results_dir) / name
        save_audio(out, audio, engine.sr)
        written.append(out)
        logger.info("%s -> %s", job.source, out)
    return written
