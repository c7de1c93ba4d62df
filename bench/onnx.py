"""ONNX export time and onnxruntime vs torch synthesis speed on CPU (default config, random weights).

    python -m bench.onnx                  # 10 s of continuous voice, 3 repeats, 2 threads
    python -m bench.onnx --seconds 30 --repeats 5 --threads 4
    python -m bench.onnx --diffusion      # the diffusion graphs instead (tiny and default-size model)

Measures the synthesis step of one piece (`engine.synthesize`: prior encoder, prior noise, excitation,
flow, decoder) for the torch engine (windowed flow + decoder) and for the onnxruntime engine running the
exported MoeSS graph. Units are random and F0 is a vibrato melody without pauses, so the piece is one
slice; the speech encoder and the F0 predictor are left out (both backends share them). Runs alternate
between the backends and the median is reported, because a shared machine's load varies; the load
average is printed with the table.

With --diffusion: export time of the four diffusion graphs and the time of one piece's mel (encoder,
PLMS with k_step 100 and speedup 10 = 11 denoiser calls, after) in onnxruntime (modules.onnx_diffusion's
host loop) vs the PyTorch pndm sampler, for the tests' tiny model and the default config
(20 layers, 512 channels, 768-dim units); random weights, the denoiser's output layer non-zero.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _features(hps, seconds: float):
    import numpy as np
    import torch

    from modules.inference import PieceFeatures

    sr, hop = int(hps.data.sampling_rate), int(hps.data.hop_length)
    n = int(seconds * sr) // hop
    t = np.arange(n) * hop / sr
    midi = 60 + 5 * np.floor(t / 0.6 % 3) + 0.3 * np.sin(2 * np.pi * 5.5 * t)  # three notes, with vibrato
    f0 = torch.from_numpy((440.0 * 2 ** ((midi - 69) / 12)).astype(np.float32))[None]
    units = torch.randn(1, int(hps.model.ssl_dim), n, generator=torch.Generator().manual_seed(1))
    return PieceFeatures(units, f0, torch.ones(1, n), None)


def _slice(feats, n: int):
    from modules.inference import PieceFeatures

    return PieceFeatures(feats.units[..., :n], feats.f0[:, :n], feats.uv[:, :n], None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length of the measured piece (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="runs per backend; the median is reported (default 3)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime (default 2)")
    p.add_argument("--diffusion", action="store_true", help="measure the diffusion graphs instead")
    args = p.parse_args(argv)
    if args.diffusion:
        return _bench_diffusion(args)

    import numpy as np
    import onnxruntime as ort
    import torch

    from models import SynthesizerTrn
    from modules.config import HParams, load_template
    from modules.inference import SvcEngine
    from modules.onnx_export import build_wrapper, export_graph
    from modules.onnx_inference import OnnxSvcEngine

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    hps = HParams(**load_template())
    torch.manual_seed(0)
    model = SynthesizerTrn.from_hparams(hps)
    model.remove_weight_norm()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    wrapper = build_wrapper(copy.deepcopy(model), hps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_SoVits.onnx"
        export_s = export_graph(wrapper, path)
        size_mb = path.stat().st_size / 2**20
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        start = time.perf_counter()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session_s = time.perf_counter() - start
    engines = {"torch": SvcEngine(model, hps, "cpu", encoder=object()),
               "onnx": OnnxSvcEngine(session, hps, encoder=object())}
    feats = _features(hps, args.seconds)
    times: dict[str, list[float]] = {name: [] for name in engines}
    outputs = {}
    for name, engine in engines.items():  # warm-up: allocations, kernel choice
        engine.synthesize(_slice(feats, 200), engine.speaker_condition(0))
    for _ in range(args.repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            audio, _ = engine.synthesize(feats, engine.speaker_condition(0))
            times[name].append(time.perf_counter() - start)
            outputs[name] = audio
    torch_s, onnx_s = statistics.median(times["torch"]), statistics.median(times["onnx"])
    a, b = outputs["torch"].flatten().numpy(), outputs["onnx"].flatten().numpy()
    corr = float(np.corrcoef(a, b)[0, 1])
    print(f"default config, random weights, {args.seconds:g} s piece, {args.threads} threads, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"export (TorchScript exporter, opset 16): {export_s:.1f} s, file {size_mb:.0f} MB, "
          f"onnxruntime session {session_s:.1f} s")
    head = f"{'backend':>8} {'median s':>9} {'RTF':>6} {'runs s':>24}"
    print(head)
    print("-" * len(head))
    for name, seconds in (("torch", torch_s), ("onnx", onnx_s)):
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:>8} {seconds:>9.2f} {seconds / args.seconds:>6.3f} {runs:>24}")
    print(f"onnxruntime speed-up: {torch_s / onnx_s:.2f}x; waveform correlation torch vs onnx {corr:.3f} "
          "(the harmonic source's random phases and noise differ)")
    return 0


def _unit2mel(size: str):
    import torch

    from diffusion.unit2mel import Unit2Mel
    from modules.config import HParams, load_diffusion_template

    cfg = load_diffusion_template()
    if size == "tiny":  # tests/support/diffusion_models.py's model
        cfg["data"]["encoder_out_channels"] = 16
        cfg["model"].update({"n_layers": 3, "n_chans": 16, "n_hidden": 8})
    torch.manual_seed(0)
    model = Unit2Mel.from_config(HParams(**cfg)).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    out = model.decoder.denoise_fn.output_projection.weight
    out.normal_(0.0, out.shape[1] ** -0.5)  # zero-initialised in a fresh model; a zero denoiser is no test
    return model


def _bench_diffusion(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from modules.onnx_diffusion import OnnxDiffusion, diffusion_paths, export_diffusion, feature_inputs, torch_mel

    torch.set_num_threads(args.threads)
    k_step, speedup = 100, 10
    load_before = os.getloadavg()[0]
    frames = int(args.seconds * 44100) // 512
    rows = []
    for size in ("tiny", "default"):
        model = _unit2mel(size)
        with tempfile.TemporaryDirectory() as tmp:
            paths = diffusion_paths(tmp, "bench")
            export_s = export_diffusion(model, paths)
            size_mb = sum(p.stat().st_size for p in paths.values()) / 2**20
            runner = OnnxDiffusion.load(paths, threads=args.threads, spinning=False)
        features = feature_inputs(model, frames, seed=0)
        noise = np.random.default_rng(0).standard_normal((1, 1, 128, frames)).astype(np.float32)
        runs = {"torch": lambda: torch_mel(model, features, noise, k_step, speedup),
                "onnx": lambda: runner.mel(features, noise, k_step, speedup)}
        for run in runs.values():  # warm-up
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        mels = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                mels[name] = run()
                times[name].append(time.perf_counter() - start)
        diff = float(np.max(np.abs(mels["onnx"] - mels["torch"])) / np.max(np.abs(mels["torch"])))
        rows.append((size, export_s, size_mb, statistics.median(times["torch"]), statistics.median(times["onnx"]), diff))
    print(f"diffusion graphs, random weights, {args.seconds:g} s piece ({frames} frames), k_step {k_step}, "
          f"speedup {speedup}, {args.threads} threads, load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    head = f"{'model':>8} {'export s':>9} {'MB':>6} {'torch s':>8} {'onnx s':>8} {'speed-up':>9} {'max rel diff':>13}"
    print(head)
    print("-" * len(head))
    for size, export_s, size_mb, torch_s, onnx_s, diff in rows:
        print(f"{size:>8} {export_s:>9.1f} {size_mb:>6.1f} {torch_s:>8.3f} {onnx_s:>8.3f} {torch_s / onnx_s:>8.2f}x "
              f"{diff:>13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
