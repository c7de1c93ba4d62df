"""evaluate.py and its metrics: the speaker encoder and DNSMOS against their packages, SECS, DNSMOS, F0 scores,
sweeps and one-line errors."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

import evaluate
from modules.audio import resample
from modules.errors import CheckpointError, DatasetError, InferenceError, PretrainedFileMissing
from modules.evaluation import Evaluator, Row, f0_scores, format_table, parse_sweep, quality_scores, reference_clips
from modules.synthetic_voices import Note, synth_notes, synth_singing
from tests.support.tiny_models import TinyProject, write_tiny_project


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tiny conversions are many small kernels; on a shared 2-core machine a second thread only waits.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def alto() -> np.ndarray:
    return synth_singing("alto", 2.5, seed=11).audio


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> TinyProject:
    project = write_tiny_project(tmp_path_factory.mktemp("evalproj"))
    for speaker, seed in (("alto", 21), ("bass", 22)):
        folder = project.root / "dataset" / "44k" / speaker
        folder.mkdir(parents=True)
        sf.write(folder / f"{speaker}_000.wav", synth_singing(speaker, 2.0, seed=seed).audio, 44100, subtype="PCM_16")
    (project.root / "dataset" / "44k" / "soprano").mkdir()
    raw = project.root / "raw"
    raw.mkdir()
    sf.write(raw / "song.wav", synth_singing("soprano", 1.2, seed=23).audio, 44100, subtype="PCM_16")
    return project


# ----------------------------------------------------------------------------------- against the packages


def _phrase_with_pauses() -> np.ndarray:
    notes = [Note(60, 1.0), Note(0, 1.5), Note(62, 1.0, "o"), Note(0, 0.8), Note(64, 1.0, "e", True)]
    return resample(synth_notes(notes, "alto", seed=4).audio, 44100, 16000)


def test_speaker_encoder_gives_the_resemblyzer_package_embeddings():
    pytest.importorskip("webrtcvad")
    resemblyzer = pytest.importorskip("resemblyzer")
    from modules.speaker_embedding import load_speaker_encoder, preprocess

    ours = load_speaker_encoder()
    theirs = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    for speaker, seconds in (("bass", 1.0), ("soprano", 2.3)):
        wav16 = resample(synth_singing(speaker, seconds, seed=5).audio, 44100, 16000)
        np.testing.assert_allclose(ours.embed_utterance(wav16), theirs.embed_utterance(wav16), atol=1e-5)
    wav16 = _phrase_with_pauses()
    trimmed = resemblyzer.preprocess_wav(wav16)
    assert len(trimmed) < len(wav16) - 16000  # the 1.5 s pause was shortened
    np.testing.assert_array_equal(preprocess(wav16, 16000), trimmed)


def test_energy_voice_detection_stands_in_without_webrtcvad(monkeypatch, caplog):
    from modules.speaker_embedding import _warn_energy_vad, load_speaker_encoder, preprocess

    wav16 = _phrase_with_pauses()
    with_webrtc = preprocess(wav16, 16000)
    monkeypatch.setitem(sys.modules, "webrtcvad", None)  # import now fails
    _warn_energy_vad.cache_clear()
    with caplog.at_level("WARNING"):
        energy = preprocess(wav16, 16000)
    assert "webrtcvad is not installed" in caplog.text
    assert len(energy) < len(wav16) - 16000
    encoder = load_speaker_encoder()
    similarity = float(np.dot(encoder.embed_utterance(energy), encoder.embed_utterance(with_webrtc)))
    assert similarity > 0.95


def test_dnsmos_gives_the_speechmos_package_scores():
    speechmos_dnsmos = pytest.importorskip("speechmos.dnsmos")
    from modules.dnsmos import load_dnsmos

    wav16 = resample(synth_singing("alto", 3.0, seed=6).audio, 44100, 16000)
    ours = load_dnsmos().score(wav16, 16000)
    theirs = speechmos_dnsmos.run(wav16, 16000)
    assert ours.sig == pytest.approx(theirs["sig_mos"], abs=1e-4)
    assert ours.bak == pytest.approx(theirs["bak_mos"], abs=1e-4)
    assert ours.ovrl == pytest.approx(theirs["ovrl_mos"], abs=1e-4)
    assert ours.p808 == pytest.approx(theirs["p808_mos"], abs=1e-4)


def test_unreadable_or_missing_metric_weights_are_one_line_errors(tmp_path):
    from modules.dnsmos import Dnsmos
    from modules.shipped_weights import package_file

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="junk.onnx: not a readable DNSMOS ONNX model") as info:
        Dnsmos(junk, junk)
    assert "\n" not in str(info.value)
    with pytest.raises(PretrainedFileMissing, match="requirements-weights.txt"):
        package_file("speechmos", "dnsmos_models/absent.onnx", "DNSMOS")
    with pytest.raises(PretrainedFileMissing, match="no_such_weights_package"):
        package_file("no_such_weights_package", "w.pt", "DNSMOS")


# ----------------------------------------------------------------------------------- metrics


def test_secs_is_one_against_itself_and_clearly_lower_for_another_singer(tmp_path, alto):
    path = tmp_path / "alto.wav"
    sf.write(path, alto, 44100, subtype="FLOAT")
    evaluator = Evaluator([path], dnsmos=False)
    assert evaluator.score("self", alto, 44100).secs_target == pytest.approx(1.0, abs=1e-5)
    other = evaluator.score("bass", synth_singing("bass", 2.5, seed=12).audio, 44100).secs_target
    assert other < 0.85


def test_dnsmos_of_clean_singing_is_above_the_same_clip_at_0_db_snr(alto):
    from modules.dnsmos import load_dnsmos

    noise = np.random.default_rng(0).standard_normal(len(alto)).astype(np.float32) * np.sqrt(np.mean(alto ** 2))
    clean, noisy = load_dnsmos().score(alto, 44100), load_dnsmos().score(alto + noise, 44100)
    assert clean.ovrl > noisy.ovrl + 0.5
    assert clean.bak > noisy.bak + 0.5
    assert all(1.0 <= v <= 5.0 for v in (clean.sig, clean.bak, clean.ovrl, noisy.ovrl))


def test_f0_scores_are_exact_on_a_synthetic_contour():
    voice = synth_singing("alto", 3.0, seed=3)
    requested = voice.f0.astype(np.float64)
    output = requested * 2.0 ** (30.0 / 1200.0)  # 30 cents sharp everywhere
    flipped = np.flatnonzero(requested > 0)[:7]
    output[flipped] = 0.0  # 7 voiced frames missed
    scores = f0_scores(requested, output)
    both = (requested > 0) & (output > 0)
    assert scores.frames == int(both.sum())
    assert scores.rmse_cents == pytest.approx(30.0, abs=1e-6)
    assert scores.corr == pytest.approx(1.0, abs=1e-9)
    expected_hz = np.sqrt(np.mean((requested[both] * (2.0 ** (30.0 / 1200.0) - 1.0)) ** 2))
    assert scores.rmse_hz == pytest.approx(expected_hz, rel=1e-9)
    assert scores.vde == pytest.approx(7 / len(requested))
    silent = f0_scores(np.zeros(10), np.zeros(10))
    assert silent.corr is None and silent.rmse_hz is None and silent.vde == 0.0


def test_measured_f0_of_a_clip_against_itself_transposed_request():
    voice = synth_singing("alto", 2.0, seed=4)
    evaluator = Evaluator(dnsmos=False, speaker_similarity=False)
    same = evaluator.score("same", voice.audio, voice.sr, voice.audio, voice.sr, transpose=0)
    assert same.f0_corr == pytest.approx(1.0, abs=1e-9) and same.f0_rmse_cents == pytest.approx(0.0, abs=1e-6)
    assert same.vde == 0.0
    octave = evaluator.score("octave", voice.audio, voice.sr, voice.audio, voice.sr, transpose=-12)
    assert octave.f0_rmse_cents == pytest.approx(1200.0, abs=1e-3)


def test_sweep_gives_every_combination():
    combos = parse_sweep(["noice_scale=0,0.4", "f0_predictor=pm,harvest"])
    assert combos == [{"noise_scale": 0.0, "f0_predictor": "pm"}, {"noise_scale": 0.0, "f0_predictor": "harvest"},
                      {"noise_scale": 0.4, "f0_predictor": "pm"}, {"noise_scale": 0.4, "f0_predictor": "harvest"}]
    assert parse_sweep(["transpose=-12,0"]) == [{"transpose": -12}, {"transpose": 0}]
    with pytest.raises(InferenceError, match="unknown option 'cluster_infer_ratio'"):
        parse_sweep(["cluster_infer_ratio=0,1"])
    with pytest.raises(InferenceError, match="unknown predictor 'yin'"):
        parse_sweep(["f0_predictor=pm,yin"])
    with pytest.raises(InferenceError, match="not a valid float"):
        parse_sweep(["noise_scale=a"])


def test_table_has_one_line_per_row_and_dashes_for_missing_scores():
    rows = [Row("a"), ("b", {"secs_target": 0.5, "rtf": 0.25, "mcd": 6.125})]
    lines = format_table(rows, extra_columns=[("MCD↓", "mcd", "{:.2f}")]).splitlines()
    assert lines[0].split()[-1] == "MCD↓"
    assert len(lines) == 4 and lines[3].split()[:2] == ["b", "0.500"] and lines[3].split()[-2:] == ["0.25", "6.12"]
    assert set(lines[2].split()[1:]) == {"-"}


def test_reference_clips_errors_are_one_line(tmp_path):
    with pytest.raises(DatasetError, match="reference folder not found"):
        reference_clips("tenor", dataset_dir=tmp_path)
    (tmp_path / "tenor").mkdir()
    (tmp_path / "tenor" / "x.wav.f0.npy").write_bytes(b"")
    with pytest.raises(DatasetError, match="speaker 'tenor' has no clips"):
        reference_clips("tenor", dataset_dir=tmp_path)
    for i in range(30):
        (tmp_path / "tenor" / f"t_{i:02d}.wav").write_bytes(b"")
    picked = reference_clips("tenor", dataset_dir=tmp_path, limit=5)
    assert [p.name for p in picked] == ["t_00.wav", "t_07.wav", "t_14.wav", "t_22.wav", "t_29.wav"]


# ----------------------------------------------------------------------------------- command line


def test_cli_sweep_prints_one_row_per_value_and_writes_json(project, monkeypatch, capsys):
    monkeypatch.chdir(project.root)
    rc = evaluate.main(["-m", str(project.model), "-c", str(project.config), "-n", "song", "-s", "bass",
                        "-t", "-12", "--sweep", "noise_scale=0,0.8", "--no_progress", "--out", "ev.json"])
    assert rc == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in table[2:]] == ["noise_scale=0.0", "noise_scale=0.8"]
    report = json.loads((project.root / "ev.json").read_text())
    assert report["speaker"] == "bass" and report["references"][0].endswith("bass_000.wav")
    rows = report["rows"]
    assert [r["options"] for r in rows] == [{"noise_scale": 0.0}, {"noise_scale": 0.8}]
    for row in rows:
        s = row["summary"]
        assert -1.0 <= s["secs_target"] <= 1.0 and -1.0 <= s["secs_source"] <= 1.0
        assert 1.0 <= s["dnsmos_ovrl"] <= 5.0 and s["rtf"] > 0 and 0.0 <= s["vde"] <= 1.0
        assert row["files"][0]["name"] == "song.wav"


def test_quality_scores_of_a_converted_file(project, tmp_path):
    source = project.root / "raw" / "song.wav"
    scores = quality_scores(source, [source], source=source, transpose=0)
    assert scores["secs_target"] == pytest.approx(1.0, abs=1e-5)
    assert scores["secs_source"] == pytest.approx(1.0, abs=1e-5)
    assert scores["f0_rmse_cents"] == pytest.approx(0.0, abs=1e-6) and scores["dnsmos_ovrl"] > 1.0


def test_quickstart_scores_table_for_its_converted_phrase(project):
    from modules.quickstart import QuickstartSettings, _scores_table

    song = project.root / "raw" / "song.wav"
    bass = project.root / "dataset" / "44k" / "bass"
    table = _scores_table(QuickstartSettings(), {"untrained": song, "trained": bass / "bass_000.wav"}, song,
                          bass).splitlines()
    assert len(table) == 4 and [line.split()[0] for line in table[2:]] == ["untrained", "trained"]
    assert table[2].split()[2] == "1.000"  # the phrase against itself as the source: full leak
    assert table[3].split()[1] == "1.000"  # the target's own clip against its references
    assert _scores_table(QuickstartSettings(), {"trained": project.root / "missing.wav"}, song, project.root) == ""


@pytest.mark.parametrize("args, message", [
    (["-s", "tenor"], "reference folder not found"),
    (["-s", "soprano"], "speaker 'soprano' has no clips"),
    (["-s", "bass", "--converted", "garbage.wav"], "garbage.wav: not a readable audio file"),
    (["-s", "bass", "--converted", "raw/song.wav", "--sweep", "noise_scale=0,1"], "--sweep needs models"),
    ([], "nothing to evaluate"),
])
def test_cli_errors_are_one_line(project, monkeypatch, capsys, args, message):
    monkeypatch.chdir(project.root)
    (project.root / "garbage.wav").write_bytes(b"not audio at all")
    if "-s" in args and "--converted" not in args:
        args = ["-m", str(project.model), "-c", str(project.config), "-n", "song", *args]
    rc = evaluate.main([*args, "--no_progress", "--no_dnsmos"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and message in err, err
