"""resample pipeline: every bad input gives a correct clip or a named skip reason; the batch never stops."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import resample as resample_cli
from modules.audio import resample
from modules.errors import DatasetError
from modules.resample import (
    ResampleOptions,
    SkipReason,
    clipped_fraction,
    integrated_loudness,
    normalise_lufs,
    plan_resample,
    process_file,
    run_resample,
    summarise_resample,
    trim_silence,
)
from modules.slicer import ClipParams
from modules.synthetic_voices import Note, synth_notes, synth_singing

SR = 44100
CEILING = 10 ** (-1 / 20)


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synth_singing("alto", 1.2, sr=SR, seed=7).audio


def write_bad_inputs(folder: Path, v: np.ndarray) -> dict[str, SkipReason | None]:
    """Every awkward input, with the expected outcome (None = a clip is written)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(folder / "ok16.wav", v, SR, subtype="PCM_16")
    sf.write(folder / "u8.wav", v, SR, subtype="PCM_U8")
    sf.write(folder / "s24.wav", v, SR, subtype="PCM_24")
    sf.write(folder / "float_over.wav", v * 5.0, SR, subtype="FLOAT")  # peak 1.5: must not clip
    sf.write(folder / "k8.wav", resample(v, SR, 8000), 8000)
    sf.write(folder / "k96.wav", resample(v, SR, 96000), 96000, subtype="PCM_24")
    sf.write(folder / "six.wav", np.stack([v * (i + 1) / 6 for i in range(6)], axis=1), SR, subtype="FLOAT")
    sf.write(folder / "lossless.flac", v, SR)
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = v.copy()
        x[1000:1010] = bad
        sf.write(folder / name, x, SR, subtype="FLOAT")
    sf.write(folder / "zeros.wav", np.zeros(SR), SR)
    sf.write(folder / "hiss.wav", rng.standard_normal(SR) * 1e-5, SR, subtype="FLOAT")  # about -100 dBFS
    mid = len(v) // 2
    sf.write(folder / "ten_ms.wav", v[mid:mid + SR // 100], SR)
    sf.write(folder / "clipped.wav", np.clip(v * 30, -1, 1), SR)
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "header_only.wav", np.zeros(0), SR)
    whole = (folder / "ok16.wav").read_bytes()
    (folder / "cut_header.wav").write_bytes(whole[:30])
    (folder / "cut_data.wav").write_bytes(whole[:44 + (len(whole) - 44) // 2])
    (folder / "not_audio.wav").write_text("this is a text file, not audio\n")
    (folder / "readme.txt").write_text("ignored: no audio extension\n")
    written = ("ok16", "u8", "s24", "float_over", "k8", "k96", "six", "lossless", "cut_data")
    expected: dict[str, SkipReason | None] = {name: None for name in written}
    expected.update(nan=SkipReason.NON_FINITE, inf=SkipReason.NON_FINITE, zeros=SkipReason.SILENT,
                    hiss=SkipReason.SILENT, ten_ms=SkipReason.TOO_SHORT, clipped=SkipReason.CLIPPED,
                    empty=SkipReason.EMPTY, header_only=SkipReason.EMPTY, cut_header=SkipReason.UNREADABLE,
                    not_audio=SkipReason.UNREADABLE)
    return expected


@pytest.fixture(scope="module")
def batch(tmp_path_factory, voice):
    root = tmp_path_factory.mktemp("resample")
    expected = write_bad_inputs(root / "raw" / "alto", voice)
    jobs, refused = plan_resample(root / "raw", root / "out")
    results = run_resample(jobs, ResampleOptions(), num_processes=1, progress=False)
    return root, expected, {r.source.stem: r for r in refused + results}


def read_out(path: Path) -> np.ndarray:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16"), info
    return sf.read(str(path), dtype="float32")[0]


def test_every_file_gets_a_result_and_the_expected_outcome(batch):
    root, expected, results = batch
    assert set(results) == set(expected)  # readme.txt is ignored, nothing else is missing
    for stem, reason in expected.items():
        res = results[stem]
        assert res.reason == reason, (stem, res.reason, res.detail)
        if reason is None:
            assert [p.name for p in res.written] == [f"{stem}.wav"]
            assert res.written[0].parent == root / "out" / "alto"
        else:
            assert res.written == [] and res.detail
    assert "10 NaN or infinite samples" in results["nan"].detail
    assert "0.01 s" in results["ten_ms"].detail
    assert "0 bytes" in results["empty"].detail
    assert "clipped" in results["clipped"].detail and "--keep_clipped" in results["clipped"].detail
    assert any("8000 Hz" in note for note in results["k8"].notes)
    outputs = sorted(p.name for p in (root / "out" / "alto").iterdir())
    assert outputs == sorted(f"{s}.wav" for s, r in expected.items() if r is None)  # no temporaries left


def test_outputs_are_44k_mono_int16_at_minus_23_lufs_without_clipping(batch, voice):
    root, expected, results = batch
    reference = read_out(root / "out" / "alto" / "ok16.wav")
    trimmed = trim_silence(voice)
    assert abs(len(reference) - len(trimmed)) <= 2
    for stem, reason in expected.items():
        if reason is not None:
            continue
        out = read_out(results[stem].written[0])
        assert integrated_loudness(out, SR) == pytest.approx(-23.0, abs=0.2), stem
        assert np.max(np.abs(out)) <= CEILING, stem
    # same signal, other container/bit depth/channels/rate -> the same clip
    for stem in ("s24", "float_over", "six", "lossless"):
        out = read_out(root / "out" / "alto" / f"{stem}.wav")
        assert out.shape == reference.shape and np.max(np.abs(out - reference)) < 2e-3, stem
    k96 = read_out(root / "out" / "alto" / "k96.wav")
    assert abs(len(k96) - len(reference)) < 0.03 * SR
    half = read_out(root / "out" / "alto" / "cut_data.wav")
    assert abs(len(half) - len(trim_silence(voice[: len(voice) // 2]))) <= 1024  # one trim hop either way


def test_rerun_skips_finished_files_without_rewriting(batch):
    root, expected, results = batch
    before = {p: p.stat().st_mtime_ns for p in (root / "out" / "alto").iterdir()}
    jobs, _ = plan_resample(root / "raw", root / "out")
    again = {r.source.stem: r for r in run_resample(jobs, ResampleOptions(), 1, progress=False)}
    for stem, reason in expected.items():
        if reason is None:
            assert again[stem].reason is SkipReason.DONE and again[stem].written == []
        else:
            assert again[stem].reason == reason
    assert {p: p.stat().st_mtime_ns for p in (root / "out" / "alto").iterdir()} == before


def test_summary_counts_per_speaker_and_names_each_skip(batch):
    _, expected, results = batch
    text = summarise_resample(results.values())
    row = next(line for line in text.splitlines() if line.startswith("alto"))
    assert row.split()[1:3] == [str(len(expected)), "9"]
    for reason, count in (("NaN/Inf samples", 2), ("silent", 2), ("too short", 1), ("clipped", 1),
                          ("unreadable", 2), ("empty", 2)):
        assert f"{reason}: {count}" in row
    assert "skipped alto/not_audio.wav: unreadable" in text
    assert "total: 9 clips written, 0 files already done, 10 files skipped" in text


def test_clip_detection_spares_full_scale_peaks_and_keep_clipped_writes(tmp_path, voice):
    assert clipped_fraction(voice / np.max(np.abs(voice))) == 0.0  # the original's peak-normalised output
    assert clipped_fraction(np.clip(voice * 30, -1, 1)) > 0.05
    folder = tmp_path / "raw" / "bass"
    folder.mkdir(parents=True)
    sf.write(folder / "hot.wav", np.clip(voice * 30, -1, 1), SR)
    jobs, _ = plan_resample(tmp_path / "raw", tmp_path / "out")
    res = process_file(jobs[0], ResampleOptions(keep_clipped=True))
    assert res.reason is None and np.max(np.abs(read_out(res.written[0]))) <= CEILING


def test_lufs_normalisation_respects_the_peak_ceiling():
    t = np.arange(SR * 2) / SR
    tone = 0.01 * np.sin(2 * np.pi * 1000 * t)
    quiet = normalise_lufs(tone, SR, -23.0, -1.0)
    assert not quiet.limited and integrated_loudness(quiet.audio, SR) == pytest.approx(-23.0, abs=0.05)
    spiky = tone.copy()
    spiky[SR] = 0.9  # one huge sample: reaching -10 LUFS would push it far over full scale
    loud = normalise_lufs(spiky, SR, -10.0, -1.0)
    assert loud.limited and np.max(np.abs(loud.audio)) == pytest.approx(CEILING, rel=1e-5)
    with pytest.raises(ValueError, match="silent"):
        normalise_lufs(np.zeros(SR), SR)


def test_cli_peak_and_skip_loudnorm_modes(tmp_path, voice, capsys):
    folder = tmp_path / "raw" / "alto"
    folder.mkdir(parents=True)
    sf.write(folder / "a.wav", voice, SR)
    base = ["--in_dir", str(tmp_path / "raw"), "--num_processes", "1", "--no_progress"]
    assert resample_cli.main(base + ["--out_dir2", str(tmp_path / "peak"), "--loudnorm", "peak"]) == 0
    peak = sf.read(str(tmp_path / "peak" / "alto" / "a.wav"), dtype="int16")[0]
    assert np.max(np.abs(peak)) == 32767  # x*32767 of a peak of exactly 1.0
    assert resample_cli.main(base + ["--out_dir2", str(tmp_path / "raw_level"), "--skip_loudnorm"]) == 0
    kept = sf.read(str(tmp_path / "raw_level" / "alto" / "a.wav"), dtype="float32")[0]
    assert np.max(np.abs(kept)) == pytest.approx(np.max(np.abs(voice)), rel=0.02)
    out = capsys.readouterr().out
    assert "total: 1 clips written" in out


def test_bad_speaker_names_and_missing_folder_stop_before_any_work(tmp_path, capsys):
    with pytest.raises(DatasetError, match="folder not found"):
        plan_resample(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "raw" / "ok").mkdir(parents=True)
    (tmp_path / "raw" / "trailing space ").mkdir()
    (tmp_path / "raw" / "pipe|name").mkdir()
    with pytest.raises(DatasetError) as err:
        plan_resample(tmp_path / "raw", tmp_path / "out")
    assert "'trailing space ' (has whitespace" in str(err.value) and "'pipe|name' (contains '|')" in str(err.value)
    assert resample_cli.main(["--in_dir", str(tmp_path / "raw"), "--out_dir2", str(tmp_path / "out")]) == 2
    assert "pipe|name" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_same_stem_in_two_formats_is_a_name_clash(tmp_path, voice):
    folder = tmp_path / "raw" / "alto"
    folder.mkdir(parents=True)
    sf.write(folder / "take.flac", voice, SR)
    sf.write(folder / "take.wav", voice, SR)
    jobs, refused = plan_resample(tmp_path / "raw", tmp_path / "out")
    assert [j.source.name for j in jobs] == ["take.flac"]
    assert refused[0].source.name == "take.wav" and refused[0].reason is SkipReason.NAME_CLASH


def test_slice_cuts_long_recordings_and_parallel_run_matches(tmp_path):
    rng = np.random.default_rng(11)
    notes = [Note(0.0, 0.3)]
    for _ in range(7):
        notes += [Note(62.0 + float(rng.integers(-3, 4)), float(rng.uniform(0.3, 0.5))) for _ in range(8)]
        notes.append(Note(0.0, 0.6))
    long_take = synth_notes(notes, "alto", sr=16000, hop=160, seed=11).audio
    folder = tmp_path / "raw" / "alto"
    folder.mkdir(parents=True)
    sf.write(folder / "long.wav", long_take, 16000)
    sf.write(folder / "short.wav", long_take[: 16000 * 3], 16000)
    options = ResampleOptions(slice=True, loudnorm="peak", clip=ClipParams())  # peak: workers skip pyloudnorm
    jobs, _ = plan_resample(tmp_path / "raw", tmp_path / "seq")
    seq = {r.source.name: r for r in run_resample(jobs, options, 1, progress=False)}
    names = [p.name for p in seq["long.wav"].written]
    assert len(names) >= 2 and names == [f"long_{i:03d}.wav" for i in range(len(names))]
    assert [p.name for p in seq["short.wav"].written] == ["short.wav"]
    for path in seq["long.wav"].written:
        clip = read_out(path)
        assert 1.0 <= len(clip) / SR <= 15.0 and np.max(np.abs(clip)) == pytest.approx(32767 / 32768)
    marker = tmp_path / "seq" / "alto" / ".long.slices"
    assert marker.read_text().split() == names
    again = run_resample(jobs, options, 1, progress=False)
    assert {r.reason for r in again} == {SkipReason.DONE}
    par_jobs, _ = plan_resample(tmp_path / "raw", tmp_path / "par")
    par = run_resample(par_jobs, options, num_processes=2, progress=False)
    assert [r.source.name for r in par] == ["long.wav", "short.wav"]
    for r in par:
        for path in r.written:
            assert path.read_bytes() == (tmp_path / "seq" / "alto" / path.name).read_bytes()
    assert os.listdir(tmp_path / "par" / "alto") and not [n for n in os.listdir(tmp_path / "par" / "alto")
                                                         if n.endswith(".tmp")]
