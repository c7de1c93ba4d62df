"""Benchmark the training step: seconds per step and peak memory, default config, fp32 vs bf16 autocast.

    python -m bench.train                      # batch 2 and 6, segment 10240, fp32 and bf16, CPU (+ CUDA if present)
    python -m bench.train --batches 2 --precisions fp32 --steps 2
    python -m bench.train --original ../so-vits-svc --batches 2   # side by side with a so-vits-svc 4.1 checkout

Each (device, batch, precision) runs in its own subprocess so that peak memory (ru_maxrss on the
CPU, max_memory_allocated on CUDA) belongs to that configuration alone. Batches are synthesised
in memory before timing (synthetic singing, random units) and go through the real collate, so
data loading is not part of the measured step. The first step is a warm-up and is not timed; on
CUDA the peak is that of the timed steps, since cuDNN's autotuner (cudnn.benchmark, which both this
project and the 4.1 train.py switch on) tries algorithms with large scratch buffers in the first step
(the JSON rows keep that peak as warm_up_peak_gb).

With `--original PATH` (a so-vits-svc 4.1 checkout with its requirements installed) the checkout's
training step and ours run side by side at fp32: both read the same config (`--config` with
`--segment` written in), start from the same random-weight G_0.pth / D_0.pth pair (each side's loaded
networks are checked against the files) and get the same batch, saved once per batch size; the first
(warm-up) step's losses of both sides are printed. The checkout's train.py needs
CUDA and keeps its step inside a function, so bench/_train_side.py assembles that step at run time
from the checkout's models, losses, mel and commons modules; nothing of it is part of this repository.
Every run is a fresh process importing only its own project; runs alternate original, ours, ...
`--repeats` times (default 3) and the table shows medians: case | original | ours | ours/original.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._peak_rss import launched
from modules.config import PROJECT_ROOT

# The original so-vits-svc 4.1 (fp32, CPU) on the 2-core reference machine, from the task brief.
ORIGINAL_CPU = {2: (4.1, 3.8), 6: (10.8, 5.9)}  # batch -> (s/step, peak GB)


def _make_batch(hps, batch_size: int, seconds: float, seed: int):
    """A collated training batch from synthetic voices, every feature computed like preprocessing does."""
    import numpy as np
    import torch

    from modules.data import ClipItem, collate_clips
    from modules.frame_features import spectrogram, volume
    from modules.pitch.base import interpolate_f0
    from modules.synthetic_voices import synth_singing

    sr, hop = hps.data.sampling_rate, hps.data.hop_length
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch_size):
        voice = synth_singing(("alto", "bass")[i % 2], seconds, sr=sr, hop=hop, seed=seed * 100 + i)
        audio = torch.from_numpy(voice.audio)
        t = len(voice.audio) // hop
        f0, uv = interpolate_f0(voice.f0[:t])
        units = torch.randn(hps.model.ssl_dim, t, generator=gen)
        spec = spectrogram(audio, hps.data.filter_length, hop, hps.data.win_length)[:, :t]
        vol = volume(audio, hop)[:t] if hps.model.vol_embedding else None
        items.append(ClipItem(units, torch.from_numpy(np.asarray(f0)), spec, audio[None, : t * hop], i % 2,
                              torch.from_numpy(np.asarray(uv)), vol, f"synthetic_{i}"))
    return collate_clips(items)


def calibrate_gflops(seconds: float = 1.0) -> float:
    """fp32 matmul throughput right now, so timings from a shared or busy machine can be put in context."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * 1024 ** 3 * count / (time.perf_counter() - t0) / 1e9


def run_one(config: str, device: str, batch_size: int, precision: str, segment: int, seconds: float,
            steps: int) -> dict:
    """Time `steps` training steps after one warm-up step; returns a result row."""
    import torch

    from modules.config import load_config
    from modules.device import resolve_device
    from modules.distributed import DistContext
    from modules.training import Trainer, TrainOptions

    hps = load_config(config)
    hps.train.batch_size = batch_size
    hps.train.segment_size = segment
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(hps, model_dir, DistContext(0, 0, 1, dev),
                          TrainOptions(device=device, precision=precision, tensorboard=False, progress=False))
        batch = _make_batch(hps, batch_size, seconds, seed=1).to(dev)
        times = []
        warm_up_peak_gb = float("nan")
        for i in range(steps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            result = trainer.train_step(batch)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i > 0:
                times.append(time.perf_counter() - t0)
            elif dev.type == "cuda":
                # cuDNN's autotuner (cudnn.benchmark) tries algorithms with large scratch buffers during
                # the first step: report that peak apart from the steady one
                warm_up_peak_gb = torch.cuda.max_memory_allocated(dev) / 1e9
                torch.cuda.reset_peak_memory_stats(dev)
            if result.skipped:
                raise RuntimeError(f"step {i} produced a non-finite loss: {result.losses}")
    gflops = calibrate_gflops() if dev.type == "cpu" else float("nan")
    if dev.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(dev) / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    return {"device": str(dev), "batch": batch_size, "precision": precision, "s_per_step": statistics.median(times),
            "min_s": min(times), "peak_gb": peak_gb, "frames": int(batch.lengths.max()), "threads": torch.get_num_threads(),
            "gflops": gflops, "load": os.getloadavg()[0], "warm_up_peak_gb": warm_up_peak_gb}


def _format_table(rows: list[dict]) -> str:
    head = (f"{'device':<8} {'batch':>5} {'prec':<5} {'s/step':>8} {'min s':>7} {'peak GB':>8} {'vs orig time':>12} "
            f"{'vs orig mem':>11} {'GFLOP/s':>8} {'load':>5} {'thr':>3}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['device']:<8} {r['batch']:>5} {r['precision']:<5} {r['error']}")
            continue
        ref = ORIGINAL_CPU.get(r["batch"]) if r["device"] == "cpu" else None
        t_ratio = f"{r['s_per_step'] / ref[0]:.2f}x" if ref else "-"
        m_ratio = f"{r['peak_gb'] / ref[1]:.2f}x" if ref else "-"
        lines.append(f"{r['device']:<8} {r['batch']:>5} {r['precision']:<5} {r['s_per_step']:>8.2f} {r['min_s']:>7.2f} "
                     f"{r['peak_gb']:>8.2f} {t_ratio:>12} {m_ratio:>11} {r['gflops']:>8.1f} {r['load']:>5.1f} {r['threads']:>3}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- side by side (--original)

SIDE_RUNNER = Path(__file__).resolve().parent / "_train_side.py"
# What the side runner imports from a checkout.
CHECKOUT_FILES = ("models.py", "utils.py", "modules/losses.py", "modules/mel_processing.py", "modules/commons.py")


def write_compare_config(source: str | os.PathLike, dest: Path, segment: int) -> Path:
    """`source` merged with the template and `train.segment_size` = `segment`, as one file for both sides."""
    from modules.config import load_config, save_config

    hps = load_config(source)
    hps.train.segment_size = segment
    if float(hps.model.discriminator_width) != 1.0:
        logging.warning("%s: model.discriminator_width is %s, but the original's discriminator is always full "
                        "width; the two sides train different discriminators", source, hps.model.discriminator_width)
    save_config(hps, dest)
    return dest


def write_batch(hps, batch_size: int, seconds: float, path: Path) -> Path:
    """One collated synthetic batch as an .npz (vol only when the config embeds volume)."""
    import numpy as np

    batch = _make_batch(hps, batch_size, seconds, seed=1)
    arrays = {k: getattr(batch, k).numpy() for k in ("units", "f0", "spec", "audio", "speaker", "lengths", "uv")}
    if batch.vol is not None:
        arrays["vol"] = batch.vol.numpy()
    np.savez(path, **arrays)
    return path


def write_initial_pair(hps, folder: Path) -> Path:
    """Random-weight `G_0.pth` / `D_0.pth` (seed train.seed) in `folder`: both sides start from these."""
    import torch

    from models import MultiPeriodDiscriminator, SynthesizerTrn
    from modules.checkpoint import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(hps.train.seed)
    net_g = SynthesizerTrn.from_hparams(hps)
    net_d = MultiPeriodDiscriminator(hps.model.use_spectral_norm, hps.model.discriminator_width)
    save_checkpoint(net_g, None, float(hps.train.learning_rate), 0, folder / "G_0.pth")
    save_checkpoint(net_d, None, float(hps.train.learning_rate), 0, folder / "D_0.pth")
    return folder


def run_train_side(side: str, root: Path, config: Path, inputs: Path, init_dir: Path, device: str, threads: int,
                   steps: int) -> dict:
    """One fresh-process measurement of one side (bench/_train_side.py), after checking that the side's
    networks hold exactly the tensors of the starting pair in `init_dir`."""
    from bench.infer import run_side_process, weights_mismatch

    args = [str(config), str(inputs), str(init_dir), device, str(threads), str(steps)]
    result = run_side_process(SIDE_RUNNER, side, root, args, threads)
    for name, digests in result.pop("weights").items():
        wrong = weights_mismatch(digests, init_dir / name)
        if wrong:
            raise RuntimeError(f"{side} did not load {len(wrong)} tensor(s) of {name} as saved, e.g. "
                               f"{', '.join(wrong[:3])}")
    return result


def _train_cell(runs: list[dict]) -> tuple[str, float, float]:
    t = statistics.median(r["s_per_step"] for r in runs)
    mb = statistics.median(r["peak_mb"] for r in runs)
    return f"{t:.2f} s/step, {mb / 1024:.2f} GB", t, mb


def compare_table(rows: list[dict]) -> str:
    """Markdown table: case | original | ours | ours/original (medians over the repeats)."""
    lines = ["| case | original | ours | ours/original |", "|---|---|---|---|"]
    for row in rows:
        case = f"training step, batch {row['batch']}, segment {row['segment']}"
        if row["device"] != "cpu":
            case += f" ({row['device']})"
        orig, t_orig, mb_orig = _train_cell(row["original"])
        ours, t_ours, mb_ours = _train_cell(row["ours"])
        lines.append(f"| {case} | {orig} | {ours} | time {t_ours / t_orig:.2f}, memory {mb_ours / mb_orig:.2f} |")
    return "\n".join(lines)


def first_step_line(row: dict) -> str:
    """The warm-up step's losses of both sides (same weights, batch and seed) and their relative difference."""
    (od, og), (d, g) = ((row[side][0]["loss_d"], row[side][0]["loss_g"]) for side in ("original", "ours"))
    return (f"batch {row['batch']}, first step losses D / G: original {od:.6g} / {og:.6g}, ours {d:.6g} / {g:.6g} "
            f"(relative difference {abs(d - od) / max(abs(od), 1e-12):.1e} / {abs(g - og) / max(abs(og), 1e-12):.1e})")


def compare(args: argparse.Namespace) -> int:
    from modules.config import load_config

    original = Path(args.original).resolve()
    missing = [name for name in CHECKOUT_FILES if not (original / name).is_file()]
    if missing:
        print(f"{original}: not a so-vits-svc 4.1 checkout (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    ours = Path(PROJECT_ROOT).resolve()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="svc-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        config = write_compare_config(args.config, tmp / "config.json", args.segment)
        hps = load_config(config)
        init_dir = write_initial_pair(hps, tmp / "init")
        for device in args.devices or ["cpu"]:
            for batch in args.batches:
                inputs = write_batch(hps, batch, args.seconds, tmp / f"batch_{batch}.npz")
                runs: dict[str, list[dict]] = {"original": [], "ours": []}
                for _ in range(args.repeats):
                    for side in ("original", "ours"):
                        try:
                            runs[side].append(run_train_side(side, original if side == "original" else ours,
                                                             config, inputs, init_dir, device, args.threads,
                                                             args.steps))
                        except RuntimeError as e:
                            print(e, file=sys.stderr)
                            return 1
                        print(f"batch {batch} {side}: {runs[side][-1]}", flush=True)
                rows.append({"device": device, "batch": batch, "segment": args.segment, **runs})
    print()
    print(f"fp32, {args.seconds:g} s clips, median of {args.steps} steps after a warm-up per process, "
          f"median of {args.repeats} processes per side")
    print(compare_table(rows))
    for row in rows:
        print(first_step_line(row))
    if args.json:
        from modules.atomic_write import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(PROJECT_ROOT / "configs_template" / "config_template.json"),
                   help="model config to benchmark (default: the 4.1 default template)")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 6], help="batch sizes (default: 2 6)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                   help="autocast modes (default: fp32 bf16)")
    p.add_argument("--devices", nargs="+", default=None,
                   help="devices to run on (default: cpu, plus cuda when available)")
    p.add_argument("--segment", type=int, default=10240, help="train.segment_size in samples (default 10240)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each synthetic clip (default 5 s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration after one warm-up (default 3)")
    p.add_argument("--force_half", action="store_true",
                   help="run bf16/fp16 on a CPU without native half kernels too (very slow)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--original", default=None, metavar="PATH",
                   help="a so-vits-svc 4.1 checkout: time its training step and ours side by side, fp32 (see above)")
    p.add_argument("--repeats", type=int, default=3,
                   help="with --original: fresh processes per side and batch, alternating (median; default 3)")
    p.add_argument("--threads", type=int, default=0,
                   help="with --original: torch CPU threads in both sides (default 0: torch's own choice)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one configuration as JSON
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(run_one(**spec)))
        return 0
    if args.original:
        return compare(args)
    import torch

    devices = args.devices
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from modules.device import cpu_has_fast_half

    rows = []
    for device in devices:
        for batch in args.batches:
            for precision in args.precisions:
                half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
                if device == "cpu" and half is not None and not (cpu_has_fast_half(half) or args.force_half):
                    rows.append({"device": device, "batch": batch, "precision": precision,
                                 "error": "skipped: no native kernels on this CPU (emulated, ~40x slower than "
                                          "fp32); --force_half runs it anyway"})
                    print(_format_table(rows[-1:]).splitlines()[-1], flush=True)
                    continue
                spec = dict(config=args.config, device=device, batch_size=batch, precision=precision,
                            segment=args.segment, seconds=args.seconds, steps=args.steps)
                proc = subprocess.run(launched([sys.executable, "-m", "bench.train", "--worker", json.dumps(spec)]),
                                      cwd=PROJECT_ROOT,
                                      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
                found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not found:
                    error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    rows.append({"device": device, "batch": batch, "precision": precision, "error": f"failed: {error}"})
                else:
                    rows.append(json.loads(found[-1][len("RESULT "):]))
                print(_format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(f"segment {args.segment} samples, {args.seconds:.1f} s clips, median of {args.steps} steps after a warm-up")
    print(_format_table(rows))
    print("vs orig: ratio to so-vits-svc 4.1 fp32 on the 2-core reference CPU (4.1 s / 3.8 GB at batch 2, "
          "10.8 s / 5.9 GB at batch 6), measured on an idle machine. GFLOP/s: fp32 1024^2 matmul "
          "throughput right after the run, and load: 1-min load average; a busy machine inflates s/step.")
    if args.json:
        from modules.atomic_write import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
