"""bench.convert: the whole-program plumbing, against a stand-in for a so-vits-svc 4.1 checkout.

The stand-in (written to a temp folder by this test) has what bench.convert uses of a checkout: an
`inference_main.py` taking the original's flags (-m -c -n -t -s -f0p -wf -d) that reads raw/NAME and
writes results/NAME_0key_SPK_sovits_F0P.wav, and writes inference/chunks_temp.json relative to its
working directory, as the original does; plus the `utils` / `models` of tests/test_bench_infer.py's
stand-in, for the weight check. Our side is the real inference_main.py with `--tiny` inputs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import convert as bench_convert
from tests.test_bench_infer import _fake_checkout

FAKE_MAIN = """
import argparse
from pathlib import Path

import soundfile as sf

p = argparse.ArgumentParser()
for flag in ("-m", "-c", "-n", "-t", "-s", "-f0p", "-wf", "-d"):
    p.add_argument(flag, required=True)
args = p.parse_args()
Path("inference/chunks_temp.json").write_text("{{}}")
audio, sr = sf.read("raw/" + args.n)
MODE = {mode!r}
if MODE != "none":
    out = audio[: len(audio) // 2] if MODE == "short" else 0.25 * audio
    sf.write(f"results/{{args.n}}_{{args.t}}key_{{args.s}}_sovits_{{args.f0p}}.{{args.wf}}", out, sr)
print("vits use time:1.5")
print("#=====segment start, 2.0s======")
"""


def _checkout(folder: Path, mode: str = "ok", skip: str = "") -> Path:
    _fake_checkout(folder, skip=skip)
    (folder / "inference").mkdir()
    (folder / "inference" / "__init__.py").write_text("")
    (folder / "inference_main.py").write_text(textwrap.dedent(FAKE_MAIN.format(mode=mode)))
    return folder


def _run(checkout: Path, *extra: str) -> int:
    return bench_convert.main(["--original", str(checkout), "--tiny", "--seconds", "2.5", "--repeats", "1",
                               "--threads", "1", *extra])


def test_side_by_side_table(tmp_path, capsys):
    checkout = _checkout(tmp_path / "so-vits-svc")
    report = tmp_path / "runs.json"
    assert _run(checkout, "--json", str(report)) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| inference_main.py"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "inference_main.py, 2.5 s file, hubertsoft + pm"
    assert cells[1].endswith(" GB") and " s, " in cells[1] and cells[2].endswith(" GB")
    runs = json.loads(report.read_text())
    orig, ours = runs["original"][0], runs["ours"][0]
    assert orig["output"] == ours["output"] == "song.wav_0key_alto_sovits_pm.wav"
    assert orig["synthesis_s"] == 1.5 and orig["slices"] == 1 and orig["silent_slices"] == 0
    time_ratio = ours["seconds_taken"] / orig["seconds_taken"]
    mem_ratio = ours["peak_mb"] / orig["peak_mb"]
    assert cells[3] == (f"time {time_ratio:.2f}, memory {mem_ratio:.2f}; "
                        f"output RMS ratio {ours['rms'] / orig['rms']:.2f}")
    assert 0.0 < orig["rms"] < 0.1 and ours["rms"] > 0  # the stand-in writes a quarter of the song
    lines = out.rstrip().splitlines()
    assert lines[-2].startswith(bench_convert.TARGET) and lines[-2].endswith(f"({time_ratio:.2f}x)")
    assert lines[-1] == (f"original: synthesis ('vits use time' over 1 slices) 1.5 s of {orig['seconds_taken']:.1f} s; "
                         f"ours: slicing + features + synthesis + writing {ours['convert_s']:.1f} s of "
                         f"{ours['seconds_taken']:.1f} s; outputs correlate {runs['correlation']:.5f}")
    assert orig["samples"] == ours["samples"] == 110250
    # nothing was written into the checkout: its inference/ in the run folder is a real folder of links
    assert not (checkout / "inference" / "chunks_temp.json").exists()
    assert not (checkout / "results").exists() and not (checkout / "raw").exists()


@pytest.mark.parametrize("mode,message", [
    ("none", "original wrote 0 file(s) to "),
    ("short", " samples at 44100 Hz, expected 110250 at 44100 Hz"),
])
def test_a_side_without_the_converted_song_fails(tmp_path, capsys, mode, message):
    assert _run(_checkout(tmp_path / "bad", mode)) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert "| inference_main.py" not in captured.out


def test_original_that_did_not_load_every_tensor_is_refused(tmp_path, capsys):
    assert _run(_checkout(tmp_path / "partial", skip="dec.conv_post")) == 1
    err = capsys.readouterr().err
    assert "original did not load 3 tensor(s) of " in err and "G_0.pth as saved, e.g. dec.conv_post.bias" in err


def test_not_a_checkout(tmp_path, capsys):
    assert bench_convert.main(["--original", str(tmp_path)]) == 2
    assert "not a so-vits-svc checkout (no inference_main.py there)" in capsys.readouterr().err


def test_peak_memory_is_the_commands_own(tmp_path):
    env = bench_convert.side_env(1)
    big = [sys.executable, "-c", "x = b'1' * (300 * 2**20)"]
    seconds, peak_big, code = bench_convert.timed_process(big, tmp_path, env, tmp_path / "big.log")
    assert code == 0 and 300 <= peak_big < 340 and 0 < seconds < 30
    # this test process holds torch and more; spawned straight from it, even `pass` would report that
    _, peak_small, code = bench_convert.timed_process([sys.executable, "-c", "pass"], tmp_path, env,
                                                      tmp_path / "small.log")
    assert code == 0 and peak_small < 40
    _, _, code = bench_convert.timed_process([sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
                                             tmp_path, env, tmp_path / "fail.log")
    assert code == 3 and (tmp_path / "fail.log").read_text() == "bye\n"


def test_song_has_rests_the_slicer_cuts_at(tmp_path):
    import numpy as np
    import soundfile as sf

    n = bench_convert.write_song(tmp_path / "song.wav", 30.0)
    audio, sr = sf.read(str(tmp_path / "song.wav"))
    assert sr == 44100 and n == len(audio) == 30 * 44100
    frames = audio[: len(audio) // 441 * 441].reshape(-1, 441)  # 10 ms frames
    silent = np.all(frames == 0, axis=1)
    starts = np.flatnonzero(np.diff(silent.astype(int)) == 1)  # sound -> rest
    assert len(starts) == 2  # rests after the phrases ending near 11 s and 23 s
    assert np.all(np.abs(np.asarray(starts) - [1100, 2300]) < 30)


def test_correlation_over_the_common_length(tmp_path):
    import numpy as np
    import soundfile as sf

    x = np.sin(np.linspace(0, 200, 8000)) * 0.5
    sf.write(str(tmp_path / "a.wav"), x, 44100)
    sf.write(str(tmp_path / "b.wav"), np.concatenate([-0.5 * x, np.ones(300) * 0.9]), 44100)
    assert bench_convert.correlation(tmp_path / "a.wav", tmp_path / "b.wav") == pytest.approx(-1.0, abs=1e-3)


def test_log_summary_reads_what_the_programs_print():
    original = "load \n#=====segment start, 4.0s======\nvits use time:2.25\n#=====segment start, 1.0s======\n" \
               "jump empty segment\n#=====segment start, 3.5s======\nvits use time:1.5\n"
    assert bench_convert.log_summary(original) == {"synthesis_s": 3.75, "slices": 3, "silent_slices": 1}
    ours = "files:   0%|   | 0/1 [00:00<?, ?file/s]\rfiles: 100%|###| 1/1 [00:06<00:00,  6.30s/file]\n"
    assert bench_convert.log_summary(ours) == {"convert_s": 6.3}
    fast = "files: 100%|###| 1/1 [00:00<00:00,  1.25file/s]\nfiles: 100%|###| 1/1 [00:00<00:00,  1.25file/s]\n"
    assert bench_convert.log_summary(fast) == {"convert_s": 0.8}


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "bench.convert", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True).stdout
    for flag in ("--original", "--seconds", "--repeats", "--threads", "--f0_predictor", "--json", "--tiny"):
        assert flag in out
