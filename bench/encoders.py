"""Speech encoder speed on CPU: seconds of compute per 10 s of 16 kHz audio, for every encoder.

    python -m bench.encoders                              # all thirteen (several minutes on 2 cores)
    python -m bench.encoders --encoders dphubert,wavlmbase+ --seconds 10 --repeats 3

Weight files are written at the published sizes with seeded random weights (speed does not depend
on the values) into a temporary folder, in each encoder's real file layout, then loaded through the
registry like a real file. Columns: parameters of the network that runs, seconds to write the file
and to load it, and the median encode time of one clip of `--seconds` seconds scaled to 10 s.
The whisper encoders always compute whole 30-s windows (as the original), so a 10-s clip costs a
full window. DPHuBERT's per-layer sizes are not published in its paper's tables: the bench uses a
pruned layout of about a quarter of HuBERT base (its 0.75 sparsity).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from vencoder import SPEECH_ENCODERS, clear_cache, get_speech_encoder
from vencoder import random_weights as ef
from vencoder.fairseq_writer import write_fairseq_hubert, write_hubert_soft
from vencoder.hubert import HubertConfig, HubertModel

logger = logging.getLogger("bench.encoders")

BASE = {"dim": 768, "ffn": 3072, "heads": 12, "conv_dim": 512, "conv_pos": 128, "groups": 16}


def _contentvec(folder: Path) -> None:
    write_fairseq_hubert(folder / "checkpoint_best_legacy_500.pt", layers=12, final_dim=256, **BASE)


def _hubertsoft(folder: Path) -> None:
    write_hubert_soft(folder / "hubert-soft-0d54a1f4.pt", layers=12, final_dim=256,
                      **{k: v for k, v in BASE.items() if k != "heads"})


def _whisper(file: str, dim: int, heads: int, layers: int) -> Callable[[Path], None]:
    return lambda folder: ef.write_whisper(folder / file, n_ctx=1500, dim=dim, heads=heads, layers=layers)


def _cnhubert(folder: Path) -> None:
    ef.write_fairseq_hubert_large(folder / "chinese-hubert-large-fairseq-ckpt.pt", layers=24, dim=1024, ffn=4096,
                                  heads=16, conv_dim=512, conv_pos=128, groups=16, final_dim=768)


def _wavlm(folder: Path) -> None:
    ef.write_wavlm(folder / "WavLM-Base+.pt", layers=12, dim=768, ffn=3072, heads=12, conv_dim=512, conv_pos=128,
                   groups=16)


def _dphubert(folder: Path) -> None:
    cfg = ef.dphubert_config(dim=768, head_dim=64, pos_kernel=128, pos_groups=16)
    cfg["extractor_conv_layer_config"] = [[384, 10, 5]] + [[384, 3, 2]] * 4 + [[320, 2, 2]] * 2
    cfg["encoder_num_layers"] = 12
    cfg["encoder_num_heads"] = [6, 5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 0]
    cfg["encoder_use_attention"] = [h > 0 for h in cfg["encoder_num_heads"]]
    cfg["encoder_ff_interm_features"] = [900, 900, 800, 800, 700, 700, 600, 600, 500, 400, 300, 200]
    cfg["encoder_use_feed_forward"] = [True] * 12
    path = folder / "DPHuBERT-sp0.75.pth"
    torch.save({"config": cfg, "state_dict": ef.dphubert_state(cfg)}, path)


class _OnnxWrapper(torch.nn.Module):
    """ContentVec up to `layer` (optionally through final_proj), [1, 1, N] -> [1, T, D], for export."""

    def __init__(self, model: HubertModel, layer: int, proj: bool) -> None:
        super().__init__()
        self.model, self.layer, self.proj = model, layer, proj

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        wav = source[:, 0]
        units, _frames = self.model.extract(wav, torch.full((1,), wav.shape[1], dtype=torch.long),
                                            self.layer, self.proj)
        return units


def _onnx(file: str, layer: int, proj: bool) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        torch.manual_seed(0)
        cfg = HubertConfig(conv_pos=128, conv_pos_groups=16, final_dim=256)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_OnnxWrapper(HubertModel(cfg).eval(), layer, proj), (torch.zeros(1, 1, 16000),),
                              str(folder / file), input_names=["source"], output_names=["embed"],
                              dynamic_axes={"source": {2: "n"}, "embed": {1: "t"}}, dynamo=False)
    return build


BUILDERS: dict[str, Callable[[Path], None]] = {
    "vec768l12": _contentvec, "vec256l9": _contentvec, "hubertsoft": _hubertsoft,
    "whisper-ppg": _whisper("medium.pt", 1024, 16, 24),
    "whisper-ppg-large": _whisper("large-v2.pt", 1280, 20, 32),
    "cnhubertlarge": _cnhubert, "dphubert": _dphubert, "wavlmbase+": _wavlm,
    "vec256l9-onnx": _onnx("vec-256-layer-9.onnx", 9, True),
    "vec256l12-onnx": _onnx("vec-256-layer-12.onnx", 12, True),
    "vec768l9-onnx": _onnx("vec-768-layer-9.onnx", 9, False),
    "vec768l12-onnx": _onnx("vec-768-layer-12.onnx", 12, False),
    "hubertsoft-onnx": _onnx("hubert-soft.onnx", 12, True),
}


def _parameters(encoder) -> str:
    for attr in ("model", "encoder"):
        module = getattr(encoder, attr, None)
        if isinstance(module, torch.nn.Module):
            return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"
    return "-"


def bench_one(name: str, seconds: float, repeats: int) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="bench_enc_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        BUILDERS[name](folder)
        built = time.perf_counter() - start
        clear_cache()
        start = time.perf_counter()
        encoder = get_speech_encoder(name, device="cpu", pretrain_dir=folder)
        loaded = time.perf_counter() - start
        wav = torch.randn(int(seconds * 16000), generator=torch.Generator().manual_seed(0)) * 0.1
        encoder.encode(wav[:16000])  # warm-up: first-call allocations and kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            units = encoder.encode(wav)
            times.append(time.perf_counter() - start)
        clear_cache()
    per10 = statistics.median(times) * 10.0 / seconds
    return {"encoder": name, "dim": str(units.shape[1]), "frames": str(units.shape[2]), "params": _parameters(encoder),
            "write s": f"{built:.1f}", "load s": f"{loaded:.1f}", "s / 10 s audio": f"{per10:.2f}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default=",".join(SPEECH_ENCODERS),
                        help="comma-separated encoder names (default: all thirteen)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the timed clip in seconds")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per encoder (the median is shown)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown encoders: {', '.join(unknown)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clip {args.seconds:g} s, "
          f"{args.repeats} run(s)")
    rows = []
    for name in names:
        try:
            rows.append(bench_one(name, args.seconds, args.repeats))
        except Exception as e:  # one failing encoder should not hide the others' numbers
            logger.error("%s: %s: %s", name, type(e).__name__, e)
            rows.append({"encoder": name, "s / 10 s audio": f"failed ({type(e).__name__})"})
        print("  " + " | ".join(rows[-1].values()), flush=True)
    columns = ["encoder", "dim", "frames", "params", "write s", "load s", "s / 10 s audio"]
    widths = [max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns]
    print()
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(row.get(c, "").ljust(w) for c, w in zip(columns, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
