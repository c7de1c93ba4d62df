"""Convert songs with a trained so-vits-svc 4.1 model (same flags as the original inference_main.py).

    python inference_main.py -m logs/44k/G_8000.pth -c logs/44k/config.json -n song.flac -t 0 -s alto

`-n` takes names under raw/ (".wav" appended when there is no dot, as the original), file paths, or
folders (every audio file inside, recursively). Each name gets the matching `-t` (missing ones repeat
the first); every name is converted for every `-s` speaker. Results go to
results/{name}_{key}_{spk}_sovits_{f0p}.{wf}. The logic lives in modules.inference.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import soundfile as sf

from modules.audio import AudioError, save_audio
from modules.checkpoint import CheckpointError
from modules.config import ConfigError
from modules.errors import SvcError
from modules.inference import ConvertOptions, InferenceError, SvcEngine
from modules.inference_plan import output_name
from modules.pitch import PREDICTOR_NAMES
from modules.slicer import SlicerError
from modules.spkmix import SpkMixError, load_spk_mix
from vencoder import SpeechEncoderError

logger = logging.getLogger("inference_main")

AUDIO_EXTENSIONS = {"." + ext.lower() for ext in sf.available_formats()} | {".mp3", ".ogg", ".oga", ".opus"}


@dataclass(frozen=True)
class Job:
    source: Path  # audio file to read
    clean_name: str  # name used in the result file name (may contain sub-folders)
    transpose: int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", default="logs/44k/G_37600.pth", help="G checkpoint (G_*.pth or a release file)")
    p.add_argument("-c", "--config_path", default="logs/44k/config.json", help="config.json the model was trained with")
    p.add_argument("-cl", "--clip", type=float, default=0, help="forced slice length in seconds; 0 = only cut at silences")
    p.add_argument("-n", "--clean_names", nargs="+", required=True,
                   help="inputs: names under raw/ ('.wav' appended if there is no dot), audio file paths, or folders")
    p.add_argument("-t", "--trans", nargs="+", type=int, default=[0],
                   help="semitone shift per input; missing values repeat the first (default 0)")
    p.add_argument("-s", "--spk_list", nargs="+", default=None,
                   help="target speaker names (or numeric ids); each input is converted for each (default: first speaker)")
    p.add_argument("-a", "--auto_predict_f0", action="store_true",
                   help="use the model's f0 decoder (speech only; transposition then has no effect)")
    p.add_argument("-lg", "--linear_gradient", type=float, default=0,
                   help="overlap and crossfade between forced slices, in seconds (with -cl)")
    p.add_argument("-f0p", "--f0_predictor", default="pm", choices=PREDICTOR_NAMES, help="F0 predictor (default pm)")
    p.add_argument("-usm", "--use_spk_mix", action="store_true",
                   help="dynamic speaker mix from the map in spkmix.py (see --spk_mix_file)")
    p.add_argument("-lea", "--loudness_envelope_adjustment", type=float, default=1,
                   help="1 keeps the output's loudness envelope, 0 imposes the input's, in between mixes")
    p.add_argument("-sd", "--slice_db", type=float, default=-40, help="silence threshold in dBFS for slicing (default -40)")
    p.add_argument("-d", "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("-ns", "--noice_scale", type=float, default=0.4,
                   help="prior noise scale (spelled as in the original; default 0.4)")
    p.add_argument("-p", "--pad_seconds", type=float, default=0.5,
                   help="silence padded on both sides of each slice, in seconds (default 0.5)")
    p.add_argument("-wf", "--wav_format", default="flac", choices=["wav", "flac", "ogg"], help="output format")
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
    p.add_argument("--diffusion_method", default=None, choices=["dpm-solver++", "dpm-solver", "pndm", "ddim", "unipc"],
                   help="diffusion sampler (default: infer.method of the diffusion config)")
    p.add_argument("--diffusion_speedup", type=int, default=None,
                   help="steps skipped per solver step; 1 = full ancestral sampling (default: infer.speedup)")
    p.add_argument("--vocoder_dir", default=None,
                   help="NSF-HiFiGAN folder (config.json, model); default: the diffusion config's, or pretrain/nsf_hifigan")
    p.add_argument("--spk_mix_file", default="spkmix.py", help="map file for -usm (default spkmix.py)")
    p.add_argument("--raw_dir", default="raw", help="folder bare -n names are looked up in (default raw)")
    p.add_argument("--results_dir", default="results", help="output folder (default results)")
    p.add_argument("--pretrain_dir", default="pretrain", help="folder with the speech encoder's weights (default pretrain)")
    p.add_argument("--fast", action="store_true", help="reduced-precision synthesis (bf16 on CPU, fp16 on GPU)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def resolve_jobs(names: Sequence[str], trans: Sequence[int], raw_dir: Path) -> list[Job]:
    """Expand -n entries into files; bare names resolve under raw/ like the original."""
    trans = list(trans) + [trans[0]] * max(0, len(names) - len(trans))
    jobs: list[Job] = []
    for name, t in zip(names, trans):
        path = Path(name)
        if path.is_dir():
            files = _audio_files(path)
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


def run(args: argparse.Namespace) -> list[Path]:
    raw_dir, results = Path(args.raw_dir), Path(args.results_dir)
    jobs = resolve_jobs(args.clean_names, args.trans, raw_dir)
    from modules.diffusion_infer import DiffusionOnlyEngine, DiffusionOptions, attach

    diff = DiffusionOptions(shallow=args.shallow_diffusion, only=args.only_diffusion, k_step=args.k_step,
                            second_encoding=args.second_encoding, method=args.diffusion_method,
                            speedup=args.diffusion_speedup, enhance=args.enhance,
                            enhancer_adaptive_key=args.enhancer_adaptive_key)
    if args.only_diffusion:
        engine = DiffusionOnlyEngine.load(args.diffusion_model_path, args.diffusion_config_path, diff,
                                          device=args.device, pretrain_dir=args.pretrain_dir,
                                          vocoder_dir=args.vocoder_dir)
    else:
        engine = SvcEngine.load(args.model_path, args.config_path, device=args.device, fast=args.fast,
                                pretrain_dir=args.pretrain_dir)
        attach(engine, diff, args.diffusion_model_path, args.diffusion_config_path, args.vocoder_dir)
    mode = "diff" if args.only_diffusion else "sovdiff" if args.shallow_diffusion else "sovits"
    mix = None
    if args.use_spk_mix:
        mix = load_spk_mix(args.spk_mix_file, engine.speakers, engine.n_speakers)
        if not mix.enabled:
            logger.warning("%s: fewer than two speakers in the map; speaker mixing is off", args.spk_mix_file)
            mix = None
    speakers = args.spk_list or [min(engine.speakers, key=engine.speakers.get) if engine.speakers else "0"]
    for spk in speakers:  # fail before any work on an unknown speaker or a missing encoder file
        engine.resolve_speaker(spk)
    _ = engine.encoder  # built now, so a missing pretrained file stops the run before any work
    if mix is not None:
        speakers = speakers[:1]
    written: list[Path] = []
    show = not args.no_progress
    from tqdm import tqdm

    work = [(job, spk) for job in jobs for spk in speakers]
    for job, spk in tqdm(work, desc="files", unit="file", disable=not show, position=0):
        options = ConvertOptions(
            speaker=spk, transpose=job.transpose, clip_seconds=args.clip, linear_gradient=args.linear_gradient,
            linear_gradient_retain=args.linear_gradient_retain, pad_seconds=args.pad_seconds, slice_db=args.slice_db,
            auto_predict_f0=args.auto_predict_f0, f0_predictor=args.f0_predictor,
            f0_threshold=args.f0_filter_threshold, noise_scale=args.noice_scale,
            loudness_envelope_adjustment=args.loudness_envelope_adjustment, spk_mix=mix,
        )
        audio = engine.convert_file(job.source, options, show_progress=show)
        name = output_name(job.clean_name, job.transpose, str(spk), args.f0_predictor, args.wav_format,
                           auto_f0=args.auto_predict_f0, spk_mix=mix is not None, mode=mode)
        out = results / name
        save_audio(out, audio, engine.sr)
        written.append(out)
        logger.info("%s -> %s", job.source, out)
    return written


# Errors that mean "the user must change something": reported as one line, exit code 2.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    InferenceError, ConfigError, CheckpointError, AudioError, SpkMixError, SlicerError, SpeechEncoderError,
    SvcError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.linear_gradient_retain <= 1:
        parser.error(f"-lgr must be in (0, 1], got {args.linear_gradient_retain}")
    if args.clip < 0 or args.linear_gradient < 0 or args.pad_seconds < 0:
        parser.error("-cl, -lg and -p must not be negative")
    if args.k_step < 0 or (args.diffusion_speedup is not None and args.diffusion_speedup < 1):
        parser.error("-ks must not be negative and --diffusion_speedup must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = run(args)
    except KNOWN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} file(s): " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
