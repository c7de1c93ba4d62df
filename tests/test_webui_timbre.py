"""Web UI with the cluster / feature-retrieval and diffusion options: scan, errors, and the same audio as
inference_main.py for the same options."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import inference_main
from modules.synthetic_voices import synth_singing
from modules.webui import NO_FILE, WebUI, scan_extras
from tests.support.cluster_files import write_reference_index, write_reference_kmeans
from tests.support.diffusion_models import write_diffusion_config, write_diffusion_model, write_vocoder_folder
from tests.support.tiny_models import SPEAKERS, UNIT_DIM, write_tiny_project

KMEANS = "logs/44k/kmeans_10000.pt"
INDEX = "logs/44k/feature_and_index.pkl"
DIFFUSION = "logs/44k/diffusion/model_0.pt"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("webui_timbre")
    proj = write_tiny_project(root)
    rng = np.random.default_rng(0)
    write_reference_kmeans(root / KMEANS, {name: rng.standard_normal((8, UNIT_DIM)).astype(np.float32) * 3
                                           for name in SPEAKERS})
    write_reference_index(root / INDEX, {i: rng.standard_normal((80, UNIT_DIM)).astype(np.float32) * 3
                                         for i in SPEAKERS.values()})
    vocoder = write_vocoder_folder(root / "pretrain" / "nsf_hifigan")
    cfg = write_diffusion_config(root / "logs" / "44k" / "diffusion" / "config.yaml", vocoder, unit_dim=UNIT_DIM,
                                 n_spk=3, overrides={"model": {"k_step_max": 0}})
    write_diffusion_model(root / DIFFUSION, cfg)
    return proj


@pytest.fixture(scope="module")
def ui(project):
    ui = WebUI(project.root, upload_dir=project.root / "uploads")
    reply, _ = ui.load_model("logs/44k/G_1.pth", device="cpu", kmeans=KMEANS, index=INDEX, diffusion=DIFFUSION)
    assert reply.ok, reply.message
    assert reply.message.endswith(f"; k-means: {KMEANS}; index: {INDEX}; diffusion: {DIFFUSION}")
    return ui


@pytest.fixture(scope="module")
def clip(ui) -> Path:
    path = ui.upload_dir / "clip.wav"
    sf.write(path, synth_singing("alto", 0.6, sr=22050, seed=3).audio, 22050, subtype="PCM_16")
    return path


def _cli(project, monkeypatch, clip: Path, *flags: str) -> tuple[np.ndarray, str]:
    """inference_main.py on the same clip; returns the audio and name of the one file it wrote."""
    monkeypatch.chdir(project.root)
    out = project.root / "cli_results"
    for old in out.glob("*"):
        old.unlink()
    assert inference_main.main(["-m", str(project.model), "-c", str(project.config), "-n", str(clip), "-s", "bass",
                                "-wf", "wav", "--no_progress", "--results_dir", str(out), *flags]) == 0
    (written,) = out.glob("*.wav")
    return sf.read(written, dtype="float32")[0], written.name


def _ui(ui, clip: Path, **values) -> tuple[np.ndarray, str]:
    result = ui.convert(str(clip), "bass", {"wav_format": "wav", "loudness_envelope_adjustment": 1, **values})
    assert result.reply.ok, result.reply.message
    return sf.read(result.output, dtype="float32")[0], result.output.name


def test_scan_finds_the_training_layouts_and_skips_diffusion_models_as_kmeans(project):
    trained = project.root / "trained" / "singer"
    (trained / "diffusion").mkdir(parents=True)
    (trained / "kmeans_10000.pt").write_bytes(b"x")
    (trained / "diffusion" / "model_400.pt").write_bytes(b"x")
    (trained / "diffusion" / "model_2000.pt").write_bytes(b"x")
    (trained / "diffusion" / "config.yaml").write_text("{}")
    try:
        extras = scan_extras(project.root)
        assert list(extras.kmeans) == [KMEANS, "trained/singer/kmeans_10000.pt"]
        assert list(extras.indexes) == [INDEX]
        assert list(extras.diffusion) == [DIFFUSION, "trained/singer/diffusion/model_2000.pt",
                                          "trained/singer/diffusion/model_400.pt"]
        assert extras.diffusion[DIFFUSION].config == project.root / "logs/44k/diffusion/config.yaml"
    finally:
        import shutil

        shutil.rmtree(project.root / "trained")


def test_cluster_ratio_gives_the_command_lines_audio_and_name(ui, project, monkeypatch, clip):
    audio, name = _ui(ui, clip, cluster_infer_ratio=0.5)
    assert name == "clip_0key_bass_0.5_sovits_pm.wav"
    expected, cli_name = _cli(project, monkeypatch, clip, "-cm", KMEANS, "-cr", "0.5")
    assert cli_name == "clip.wav_0key_bass_0.5_sovits_pm.wav"
    np.testing.assert_array_equal(audio, expected)
    plain, _ = _ui(ui, clip)
    assert np.abs(plain - audio).max() > 1e-3  # the ratio changed the audio


def test_feature_retrieval_uses_the_index(ui, project, monkeypatch, clip):
    audio, name = _ui(ui, clip, cluster_infer_ratio=0.5, feature_retrieval=True)
    expected, _ = _cli(project, monkeypatch, clip, "-cm", INDEX, "-cr", "0.5", "-fr")
    np.testing.assert_array_equal(audio, expected)
    assert name == "clip_0key_bass_0.5_sovits_pm.wav"


def test_shallow_diffusion_gives_the_command_lines_audio_and_name(ui, project, monkeypatch, clip):
    values = {"shallow_diffusion": True, "k_step": 20, "diffusion_speedup": 10, "enhance": True}
    audio, name = _ui(ui, clip, **values)
    assert name == "clip_0key_bass_sovdiff_pm.wav"
    assert ui.request.diffusion.shallow and not ui.request.diffusion.enhance  # -shd turns the enhancer off
    expected, _ = _cli(project, monkeypatch, clip, "-shd", "-ks", "20", "--diffusion_speedup", "10", "-eh")
    np.testing.assert_allclose(audio, expected, atol=1.5 / 32768)
    plain, _ = _ui(ui, clip)  # back to plain so-vits: the engine is rebuilt without the diffusion step
    assert ui.request.diffusion.shallow is False and np.abs(plain - audio).max() > 1e-3


@pytest.mark.parametrize("values, message", [
    ({"cluster_infer_ratio": 0.5}, "needs a k-means model"),
    ({"cluster_infer_ratio": 0.5, "feature_retrieval": True}, "needs a feature index"),
    ({"shallow_diffusion": True}, "needs a diffusion model"),
    ({"cluster_infer_ratio": 1.5}, "must be in [0, 1]"),
    ({"diffusion_method": "euler"}, "unknown diffusion sampler 'euler'"),
])
def test_missing_files_and_bad_values_are_one_line_messages(project, clip, values, message):
    ui = WebUI(project.root, upload_dir=clip.parent)
    reply, _ = ui.load_model("logs/44k/G_1.pth", device="cpu", kmeans=NO_FILE, index=NO_FILE, diffusion=NO_FILE)
    assert reply.ok, reply.message
    result = ui.convert(str(clip), "bass", values)
    assert not result.reply.ok and message in result.reply.message and "\n" not in result.reply.message


def test_a_k_step_beyond_the_model_keeps_the_loaded_engine(ui, project, clip, tmp_path):
    engine = ui.engine
    result = ui.convert(str(clip), "bass", {"shallow_diffusion": True, "k_step": 5000})
    assert not result.reply.ok and "k_step 5000" in result.reply.message
    assert ui.engine is engine


def test_pickers_accept_only_scanned_files(project):
    ui = WebUI(project.root, upload_dir=project.root / "uploads")
    reply, _ = ui.load_model("logs/44k/G_1.pth", device="cpu", kmeans="../../etc/kmeans.pt")
    assert not reply.ok and "k-means model '../../etc/kmeans.pt' is not in the scan" in reply.message
    reply, _ = ui.load_model("logs/44k/G_1.pth", device="cpu", diffusion=str(project.root / DIFFUSION))
    assert not reply.ok and "is not in the scan" in reply.message


def test_only_diffusion_gives_the_command_lines_audio_and_name(ui, project, monkeypatch, clip):
    result = ui.convert(str(clip), "spk1", {"only_diffusion": True, "diffusion_speedup": 200, "wav_format": "wav",
                                            "loudness_envelope_adjustment": 1})
    assert result.reply.ok, result.reply.message
    assert result.output.name == "clip_0key_spk1_diff_pm.wav"
    monkeypatch.chdir(project.root)
    out = project.root / "cli_od"
    assert inference_main.main(["-m", "missing.pth", "-n", str(clip), "-s", "spk1", "-od", "--no_progress",
                                "-wf", "wav", "--diffusion_speedup", "200", "--results_dir", str(out)]) == 0
    np.testing.assert_allclose(sf.read(result.output, dtype="float32")[0],
                               sf.read(out / "clip.wav_0key_spk1_diff_pm.wav", dtype="float32")[0], atol=1.5 / 32768)


def test_onnx_backend_loads_through_the_same_request(project, clip, monkeypatch):
    ui = WebUI(project.root, upload_dir=clip.parent)
    reply, _ = ui.load_model("logs/44k/G_1.pth", device="cpu", backend="onnx")
    assert reply.ok, reply.message
    assert ui.request.backend == "onnx" and (project.root / "logs/44k/G_1_SoVits.onnx").is_file()
    audio, _ = _ui(ui, clip)
    expected, _ = _cli(project, monkeypatch, clip, "--backend", "onnx")
    np.testing.assert_allclose(audio, expected, atol=1.5 / 32768)
    reply, _ = ui.load_model("logs/44k/G_1.pth", backend="tensorrt")
    assert not reply.ok and "unknown backend 'tensorrt'" in reply.message


def test_enhancer_uses_the_projects_vocoder_like_the_command_line(ui, project, monkeypatch, clip):
    audio, name = _ui(ui, clip, enhance=True, enhancer_adaptive_key=2)
    assert name == "clip_0key_bass_sovits_pm.wav" and ui.request.vocoder_dir == ui.pretrain_dir / "nsf_hifigan"
    expected, _ = _cli(project, monkeypatch, clip, "-eh", "-eak", "2")
    np.testing.assert_allclose(audio, expected, atol=1.5 / 32768)
