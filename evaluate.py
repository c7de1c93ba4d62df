"""Measure conversion quality: speaker similarity, DNSMOS, F0 accuracy and speed, one table row per model or option set.

    python evaluate.py -m logs/44k/G_4000.pth logs/44k/G_8000.pth -c logs/44k/config.json -n song.wav -s alto
    python evaluate.py -m logs/44k/G_8000.pth -n song.wav -s alto --sweep noise_scale=0,0.4,0.8
    python evaluate.py --converted results/song.wav_0key_alto_sovits_pm.flac -n song.wav -s alto

Sources (-n) are converted with every model (-m) and every --sweep combination, through the same
engine and inference flags as inference_main.py; or already converted files are scored (--converted,
paired in order with -n when given). The target speaker's reference clips default to the training
clips in dataset/44k/<speaker>/. Prints one table and writes JSON (--out). Arrows: higher (↑) or
lower (↓) is better. The logic lives in modules.evaluation.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from modules.cli import run_cli
from modules.errors import InferenceError
from modules.evaluation import (
    DEFAULT_MAX_REFERENCES,
    Evaluator,
    Source,
    evaluate_files,
    evaluate_models,
    format_table,
    parse_sweep,
    reference_clips,
    write_report,
)
from modules.inference_batch import add_convert_arguments, convert_options, resolve_jobs
from modules.pitch import PREDICTOR_NAMES

logger = logging.getLogger("evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", nargs="+", default=None,
                   help="G checkpoint(s) to convert with; each gives its own row (or use --converted)")
    p.add_argument("-c", "--config_path", default="logs/44k/config.json", help="config.json the models were trained with")
    p.add_argument("-n", "--clean_names", nargs="+", default=None,
                   help="source audio: names under raw/, file paths or folders (as inference_main.py)")
    p.add_argument("-t", "--trans", nargs="+", type=int, default=[0],
                   help="semitone shift per source; missing values repeat the first (default 0)")
    p.add_argument("-s", "--spk", default=None,
                   help="target speaker (name or id) to convert to and compare with (default: the config's first)")
    p.add_argument("--converted", nargs="+", default=None,
                   help="score these already converted files instead of converting (paired in order with -n)")
    p.add_argument("--reference", nargs="+", default=None,
                   help="the target speaker's reference clips or folders (default: DATASET_DIR/<speaker>/)")
    p.add_argument("--dataset_dir", default="dataset/44k",
                   help="folder whose <speaker>/ sub-folder holds the default reference clips (default dataset/44k)")
    p.add_argument("--max_references", type=int, default=DEFAULT_MAX_REFERENCES,
                   help=f"use at most this many reference clips, spread over the list (default {DEFAULT_MAX_REFERENCES}; 0 = all)")
    p.add_argument("--sweep", action="append", default=None, metavar="NAME=V1,V2",
                   help="one row per value of an inference option (e.g. noise_scale=0,0.4); repeat for every combination")
    p.add_argument("--eval_f0p", default="pm", choices=PREDICTOR_NAMES,
                   help="F0 predictor that measures source and output F0 (default pm; needs no weights)")
    p.add_argument("--no_dnsmos", action="store_true", help="skip the DNSMOS scores")
    p.add_argument("--no_secs", action="store_true", help="skip the speaker similarity scores")
    p.add_argument("--out", default="results/evaluation.json", help="JSON report path (default results/evaluation.json)")
    p.add_argument("--save_dir", default=None, help="also write every converted file here, to listen to")
    add_convert_arguments(p)
    return p


def _sources(args: argparse.Namespace) -> list[Source]:
    if not args.clean_names:
        return []
    return [Source(job.source, job.transpose) for job in resolve_jobs(args.clean_names, args.trans, Path(args.raw_dir))]


def _target_speaker(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(speaker to convert to, speaker name whose clips are the reference)."""
    if not args.model_path:
        return args.spk, args.spk
    from modules.config import load_config

    speakers = dict(load_config(args.config_path).spk)
    speaker = args.spk if args.spk is not None else (min(speakers, key=speakers.get) if speakers else "0")
    if speaker in speakers:
        return speaker, speaker
    by_id = {int(v): k for k, v in speakers.items()}
    return speaker, by_id.get(int(speaker)) if speaker.isdigit() else speaker


def _run(args: argparse.Namespace) -> int:
    if not args.model_path and not args.converted:
        raise InferenceError("nothing to evaluate: pass models with -m (and sources with -n) or files with --converted")
    if args.model_path and args.converted:
        raise InferenceError("pass either -m (convert, then score) or --converted (score only), not both")
    if args.sweep and args.converted:
        raise InferenceError("--sweep needs models to convert with (-m); --converted files are scored as they are")
    sweep = parse_sweep(args.sweep or [])  # checked before any model or clip is loaded
    sources = _sources(args)
    if args.model_path and not sources:
        raise InferenceError("-m needs source audio to convert: pass it with -n")
    speaker, reference_name = _target_speaker(args)
    references = [] if args.no_secs else reference_clips(reference_name, args.reference, args.dataset_dir,
                                                         args.max_references)
    evaluator = Evaluator(references, f0_predictor=args.eval_f0p, device=args.device or "cpu",
                          dnsmos=not args.no_dnsmos, speaker_similarity=not args.no_secs)
    if args.converted:
        rows = [evaluate_files(args.converted, evaluator, sources or None)]
    else:
        base = dataclasses.replace(convert_options(args), speaker=speaker)
        rows = evaluate_models(
            args.model_path, args.config_path, sources, base, evaluator, sweep,
            engine_options={"device": args.device, "fast": args.fast, "precision": args.precision,
                            "pretrain_dir": args.pretrain_dir},
            save_dir=args.save_dir, show_progress=not args.no_progress,
        )
    print(format_table(rows))
    write_report(args.out, rows, {"speaker": reference_name, "references": [str(p) for p in references],
                                  "f0_measured_with": args.eval_f0p})
    logger.info("wrote %s", args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
