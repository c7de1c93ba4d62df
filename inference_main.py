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
from modules.inference_batch import (
    BatchRequest,
    add_convert_arguments,
    convert_batch,
    convert_options,
    diffusion_options,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inference_main.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", default="logs/44k/G_37600.pth", help="G checkpoint (G_*.pth or a release file)")
    p.add_argument("-c", "--config_path", default="logs/44k/config.json", help="config.json the model was trained with")
    p.add_argument("-n", "--clean_names", nargs="+", required=True,
                   help="inputs: names under raw/ ('.wav' appended if there is no dot), audio file paths, or folders")
    p.add_argument("-t", "--trans", nargs="+", type=int, default=[0],
                   help="semitone shift per input; missing values repeat the first (default 0)")
    p.add_argument("-s", "--spk_list", nargs="+", default=None,
                   help="target speaker names (or numeric ids); each input is converted for each (default: first speaker)")
    p.add_argument("-usm", "--use_spk_mix", action="store_true",
                   help="dynamic speaker mix from the map in spkmix.py (see --spk_mix_file)")
    p.add_argument("-wf", "--wav_format", default="flac", choices=["wav", "flac", "ogg"], help="output format")
    p.add_argument("--spk_mix_file", default="spkmix.py", help="map file for -usm (default spkmix.py)")
    p.add_argument("--results_dir", default="results", help="output folder (default results)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="synthesizer runtime: torch, or onnx (onnxruntime on the CPU; -d, --precision, --fast and -a "
                        "do not apply; see --onnx_model)")
    p.add_argument("--onnx_model", default=None,
                   help="exported graph for --backend onnx (default: <model>_SoVits.onnx next to -m, exported "
                        "from -m/-c when missing or older than them)")
    add_convert_arguments(p)
    return p


def run(args: argparse.Namespace) -> None:
    written = convert_batch(BatchRequest(
        model_path=args.model_path, config_path=args.config_path, names=args.clean_names, transposes=args.trans,
        speakers=args.spk_list, options=convert_options(args),
        spk_mix_file=args.spk_mix_file if args.use_spk_mix else None, raw_dir=args.raw_dir,
        results_dir=args.results_dir, wav_format=args.wav_format, device=args.device, fast=args.fast,
        precision=args.precision,
        pretrain_dir=args.pretrain_dir, show_progress=not args.no_progress, backend=args.backend,
        onnx_model=args.onnx_model, cluster_model_path=args.cluster_model_path,
        cluster_infer_ratio=args.cluster_infer_ratio, feature_retrieval=args.feature_retrieval,
        diffusion=diffusion_options(args), diffusion_model_path=args.diffusion_model_path,
        diffusion_config_path=args.diffusion_config_path, vocoder_dir=args.vocoder_dir,
    ))
    print(f"wrote {len(written)} file(s): " + ", ".join(str(p) for p in written))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
