"""Throughput of the whole preprocessing step (preprocess_hubert_f0) with 1 and 2 processes.

    python -m bench.preprocess                          # fcpe, 8 clips x 4 s, 1 and 2 processes, CPU
    python -m bench.preprocess --f0_predictor dio       # another predictor
    python -m bench.preprocess --use_diff --device cuda

Builds a synthetic dataset (modules/synthetic_voices.py) and a HuBERT-base-sized fairseq checkpoint with
random weights (12 layers, 768 wide, 95 M parameters; same cost as ContentVec) in a temporary
folder, then times `run_preprocess` end to end: process start-up, model loading, audio loading,
F0, units, spectrogram, volume (and diffusion mels with --use_diff). Reported: audio seconds
processed per wall second (higher is better). Each process count starts from a clean copy.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--f0_predictor", default="fcpe", help="F0 predictor to include (default: fcpe)")
    p.add_argument("--clips", type=int, default=8, help="number of synthetic clips (default: 8)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each clip in seconds (default: 4)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                   help="process counts to time (default: 1 2)")
    p.add_argument("--device", default="cpu", help="torch device for encoder and F0 network (default: cpu)")
    p.add_argument("--use_diff", action="store_true", help="also time the diffusion mel / aug features")
    p.add_argument("--keep", type=str, default=None, help="work in this folder and keep it (default: a temp folder)")
    return p


def _setup(work: Path, clips: int, seconds: float) -> tuple[Path, Path]:
    from modules.synthetic_voices import write_dataset
    from vencoder.fairseq_writer import write_fairseq_hubert

    pretrain = work / "pretrain"
    ckpt = pretrain / "checkpoint_best_legacy_500.pt"
    if not ckpt.exists():
        t0 = time.perf_counter()
        write_fairseq_hubert(ckpt, layers=12, dim=768, ffn=3072, heads=12, conv_dim=512, conv_pos=128, groups=16,
                             final_dim=256, seed=0)
        logging.info("wrote a HuBERT-base-sized checkpoint in %.1f s", time.perf_counter() - t0)
    data = work / "clean"
    if not data.exists():
        half = clips // 2
        write_dataset(data, {"alto": clips - half, "bass": half}, seconds=seconds, seed=7)
    return pretrain, data


def run(args: argparse.Namespace) -> list[dict]:
    from modules.config import HParams, load_template
    from modules.preprocess import PreprocessSettings, find_clips, run_preprocess
    from vdecoder.vocoder import VocoderMel

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pretrain, clean = _setup(work, args.clips, args.seconds)
        hps = HParams(**load_template())
        hps.model.vol_embedding = True
        settings = PreprocessSettings(hps, f0_predictor=args.f0_predictor, use_diff=args.use_diff, mel=VocoderMel(),
                                      pretrain_dir=str(pretrain))
        rows = []
        for n in args.processes:
            data = work / f"run_{n}"
            if data.exists():
                shutil.rmtree(data)
            shutil.copytree(clean, data)
            report = run_preprocess(find_clips(data), settings, num_processes=n, device=args.device,
                                    progress=False)
            if report.failed:
                raise RuntimeError(f"{len(report.failed)} clips failed, first: {report.failed[0]}")
            rows.append({"processes": n, "clips": report.processed, "audio_s": report.audio_seconds,
                         "wall_s": report.wall_seconds, "speed": report.realtime_factor})
        return rows
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows = run(args)
    print(f"preprocess: f0={args.f0_predictor}, encoder=HuBERT-base size (random), device={args.device}, "
          f"use_diff={args.use_diff}, cpu_count={os.cpu_count()}")
    print(f"{'processes':>9} {'clips':>5} {'audio s':>8} {'wall s':>7} {'audio s / wall s':>17}")
    for r in rows:
        print(f"{r['processes']:>9} {r['clips']:>5} {r['audio_s']:>8.1f} {r['wall_s']:>7.1f} {r['speed']:>17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
