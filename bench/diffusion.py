"""Speed and memory of shallow diffusion and of the enhancer, default diffusion config, random weights.

    python -m bench.diffusion                    # 10 s and 60 s, CPU, 2 threads
    python -m bench.diffusion --device cuda      # GPU (peak memory = torch's max allocated)
    python -m bench.diffusion --durations 10     # quick

Cases (each in a fresh process, so peak RSS is its own; each first measures the machine's throughput on
the denoiser's main op, Conv1d 512->1024 kernel 3, so a busy shared machine is judged against itself):
- shallow: Unit2Mel (20 layers, 512 channels, 768-dim units) k_step 100, speedup 10, dpm-solver++,
  then the NSF-HiFiGAN vocoder (openvpi 44.1 kHz layout), on continuous voice (one piece);
- enhancer: the vocoder's mel of the audio, then re-synthesis.
RTF = compute seconds per audio second. "target" = 1.15 x (counted FLOPs / conv throughput): the
issue's goal. FLOPs are counted from the convolutions and linear layers actually run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._peak_rss import launched  # noqa: E402  (after the path setup above)

OPENVPI = {
    "sampling_rate": 44100, "num_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_size": 512,
    "fmin": 40, "fmax": 16000, "resblock": "1", "upsample_rates": [8, 8, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4, 4], "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class FlopCounter:
    """Counts multiply-adds x 2 of Conv1d, ConvTranspose1d and Linear layers while active."""

    def __init__(self, module) -> None:
        import torch

        self.flops = 0
        self.handles = []
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)):
                self.handles.append(m.register_forward_hook(self._hook))

    def _hook(self, m, inputs, output) -> None:
        import torch

        if isinstance(m, torch.nn.Linear):
            self.flops += 2 * output.numel() * m.in_features
        elif isinstance(m, torch.nn.ConvTranspose1d):
            x = inputs[0]
            self.flops += 2 * x.numel() * m.out_channels * m.kernel_size[0] // m.groups
        else:
            self.flops += 2 * output.numel() * (m.in_channels // m.groups) * m.kernel_size[0]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def conv_throughput(device, frames: int = 2048, repeats: int = 5) -> float:
    import torch

    conv = torch.nn.Conv1d(512, 1024, 3, padding=1).to(device).eval()
    x = torch.randn(1, 512, frames, device=device)
    with torch.inference_mode():
        conv(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x)
        _sync(device)
    elapsed = (time.perf_counter() - start) / repeats
    return 2 * 512 * 1024 * 3 * frames / elapsed / 1e9


def _models(device):
    import torch

    from diffusion.unit2mel import Unit2Mel
    from modules.config import HParams, load_diffusion_template
    from modules.diffusion_infer import DiffusionStage
    from vdecoder import NsfHifiGan

    torch.manual_seed(0)
    args = HParams(**load_diffusion_template())
    model = Unit2Mel.from_config(args).to(device).eval()
    with torch.no_grad():
        model.decoder.denoise_fn.output_projection.weight.normal_(0, 0.01)
    vocoder = NsfHifiGan(OPENVPI)
    vocoder.model.remove_weight_norm()
    vocoder = vocoder.to(device).eval()
    return DiffusionStage(model, args, vocoder, device), args


def run_case(kind: str, seconds: float, device_name: str, threads: int) -> dict:
    import numpy as np
    import torch

    from bench.infer import _continuous_f0
    from modules.diffusion_infer import DiffusionOptions, Enhancer

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    row = {"case": kind, "seconds": seconds, "device": device_name, "threads": threads}
    stage, args = _models(device)
    sr, hop = 44100, 512
    n = int(seconds * sr) // hop
    f0 = torch.from_numpy(_continuous_f0(n, sr, hop))[None].to(device)
    gen = torch.Generator().manual_seed(1)
    if kind == "shallow":
        units = torch.randn(1, 768, n, generator=gen).to(device)
        vol = (0.1 + 0.05 * torch.rand(1, n, generator=gen)).to(device)
        gt = (torch.randn(1, n, 128, generator=gen) - 5).to(device)
        opts = DiffusionOptions(shallow=True, k_step=100, method="dpm-solver++", speedup=10)
        stage.mel(units[..., :64], f0[:, :64], vol[:, :64], 0, opts, gt[:, :64])  # warm-up
        row["conv_gflops"] = round(conv_throughput(device), 1)
        counter = FlopCounter(stage.model)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        mel = stage.mel(units, f0, vol, 0, opts, gt)
        _sync(device)
        t1 = time.perf_counter()
        counter.close()
        voc = FlopCounter(stage.vocoder)
        stage.to_audio(mel, f0)
        _sync(device)
        t2 = time.perf_counter()
        voc.close()
        row.update(diffusion_s=round(t1 - t0, 2), vocoder_s=round(t2 - t1, 2), rtf=round((t2 - t0) / seconds, 3),
                   gflop_per_s_audio=round((counter.flops + voc.flops) / 1e9 / seconds, 1),
                   diffusion_gflop_per_s_audio=round(counter.flops / 1e9 / seconds, 1),
                   peak_mb=round(_peak_mb(device)))
    else:
        from modules.synthetic_voices import synth_singing

        audio = synth_singing("alto", seconds, seed=1).audio.astype(np.float32)
        enhancer = Enhancer(stage.vocoder)
        enhancer.enhance(audio[: sr], sr, np.asarray(f0[0, :86].cpu()), hop)  # warm-up
        row["conv_gflops"] = round(conv_throughput(device), 1)
        counter = FlopCounter(stage.vocoder)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        enhancer.enhance(audio, sr, np.asarray(f0[0].cpu()), hop)
        _sync(device)
        elapsed = time.perf_counter() - t0
        counter.close()
        row.update(vocoder_s=round(elapsed, 2), rtf=round(elapsed / seconds, 3),
                   gflop_per_s_audio=round(counter.flops / 1e9 / seconds, 1), peak_mb=round(_peak_mb(device)))
    return row


def _table(rows: list[dict]) -> str:
    head = (f"{'case':>9} {'audio':>6} {'device':>6} {'RTF':>7} {'GFLOP/s-audio':>14} {'conv GFLOP/s':>12} "
            f"{'target RTF':>10} {'peak MB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        target = 1.15 * r["gflop_per_s_audio"] / r["conv_gflops"]
        lines.append(f"{r['case']:>9} {r['seconds']:>5.0f}s {r['device']:>6} {r['rtf']:>7.3f} "
                     f"{r['gflop_per_s_audio']:>14.1f} {r['conv_gflops']:>12.1f} {target:>10.3f} {r['peak_mb']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--durations", nargs="+", type=float, default=[10, 60], help="audio seconds per case")
    parser.add_argument("--cases", nargs="+", choices=["shallow", "enhancer"], default=["shallow", "enhancer"],
                        help="what to measure (default both)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--case", nargs=2, metavar=("KIND", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case[0], float(args.case[1]), args.device, args.threads)))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows: list[dict] = []
    plan = [(c, s) for c in args.cases for s in args.durations]
    for kind, seconds in plan:
        cmd = [sys.executable, "-m", "bench.diffusion", "--case", kind, str(seconds), "--device", args.device,
               "--threads", str(args.threads)]
        proc = subprocess.run(launched(cmd), capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"case {kind} {seconds} s failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(_table(rows))
    if args.json:
        from modules.atomic_write import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
