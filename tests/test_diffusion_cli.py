"""inference_main.py with -shd / -ks / -se / -od / -eh / -eak on the tiny project, end to end."""
from __future__ import annotations

import math

import pytest
import soundfile as sf
import torch

import inference_main
from modules.synthetic_voices import synth_singing
from tests.support.diffusion_models import write_diffusion_config, write_diffusion_model, write_vocoder_folder
from tests.support.tiny_models import UNIT_DIM, write_tiny_project

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("shd")
    proj = write_tiny_project(root)
    vocoder = write_vocoder_folder(root / "pretrain" / "nsf_hifigan")
    cfg = write_diffusion_config(root / "logs" / "44k" / "diffusion" / "config.yaml", vocoder, unit_dim=UNIT_DIM,
                                 n_spk=3, overrides={"model": {"k_step_max": 0}})
    write_diffusion_model(root / "logs" / "44k" / "diffusion" / "model_0.pt", cfg)
    (root / "raw").mkdir()
    sf.write(root / "raw" / "song.wav", synth_singing("alto", 1.1, sr=22050, seed=3).audio, 22050, subtype="PCM_16")
    return proj


def _run(project, monkeypatch, *args: str) -> int:
    monkeypatch.chdir(project.root)
    return inference_main.main(["-m", str(project.model), "-c", str(project.config), "--no_progress",
                                "-n", "song.wav", "-s", "bass", "-wf", "wav", *args])


def _expected_length() -> int:
    return math.ceil(sf.info("raw/song.wav").frames * 44100 / 22050)


def test_shallow_diffusion_writes_audio_of_the_right_length(project, monkeypatch):
    assert _run(project, monkeypatch, "-shd", "-ks", "50", "-eh") == 0
    out = project.root / "results" / "song.wav_0key_bass_sovdiff_pm.wav"
    audio, sr = sf.read(out)
    assert sr == 44100 and len(audio) == _expected_length() and abs(audio).max() > 0
    plain = project.root / "results" / "song.wav_0key_bass_sovits_pm.wav"
    assert _run(project, monkeypatch) == 0
    assert abs(sf.read(plain)[0] - audio).max() > 1e-3  # the diffusion step changed the audio


def test_second_encoding_other_sampler_and_speedup(project, monkeypatch):
    assert _run(project, monkeypatch, "-shd", "-ks", "20", "-se", "--diffusion_method", "unipc",
                "--diffusion_speedup", "5") == 0
    audio, _ = sf.read(project.root / "results" / "song.wav_0key_bass_sovdiff_pm.wav")
    assert len(audio) == _expected_length()


def test_only_diffusion_needs_no_so_vits_model(project, monkeypatch):
    monkeypatch.chdir(project.root)
    code = inference_main.main(["-m", "missing.pth", "-n", "song.wav", "-s", "spk1", "-od", "--no_progress",
                                "-wf", "wav", "--diffusion_speedup", "200"])
    assert code == 0
    audio, sr = sf.read(project.root / "results" / "song.wav_0key_spk1_diff_pm.wav")
    assert sr == 44100 and len(audio) == _expected_length()


def test_enhancer_alone_keeps_the_length(project, monkeypatch):
    assert _run(project, monkeypatch, "-eh", "-eak", "2") == 0
    audio, _ = sf.read(project.root / "results" / "song.wav_0key_bass_sovits_pm.wav")
    assert len(audio) == _expected_length()


def test_k_step_above_k_step_max_is_one_line_error(project, monkeypatch, capsys, tmp_path):
    cfg = write_diffusion_config(tmp_path / "config.yaml", project.root / "pretrain" / "nsf_hifigan",
                                 unit_dim=UNIT_DIM, n_spk=3, overrides={"model": {"k_step_max": 40}})
    model = write_diffusion_model(tmp_path / "model_0.pt", cfg)
    assert _run(project, monkeypatch, "-shd", "-ks", "50", "-dm", str(model), "-dc", str(cfg)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "k_step 50 is larger than this diffusion model's k_step_max 40" in err
    assert _run(project, monkeypatch, "-od", "-dm", str(model), "-dc", str(cfg)) == 2
    assert "only refine" in capsys.readouterr().err
