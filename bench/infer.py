"""Inference speed and memory of the synthesizer for the default config (random weights).

    python -m bench.infer                      # 10 s, 60 s, 10 min; fp32 and fast (--precision auto); 2 threads
    python -m bench.infer --skip-long          # without the 10-minute case (it takes minutes on a CPU)
    python -m bench.infer --device cuda        # GPU timings (peak memory = torch's max allocated)
    python -m bench.infer --original ../so-vits-svc --skip-long   # side by side with a so-vits-svc 4.1 checkout

Measures SvcEngine.synthesize (text encoder, prior noise, excitation, chunked flow + decoder) on
continuous voice: units are random, F0 is a synthetic melody without pauses (modules/synthetic_voices.py),
so one piece spans the whole duration (no silence slicing). The F0 predictor and the speech encoder
are not included: their cost depends on which ones you pick. RTF = compute seconds per audio
second; minor faults = pages the kernel mapped in during the call (modules/host_memory.py). Each case
runs in a fresh process so its peak RSS (resident memory, including the ~200 MB model and the torch
runtime) is its own. Fast mode reports the SNR of its output against fp32.

With `--original PATH` (a so-vits-svc 4.1 checkout with its requirements installed) both synthesizers are
built from the same G file (`--model`/`--config`, default: a random default-config model written to a
temporary folder; the original's loader silently keeps fresh values for tensors it cannot take, so every
tensor it ends up with is checked against the file) and get the same inputs. Every run is a fresh process importing only its own project
(bench/_run_side.py); runs alternate original, ours, ... `--repeats` times (default 3) and the table
shows medians: case | original | ours | ours/original, plus the outputs' agreement for cases up to 10 s.
Cases above `--original-max-seconds` (default 60) run ours only: the original holds the whole piece's
decoder activations (gigabytes per minute of audio). Nothing of the original is part of this repository.
"""
from __future__ import annotations

import argparse
import json
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

TARGETS = ("targets (2 threads, fp32): RTF <= 0.6 at 10 s, 60 s and 10 min, 60 s and 10 min within 1.05x of the "
           "10 s RTF, peak <= 2 GB at 10 min; with --original: time <= 0.5x at 10 s and <= 0.33x at 60 s, memory "
           "<= 0.5x at 10 s; fast mode SNR >= 30 dB vs fp32")


def _continuous_f0(n_frames: int, sr: int, hop: int, seed: int = 0):
    import numpy as np

    from modules.synthetic_voices import SPEAKERS, midi_to_hz, random_melody

    rng = np.random.default_rng(seed)
    notes = random_melody(SPEAKERS["alto"], n_frames * hop / sr + 1.0, rng, pause_prob=0.0, consonant_prob=0.0)
    frames: list[np.ndarray] = []
    for note in notes:
        count = max(1, int(round(note.seconds * sr / hop)))
        midi = note.midi if note.midi > 0 else 60.0  # leading/trailing rests sung through: continuous voice
        t = np.arange(count) * hop / sr
        frames.append(midi_to_hz(midi + 0.3 * np.sin(2 * np.pi * 5.5 * t)))
    f0 = np.concatenate(frames)
    while len(f0) < n_frames:
        f0 = np.concatenate([f0, f0])
    return f0[:n_frames].astype(np.float32)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_case(seconds: float, mode: str, device_name: str, threads: int, chunk_frames: int) -> dict:
    """One measurement in this process (called in a fresh subprocess by main)."""
    import torch

    from models import SynthesizerTrn
    from modules.config import HParams, load_template
    from modules.inference import PieceFeatures, SvcEngine, prepare_for_synthesis

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    hps = HParams(**load_template())
    torch.manual_seed(0)
    model = prepare_for_synthesis(SynthesizerTrn.from_hparams(hps)).to(device)
    engine = SvcEngine(model, hps, device, encoder=object(), chunk_frames=chunk_frames, fast=(mode == "fast"))
    if mode == "fast" and not engine.fast:  # no native bf16: the engine would run fp32 anyway
        return {"seconds": seconds, "mode": "fast", "device": device_name, "threads": threads, "compute_s": None,
                "rtf": None, "peak_mb": None, "snr_db": None, "note": "no native bf16 on this CPU: fast = fp32"}
    sr, hop = engine.sr, engine.hop_length
    n = int(seconds * sr) // hop
    f0 = torch.from_numpy(_continuous_f0(n, sr, hop))[None].to(device)
    gen = torch.Generator().manual_seed(1)
    units = torch.randn(1, hps.model.ssl_dim, n, generator=gen).to(device)
    feats = PieceFeatures(units, f0, torch.ones(1, n, device=device), None)
    g = engine.speaker_condition(0)
    warm = PieceFeatures(units[..., :200], f0[:, :200], feats.uv[:, :200], None)
    engine.synthesize(warm, g)  # one-off allocations and kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    audio, _ = engine.synthesize(feats, g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {"seconds": seconds, "mode": mode, "device": device_name, "threads": threads,
              "compute_s": round(elapsed, 2), "rtf": round(elapsed / seconds, 4), "peak_mb": round(_peak_mb(device)),
              "snr_db": None, "note": "", "minflt": after.ru_minflt - before.ru_minflt,
              "sys_s": round(after.ru_stime - before.ru_stime, 2)}
    if mode == "fast" and seconds <= 60:  # reference after the measurement, so it does not count
        engine.dtype = torch.float32
        ref, _ = engine.synthesize(feats, g)
        err = (audio.float() - ref).double()
        result["snr_db"] = round(float(10 * torch.log10(ref.double().pow(2).sum() / err.pow(2).sum())), 1)
    del audio
    return result


def _table(rows: list[dict]) -> str:
    head = (f"{'audio':>8} {'mode':>5} {'device':>6} {'thr':>3} {'compute s':>10} {'RTF':>7} {'peak MB':>8} {'SNR dB':>7}"
            f" {'minor faults':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["rtf"] is None:
            lines.append(f"{r['seconds']:>7.0f}s {r['mode']:>5} {r['device']:>6} {r['threads']:>3}  {r['note']}")
            continue
        snr = "" if r["snr_db"] is None else f"{r['snr_db']:.1f}"
        lines.append(f"{r['seconds']:>7.0f}s {r['mode']:>5} {r['device']:>6} {r['threads']:>3} {r['compute_s']:>10.2f} "
                     f"{r['rtf']:>7.3f} {r['peak_mb']:>8} {snr:>7} {r['minflt']:>12}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- side by side (--original)

SIDE_RUNNER = Path(__file__).resolve().parent / "_run_side.py"


def write_random_model(folder: Path, cfg: dict | None = None) -> tuple[Path, Path]:
    """A G file with random weights (seed 0) for `cfg` (default: the config template) and its config.json,
    in `folder`."""
    import torch

    from models import SynthesizerTrn
    from modules.checkpoint import save_checkpoint
    from modules.config import HParams, load_template, save_config

    cfg = cfg if cfg is not None else load_template()
    torch.manual_seed(0)
    model = SynthesizerTrn.from_hparams(HParams(**cfg))
    config, g_file = folder / "config.json", folder / "G_0.pth"
    save_config(cfg, config)
    save_checkpoint(model, None, 1e-4, 0, g_file)
    return g_file, config


def write_inputs(path: Path, seconds: float, config: Path) -> int:
    """Units, a continuous F0 and uv for `seconds` of audio as an .npz for both sides; returns the frames."""
    import numpy as np

    from modules.config import load_config

    hps = load_config(config)
    sr, hop = hps.data.sampling_rate, hps.data.hop_length
    n = int(seconds * sr) // hop
    rng = np.random.default_rng(1)
    np.savez(path, c=rng.standard_normal((1, hps.model.ssl_dim, n)).astype(np.float32),
             f0=_continuous_f0(n, sr, hop)[None], uv=np.ones((1, n), dtype=np.float32))
    return n


def side_env(threads: int) -> dict[str, str]:
    """The environment of one side's process: no PYTHONPATH (it imports only its own project) and
    `threads` OpenMP/MKL threads (0: the libraries' own choice)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_side_process(runner: Path, side: str, root: Path, args: list[str], threads: int) -> dict:
    """Run `runner side root *args` in a fresh process that imports only `root` and parse its RESULT line."""
    env = side_env(threads)
    proc = subprocess.run(launched([sys.executable, str(runner), side, str(root), *args]), capture_output=True,
                          text=True, env=env, cwd=root)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{side} run of {runner.name} failed in {root}:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def weights_mismatch(digests: dict[str, str], checkpoint: Path) -> list[str]:
    """Tensors of `checkpoint` that a side's network (`digests`, see bench/_run_side.py) lacks or holds
    differently; empty when it loaded them all. Tensors the network has beyond the file (e.g. enc_q for a
    file without it) are not counted."""
    from bench._run_side import state_digests
    from modules.checkpoint import load_torch_file, model_state

    expected = state_digests(model_state(load_torch_file(checkpoint), checkpoint))
    return sorted(k for k, v in expected.items() if digests.get(k) != v)


def run_side(side: str, root: Path, g_file: Path, config: Path, inputs: Path, threads: int,
             audio_out: Path | None, device: str = "cpu") -> dict:
    """One fresh-process measurement of one side (bench/_run_side.py); for the original, first checks
    that its network holds exactly the G file's tensors (its loader would keep fresh ones silently)."""
    args = [str(g_file), str(config), str(inputs), str(threads), device, str(audio_out) if audio_out else "-"]
    result = run_side_process(SIDE_RUNNER, side, root, args, threads)
    digests = result.pop("weights", None)
    if digests is not None:
        wrong = weights_mismatch(digests, g_file)
        if wrong:
            raise RuntimeError(f"{side} did not load {len(wrong)} tensor(s) of {g_file} as saved, e.g. "
                               f"{', '.join(wrong[:3])}")
    return result


def _side_cell(runs: list[dict], seconds: float) -> tuple[str, float, float]:
    t = statistics.median(r["seconds_taken"] for r in runs)
    mb = statistics.median(r["peak_mb"] for r in runs)
    return f"{t:.2f} s (RTF {t / seconds:.3f}), {mb / 1024:.2f} GB", t, mb


def compare_table(rows: list[dict]) -> str:
    """Markdown table: case | original | ours | ours/original (medians)."""
    lines = ["| case | original | ours | ours/original |", "|---|---|---|---|"]
    for row in rows:
        ours, t_ours, mb_ours = _side_cell(row["ours"], row["seconds"])
        case = f"synthesizer, {row['seconds']:g} s of audio"
        if row.get("device", "cpu") != "cpu":
            case += f" ({row['device']})"
        if not row["original"]:
            lines.append(f"| {case} | (not run) | {ours} | |")
            continue
        orig, t_orig, mb_orig = _side_cell(row["original"], row["seconds"])
        ratio = f"time {t_ours / t_orig:.2f}, memory {mb_ours / mb_orig:.2f}"
        if row.get("agreement") is not None:
            ratio += f"; outputs differ by {row['agreement']:.1e} of peak"
        lines.append(f"| {case} | {orig} | {ours} | {ratio} |")
    return "\n".join(lines)


def compare(args: argparse.Namespace, durations: list[float]) -> int:
    import numpy as np

    original = Path(args.original).resolve()
    if not (original / "models.py").is_file():
        print(f"{original}: not a so-vits-svc checkout (no models.py there)", file=sys.stderr)
        return 2
    ours = Path(PROJECT_ROOT).resolve()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="svc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            g_file, config = Path(args.model).resolve(), Path(args.config).resolve()
        else:
            g_file, config = write_random_model(tmp)
        for seconds in durations:
            inputs = tmp / f"inputs_{seconds:g}.npz"
            write_inputs(inputs, seconds, config)
            sides = ["original", "ours"] if seconds <= args.original_max_seconds else ["ours"]
            runs: dict[str, list[dict]] = {"original": [], "ours": []}
            saved: dict[str, Path] = {}
            for rep in range(args.repeats):
                for side in sides:
                    audio = tmp / f"{side}.npy" if rep == 0 and seconds <= 10 else None
                    try:
                        runs[side].append(run_side(side, original if side == "original" else ours, g_file,
                                                   config, inputs, args.threads, audio, args.device))
                    except RuntimeError as e:
                        print(e, file=sys.stderr)
                        return 1
                    if audio is not None:
                        saved[side] = audio
                    print(f"{seconds:g} s {side}: {runs[side][-1]}", flush=True)
            agreement = None
            if len(saved) == 2:
                a, b = np.load(saved["ours"]), np.load(saved["original"])
                n = min(len(a), len(b))
                agreement = float(np.abs(a[:n] - b[:n]).max() / max(np.abs(b[:n]).max(), 1e-9))
            rows.append({"seconds": seconds, "device": args.device, "original": runs["original"],
                         "ours": runs["ours"], "agreement": agreement})
    print()
    print(compare_table(rows))
    if args.json:
        from modules.atomic_write import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--durations", nargs="+", type=float, default=[10, 60, 600], help="audio seconds per case")
    parser.add_argument("--skip-long", action="store_true", help="drop cases longer than 60 s (the 10-minute one)")
    parser.add_argument("--modes", nargs="+", choices=["fp32", "fast"], default=["fp32", "fast"],
                        help="fp32, and/or fast (bf16 autocast on CPU, fp16 on GPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--chunk-frames", type=int, default=1024, help="frames per synthesis window (default 1024)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--original", default=None, metavar="PATH",
                        help="a so-vits-svc 4.1 checkout: measure it and ours side by side (see above)")
    parser.add_argument("--model", default=None, help="with --original: G file both sides load (default: random weights)")
    parser.add_argument("--config", default=None, help="with --model: its config.json")
    parser.add_argument("--repeats", type=int, default=3, help="with --original: runs per side and case (median)")
    parser.add_argument("--original-max-seconds", type=float, default=60.0,
                        help="with --original: longer cases run ours only (default 60)")
    parser.add_argument("--case", nargs=2, metavar=("SECONDS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        row = run_case(float(args.case[0]), args.case[1], args.device, args.threads, args.chunk_frames)
        print("RESULT " + json.dumps(row))
        return 0
    durations = [d for d in args.durations if not (args.skip_long and d > 60)]
    if args.model and not args.config:
        parser.error("--model needs --config")
    if args.original:
        return compare(args, durations)
    rows: list[dict] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for seconds in durations:
        for mode in args.modes:
            cmd = [sys.executable, "-m", "bench.infer", "--case", str(seconds), mode, "--device", args.device,
                   "--threads", str(args.threads), "--chunk-frames", str(args.chunk_frames)]
            proc = subprocess.run(launched(cmd), capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"case {seconds} s {mode} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(line[len("RESULT "):]))
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))
    print(TARGETS)
    if args.json:
        from modules.atomic_write import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
