"""Convert songs with a trained so-vits-svc 4.1 model (same flags as the original inference_main.py).

    python inference_main.py -m logs/44k/G_8000.pth -c logs/44k/config.json -n song.flac -t 0 -s alto

`-n` takes names under raw/ (".wav" appended when there is no dot, as the original), file paths, or
folders (every audio file inside, recursively). Each name gets the matching `-t` (missing ones repeat
the first); every name is converted for every `-s` speaker. Results go to
results/{name}_{key}_{spk}_sovits_{f0p}.{wf}. The logic lives in modules.inference_batch and
modules.inference.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from modules.cli import run_cli
from modules.inference import ConvertOptions
from modules.inference_batch import BatchRequest, convert_batch
from modules.pitch import PREDICTOR_NAMES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inference_main.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--spk_mix_file", default="spkmix.py", help="map file for -usm (default spkmix.py)")
    p.add_argument("--raw_dir", default="raw", help="folder bare -n names are looked up in (default raw)")
    p.add_argument("--results_dir", default="results", help="output folder (default results)")
    p.add_argument("--pretrain_dir", default="pretrain", help="folder with the speech encoder's weights (default pretrain)")
    p.add_argument("--fast", action="store_true", help="reduced-precision synthesis (bf16 on CPU, fp16 on GPU)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> None:
    options = ConvertOptions(
        clip_seconds=args.clip, linear_gradient=args.linear_gradient,
        linear_gradient_retain=args.linear_gradient_retain, pad_seconds=args.pad_seconds, slice_db=args.slice_db,
        auto_predict_f0=args.auto_predict_f0, f0_predictor=args.f0_predictor, f0_threshold=args.f0_filter_threshold,
        noise_scale=args.noice_scale, loudness_envelope_adjustment=args.loudness_envelope_adjustment,
    )
    written = convert_batch(BatchRequest(
        model_path=args.model_path, config_path=args.config_path, names=args.clean_names, transposes=args.trans,
        speakers=args.spk_list, options=options, spk_mix_file=args.spk_mix_file if args.use_spk_mix else None,
        raw_dir=args.raw_dir, results_dir=args.results_dir, wav_format=args.wav_format, device=args.device,
        fast=args.fast, pretrain_dir=args.pretrain_dir, show_progress=not args.no_progress,
    ))
    print(f"wrote {len(written)} file(s): " + ", ".join(str(p) for p in written))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def checked_run(args: argparse.Namespace) -> None:
        if not 0 < args.linear_gradient_retain <= 1:
            parser.error(f"-lgr must be in (0, 1], got {args.linear_gradient_retain}")
        if args.clip < 0 or args.linear_gradient < 0 or args.pad_seconds < 0:
            parser.error("-cl, -lg and -p must not be negative")
        run(args)

    return run_cli(parser, checked_run, argv)


if __name__ == "__main__":
    sys.exit(main())
