"""Whole-conversion speed and memory: `inference_main.py` on a long song, from start to written file.

    python -m bench.convert                                   # ours: a 60 s song, 3 runs, 2 threads
    python -m bench.convert --original ../so-vits-svc          # side by side with a so-vits-svc 4.1 checkout
    python -m bench.convert --original ../so-vits-svc --seconds 20 --repeats 1 --json out.json

What is timed is the whole command-line program, as a user runs it: `python inference_main.py -m G -c
CONFIG -n song.wav -t 0 -s SPEAKER -f0p PM -wf wav -d cpu` (the same flags for both projects), so model
and speech-encoder loading, slicing at silences, F0, speech units, synthesis and writing the result all
count. Each run is a fresh process: wall time from start to exit, and its peak resident memory (its own
`ru_maxrss`, from `os.wait4` in the small launcher bench/_peak_rss.py, which says why a launcher is
needed). OMP_NUM_THREADS / MKL_NUM_THREADS are set to `--threads`;
the synthesis runs fp32 on the CPU. The table shows medians over `--repeats` runs; with `--original`
the runs alternate original, ours, original, ours, ...

Inputs, all written to a temporary folder and shared by both sides:
- a G file with random weights and its config.json (the default template with speech encoder
  `hubertsoft`: 256-wide units, so ssl_dim = gin_channels = 256; one speaker). The original's loader
  keeps fresh values for tensors it cannot take without failing, so before timing, a separate process
  (bench/_run_side.py) loads the file the way the original does and every tensor is checked;
- HuBERT-Soft weights with random values in the published file layout (bshall's
  hubert-soft-0d54a1f4.pt: a plain state dict with a `module.` prefix), full size: the original's
  network has its widths built in. It is used because it is plain torch in the original too (its
  default ContentVec encoder needs fairseq);
- a synthetic song at 44.1 kHz (modules/synthetic_voices.py): sung phrases separated by one-second
  rests, so both programs cut it at the rests and convert the phrases separately.

Each side runs in its own run folder inside the temporary folder: symbolic links to the project's
files and folders, plus its own raw/ (the song), pretrain/ (the encoder weights), results/ and logs/, so
nothing is written into either project (the original also writes inference/chunks_temp.json, so its
inference/ is a real folder of links). Python finds the code through the links, so only that side's
project is importable; PYTHONPATH is cleared. One `inference_main.py --help` per side runs first,
untimed, so the first measured run does not also pay for reading the libraries from disk. After every run the
output must exist, be a 44.1 kHz file and have the song's length (within one hop). As sanity figures,
the table shows the ratio of the two outputs' RMS levels and the line below it their correlation (same
model and song; they agree as far as both programs draw the same noise), plus what each program
reports of its own timings.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench._peak_rss import launched
from bench.infer import side_env, write_random_model
from modules.config import PROJECT_ROOT

SPEAKER = "alto"
SONG = "song.wav"
SAMPLE_RATE = 44100
REST_SECONDS = 1.0
PHRASE_SECONDS = 11.0
# Top-level names each run folder owns; everything else of a project is linked.
OWN_DIRS = ("raw", "results", "pretrain", "logs")
# Folders a program writes into by a path relative to its working directory: real folders of links.
WRITTEN_INTO = ("inference",)
TARGET = "target (issue 11; 2 threads, fp32): whole inference_main.py run <= 0.5x the original's time"


@dataclass
class Inputs:
    g_file: Path
    config: Path
    weights: Path
    song: Path
    samples: int
    hop: int


# ----------------------------------------------------------------------------------------------- inputs

def write_model(folder: Path, tiny: bool = False) -> tuple[Path, Path]:
    """A hubertsoft G file (random weights, seed 0) and its config.json in `folder`."""
    from modules.flist_config import build_configs

    cfg, _ = build_configs({SPEAKER: 0}, "hubertsoft", tiny=tiny)
    return write_random_model(folder, cfg)


def write_encoder_weights(folder: Path, tiny: bool = False) -> Path:
    """Random HuBERT-Soft weights in the published layout: full size, or 2 narrow layers with `tiny`
    (which only our loader takes: it reads the widths from the file)."""
    from vencoder.fairseq_writer import write_hubert_soft
    from vencoder.hubert_soft import HubertSoft

    path = folder / HubertSoft.weight_file
    if tiny:
        return write_hubert_soft(path, layers=2, final_dim=256, seed=1)
    return write_hubert_soft(path, layers=12, dim=768, ffn=3072, conv_dim=512, conv_pos=128, groups=16,
                             final_dim=256, seed=1)


def write_song(path: Path, seconds: float, seed: int = 0) -> int:
    """Phrases of synthetic singing with one-second rests between them, 16-bit at 44.1 kHz; returns the
    number of samples."""
    import numpy as np
    import soundfile as sf

    from modules.synthetic_voices import balanced_singing

    total = int(round(seconds * SAMPLE_RATE))
    rest = np.zeros(int(REST_SECONDS * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    length, index = 0, 0
    while length < total:
        phrase = balanced_singing(SPEAKER, PHRASE_SECONDS, seed=seed + index, pause_prob=0.0).audio
        parts += [phrase, rest]
        length += len(phrase) + len(rest)
        index += 1
    audio = np.concatenate(parts)[:total]
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return total


def write_inputs(folder: Path, seconds: float, tiny: bool = False) -> Inputs:
    from modules.config import load_config

    g_file, config = write_model(folder, tiny)
    weights = write_encoder_weights(folder, tiny)
    samples = write_song(folder / SONG, seconds)
    return Inputs(g_file, config, weights, folder / SONG, samples, load_config(config).data.hop_length)


# ------------------------------------------------------------------------------------------ run folders

def make_run_folder(project: Path, folder: Path, inputs: Inputs) -> Path:
    """Mirror `project` by links into `folder`, with its own raw/, pretrain/, results/ and logs/44k/."""
    folder.mkdir(parents=True)
    for entry in sorted(project.iterdir()):
        name = entry.name
        if name.startswith(".") or name == "__pycache__" or name in OWN_DIRS:
            continue
        if name in WRITTEN_INTO and entry.is_dir():
            (folder / name).mkdir()
            for child in entry.iterdir():
                if child.name != "__pycache__":
                    (folder / name / child.name).symlink_to(child)
        else:
            (folder / name).symlink_to(entry)
    for name in ("raw", "results", "pretrain", "logs/44k"):
        (folder / name).mkdir(parents=True)
    (folder / "raw" / SONG).symlink_to(inputs.song)
    (folder / "pretrain" / inputs.weights.name).symlink_to(inputs.weights)
    return folder


def convert_command(inputs: Inputs, f0_predictor: str) -> list[str]:
    """The command line, identical for both projects (flags of so-vits-svc 4.1's inference_main.py)."""
    return [sys.executable, "inference_main.py", "-m", str(inputs.g_file), "-c", str(inputs.config), "-n", SONG,
            "-t", "0", "-s", SPEAKER, "-f0p", f0_predictor, "-wf", "wav", "-d", "cpu"]


def timed_process(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Run `cmd` to the end through bench/_peak_rss.py; (wall seconds, the command's own peak RSS in MB,
    exit code). Its output goes to `log`."""
    result = log.with_suffix(".rss.json")
    with open(log, "w") as out:
        code = subprocess.run(launched(cmd, str(result)), cwd=cwd, env=env,
                              stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if not result.is_file():
        raise RuntimeError(f"could not run {cmd[0]} in {cwd}:\n{log.read_text(errors='replace')[-3000:]}")
    measured = json.loads(result.read_text())
    return measured["seconds"], measured["peak_kib"] / 1024.0, code


def check_output(side: str, results: Path, inputs: Inputs) -> tuple[Path, float, int]:
    """The single file in `results`; raises RuntimeError unless it is a 44.1 kHz file of the song's
    length (within one hop). Returns it, its RMS level and its length in samples."""
    import numpy as np
    import soundfile as sf

    files = sorted(p for p in results.iterdir() if p.is_file())
    if len(files) != 1:
        raise RuntimeError(f"{side} wrote {len(files)} file(s) to {results} (expected one converted song)")
    audio, sr = sf.read(str(files[0]), dtype="float64", always_2d=True)
    if sr != SAMPLE_RATE or abs(len(audio) - inputs.samples) > inputs.hop:
        raise RuntimeError(f"{side} output {files[0].name}: {len(audio)} samples at {sr} Hz, expected "
                           f"{inputs.samples} at {SAMPLE_RATE} Hz")
    return files[0], float(np.sqrt(np.mean(audio ** 2))), len(audio)


def log_summary(text: str) -> dict[str, float | int]:
    """Timings the programs print: the original's synthesis time per slice ('vits use time', summed) and
    slice counts; our progress bar's seconds per converted file (everything after loading)."""
    summary: dict[str, float | int] = {}
    synth = [float(x) for x in re.findall(r"vits use time:\s*([0-9.eE+-]+)", text)]
    if synth:
        summary["synthesis_s"] = round(sum(synth), 2)
    segments = text.count("=====segment start")
    if segments:
        summary["slices"] = segments
        summary["silent_slices"] = text.count("jump empty segment")
    rates = re.findall(r"files: 100%[^\n\r]*?([0-9.]+)(s/file|file/s)\]", text)  # tqdm: slower or faster than 1/s
    if rates:
        value, unit = rates[-1]
        summary["convert_s"] = round(float(value) if unit == "s/file" else 1.0 / float(value), 2)
    return summary


def correlation(a: Path, b: Path) -> float:
    """Pearson correlation of two audio files over their common length."""
    import numpy as np
    import soundfile as sf

    x, _ = sf.read(str(a), dtype="float64")
    y, _ = sf.read(str(b), dtype="float64")
    n = min(len(x), len(y))
    return float(np.corrcoef(x[:n], y[:n])[0, 1])


def breakdown(row: dict) -> str:
    """Where the time goes, from the last run of each side (what the programs print)."""
    parts = []
    last = row["original"][-1] if row["original"] else None
    if last and "synthesis_s" in last:
        parts.append(f"original: synthesis ('vits use time' over {last.get('slices', '?')} slices) "
                     f"{last['synthesis_s']:.1f} s of {last['seconds_taken']:.1f} s")
    last = row["ours"][-1]
    if "convert_s" in last:
        parts.append(f"ours: slicing + features + synthesis + writing {last['convert_s']:.1f} s of "
                     f"{last['seconds_taken']:.1f} s")
    if row.get("correlation") is not None:
        parts.append(f"outputs correlate {row['correlation']:.5f}")
    return "; ".join(parts)


def run_side(side: str, folder: Path, inputs: Inputs, args: argparse.Namespace) -> dict:
    """One timed conversion in `folder`; RuntimeError (with the program's output) when it fails."""
    results = folder / "results"
    for old in results.iterdir():
        old.unlink()
    log = folder / "run.log"
    seconds, peak_mb, code = timed_process(convert_command(inputs, args.f0_predictor), folder,
                                           side_env(args.threads), log)
    text = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{side} inference_main.py exited with {code} in {folder}:\n{text[-3000:]}")
    output, rms, samples = check_output(side, results, inputs)
    return {"side": side, "seconds_taken": round(seconds, 2), "peak_mb": round(peak_mb), "output": output.name,
            "samples": samples, "rms": rms, **log_summary(text)}


def check_original_weights(original: Path, inputs: Inputs, threads: int) -> None:
    """Load the G file the way the original does (bench/_run_side.py) and refuse if any tensor differs."""
    from bench.infer import SIDE_RUNNER, run_side_process, weights_mismatch

    result = run_side_process(SIDE_RUNNER, "original", original, [str(inputs.g_file), str(inputs.config)], threads)
    wrong = weights_mismatch(result["weights"], inputs.g_file)
    if wrong:
        raise RuntimeError(f"original did not load {len(wrong)} tensor(s) of {inputs.g_file} as saved, e.g. "
                           f"{', '.join(wrong[:3])}")


# ------------------------------------------------------------------------------------------------ table

def _cell(runs: list[dict]) -> tuple[str, float, float]:
    t = statistics.median(r["seconds_taken"] for r in runs)
    mb = statistics.median(r["peak_mb"] for r in runs)
    return f"{t:.1f} s, {mb / 1024:.2f} GB", t, mb


def compare_table(row: dict) -> str:
    """Markdown table (medians) and the target line."""
    case = f"inference_main.py, {row['seconds']:g} s file, hubertsoft + {row['f0_predictor']}"
    ours, t_ours, mb_ours = _cell(row["ours"])
    lines = ["| case | original | ours | ours/original |", "|---|---|---|---|"]
    if not row["original"]:
        lines.append(f"| {case} | (not run) | {ours} | |")
        return "\n".join(lines + [TARGET])
    orig, t_orig, mb_orig = _cell(row["original"])
    rms = statistics.median(o["rms"] for o in row["ours"]) / max(
        statistics.median(o["rms"] for o in row["original"]), 1e-12)
    lines.append(f"| {case} | {orig} | {ours} | time {t_ours / t_orig:.2f}, memory {mb_ours / mb_orig:.2f}; "
                 f"output RMS ratio {rms:.2f} |")
    verdict = "met" if t_ours <= 0.5 * t_orig else "NOT met"
    return "\n".join(lines + [f"{TARGET}: {verdict} ({t_ours / t_orig:.2f}x)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", default=None, metavar="PATH",
                        help="a so-vits-svc 4.1 checkout (with its requirements installed): measure it side by side")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the song to convert (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; the table shows medians (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of each run (default 2)")
    parser.add_argument("--f0_predictor", default="pm", help="-f0p for both programs (default pm)")
    parser.add_argument("--json", default=None, help="also write the runs to this JSON file")
    parser.add_argument("--tiny", action="store_true",
                        help="narrow model and 2-layer speech encoder, for tests (the original cannot load "
                             "that encoder file: its widths are fixed)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seconds <= 0 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1 and --seconds positive")
    original = Path(args.original).resolve() if args.original else None
    if original is not None and not (original / "inference_main.py").is_file():
        print(f"{original}: not a so-vits-svc checkout (no inference_main.py there)", file=sys.stderr)
        return 2
    row: dict = {"seconds": args.seconds, "f0_predictor": args.f0_predictor, "threads": args.threads,
                 "original": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="svc-bench-convert-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = write_inputs(tmp, args.seconds, args.tiny)
        folders = {"ours": make_run_folder(Path(PROJECT_ROOT).resolve(), tmp / "run-ours", inputs)}
        if original is not None:
            folders = {"original": make_run_folder(original, tmp / "run-original", inputs), **folders}
        try:
            if original is not None:
                check_original_weights(original, inputs, args.threads)
            for side, folder in folders.items():  # untimed warm-up: libraries into the file cache
                subprocess.run([sys.executable, "inference_main.py", "--help"], cwd=folder, env=side_env(args.threads),
                               capture_output=True, check=False)
            for _ in range(args.repeats):
                for side, folder in folders.items():
                    row[side].append(run_side(side, folder, inputs, args))
                    print(f"{side}: {json.dumps(row[side][-1])}", flush=True)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        if original is not None:
            row["correlation"] = correlation(*(folders[s] / "results" / row[s][-1]["output"]
                                               for s in ("original", "ours")))
    print()
    print(compare_table(row))
    print(breakdown(row))
    if args.json:
        from modules.atomic_write import write_text

        write_text(args.json, json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
