"""Cost of evaluate.py's metrics per second of scored audio, on synthetic singing.

    python -m bench.evaluate [--seconds 5 10 30] [--threads 1]

For each clip length: seconds of compute per second of audio for the speaker embedding (SECS, one
embedding per clip), DNSMOS (P.835 + P.808), and the F0 measurement (pm, source and output). Model
loading is excluded and shown once. Conversion time (the RTF column of evaluate.py) is not part of
this: that is bench/infer.py.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from modules.dnsmos import load_dnsmos
from modules.evaluation import Evaluator
from modules.speaker_embedding import load_speaker_encoder
from modules.synthetic_voices import synth_singing


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", nargs="+", type=float, default=[5.0, 10.0, 30.0], help="clip lengths to time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_s = _timed(load_speaker_encoder) + _timed(load_dnsmos)
    warm = synth_singing("alto", 1.0, seed=0)
    load_speaker_encoder().embed(warm.audio, warm.sr)  # first-call costs (librosa, onnxruntime) out of the table
    load_dnsmos().score(warm.audio, warm.sr)
    evaluator = Evaluator(dnsmos=False, speaker_similarity=False)
    evaluator.measure_f0(warm.audio, warm.sr)
    print(f"model loading: {load_s:.2f} s (speaker encoder + DNSMOS); torch threads {torch.get_num_threads()}")
    print(f"{'audio s':>8}  {'SECS s/s':>9}  {'DNSMOS s/s':>10}  {'F0 s/s':>7}  {'total s/s':>9}")
    for seconds in args.seconds:
        voice = synth_singing("alto", seconds, seed=1)
        audio, sr = voice.audio, voice.sr
        duration = len(audio) / sr
        secs = _timed(load_speaker_encoder().embed, audio, sr) / duration
        mos = _timed(load_dnsmos().score, audio, sr) / duration
        f0 = 2 * _timed(evaluator.measure_f0, audio, sr) / duration  # source and output
        # Per converted file evaluate.py embeds the output and the source: two embeddings.
        total = 2 * secs + mos + f0
        print(f"{duration:8.1f}  {secs:9.4f}  {mos:10.4f}  {f0:7.4f}  {total:9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
