"""Web UI callbacks called directly (no browser): model scan, load, convert, tools, path safety."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import webUI
from modules.diffusion_infer import DiffusionOptions
from modules.errors import ConfigError, InferenceError
from modules.inference import ConvertOptions
from modules.synthetic_voices import synth_singing
from modules.webui import (
    CONVERT_FIELDS,
    METHOD_FROM_CONFIG,
    WebUI,
    options_from_values,
    safe_file_name,
    scan_models,
)
from tests.support.tiny_models import write_tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    torch.set_num_threads(1)
    return write_tiny_project(tmp_path_factory.mktemp("webui_proj"))


@pytest.fixture(scope="module")
def ui(project):
    ui = WebUI(project.root, upload_dir=project.root / "uploads")
    reply, speakers = ui.load_model("logs/44k/G_1.pth", device="cpu")
    assert reply.ok, reply.message
    assert speakers == ["alto", "bass", "soprano"]
    return ui


@pytest.fixture(scope="module")
def clip(ui) -> Path:
    path = ui.upload_dir / "clip.wav"
    sf.write(path, synth_singing("alto", 0.5, sr=22050, seed=3).audio, 22050)
    return path


# ------------------------------------------------------------------------------------------------ scan


def test_scan_finds_training_folders_and_the_original_trained_layout(tmp_path):
    logs = tmp_path / "logs" / "44k"
    logs.mkdir(parents=True)
    (logs / "config.json").write_text("{}")
    for name in ("G_800.pth", "G_10000.pth", "D_800.pth"):
        (logs / name).write_bytes(b"x")
    singer = tmp_path / "trained" / "singer"
    singer.mkdir(parents=True)
    (singer / "any.json").write_text("{}")
    (singer / "weights.pth").write_bytes(b"x")
    ambiguous = tmp_path / "trained" / "two"
    ambiguous.mkdir()
    (ambiguous / "a.pth").write_bytes(b"x")
    (ambiguous / "b.pth").write_bytes(b"x")
    (ambiguous / "c.json").write_text("{}")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "G_1.pth").write_bytes(b"x")
    os.symlink(outside, tmp_path / "trained" / "link")

    found = scan_models(tmp_path)
    assert list(found) == ["logs/44k/G_10000.pth", "logs/44k/G_800.pth", "trained/singer/weights.pth"]
    assert found["trained/singer/weights.pth"].config == singer / "any.json"
    assert found["logs/44k/G_800.pth"].config == logs / "config.json"


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"), ("..\\..\\win.ini", "win.ini"), ("..", "mixed"), ("a b/../c?.wav", "c_.wav"),
    ("", "mixed"), (".hidden", "hidden"),
])
def test_file_names_from_the_browser_stay_one_plain_component(name, expected):
    assert safe_file_name(name, "mixed") == expected


def test_only_uploaded_files_are_read(ui, project):
    with pytest.raises(InferenceError, match="only files uploaded"):
        ui.uploaded(project.config, "config.json")
    result = ui.convert(str(project.config), "alto", {})
    assert not result.reply.ok and "only files uploaded" in result.reply.message


# ------------------------------------------------------------------------------------------------ options


def test_defaults_are_the_clis_except_the_web_uis_loudness_envelope():
    options, request = options_from_values({})
    cli = ConvertOptions()
    assert options.loudness_envelope_adjustment == 0.0 and cli.loudness_envelope_adjustment == 1.0
    for name in ("transpose", "clip_seconds", "linear_gradient", "linear_gradient_retain", "pad_seconds", "slice_db",
                 "auto_predict_f0", "f0_predictor", "f0_threshold", "noise_scale"):
        assert getattr(options, name) == getattr(cli, name), name
    assert request == {"wav_format": "flac", "use_spk_mix": False, "cluster_infer_ratio": 0.0,
                       "feature_retrieval": False, "diffusion": DiffusionOptions()}
    lea = next(f for f in CONVERT_FIELDS if f.target == "loudness_envelope_adjustment")
    assert "inference_main.py's default is 1" in lea.info


def test_option_values_are_cast_and_checked():
    options, _ = options_from_values({"transpose": 2.0, "noise_scale": "0.3"})
    assert options.transpose == 2 and isinstance(options.transpose, int) and options.noise_scale == 0.3
    with pytest.raises(ConfigError, match=r"Crossfade retain must be in \(0, 1\]"):
        options_from_values({"linear_gradient_retain": 0})
    with pytest.raises(ConfigError, match="Transpose"):
        options_from_values({"transpose": "up"})
    with pytest.raises(ConfigError, match="unknown F0 predictor"):
        options_from_values({"f0_predictor": "yin"})


# ------------------------------------------------------------------------------------------------ model


def test_load_errors_are_one_line_messages(project, tmp_path):
    wrong = project.root / "trained" / "wrong"
    wrong.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project.model, wrong / "G_1.pth")
    cfg = json.loads(project.config.read_text())
    cfg["model"]["hidden_channels"] = 24
    (wrong / "config.json").write_text(json.dumps(cfg))
    ui = WebUI(project.root, upload_dir=tmp_path / "up", pretrain_dir=tmp_path / "no_pretrain")
    reply, speakers = ui.load_model("trained/wrong/G_1.pth", device="cpu")
    assert not reply.ok and speakers == [] and "\n" not in reply.message
    assert "config" in reply.message and "G_1.pth" in reply.message
    reply, _ = ui.load_model("logs/44k/G_1.pth", device="cpu")  # right config, speech encoder file missing
    assert not reply.ok and "checkpoint_best_legacy_500.pt" in reply.message and ui.engine is None
    reply, _ = ui.load_model("../../etc/G_1.pth")
    assert not reply.ok and "not in the scan" in reply.message
    shutil.rmtree(wrong)


def test_an_uploaded_model_and_config_load(project, tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    shutil.copyfile(project.model, up / "G_upload.pth")
    shutil.copyfile(project.config, up / "config.json")
    ui = WebUI(project.root, upload_dir=up)
    reply, speakers = ui.load_model(None, str(up / "G_upload.pth"), str(up / "config.json"), "cpu")
    assert reply.ok and "uploaded G_upload.pth" in reply.message and speakers == ["alto", "bass", "soprano"]
    reply, _ = ui.load_model(None, str(up / "G_upload.pth"), None, "cpu")
    assert not reply.ok and "no config.json uploaded" in reply.message
    assert ui.unload_model().message == "No model loaded" and ui.engine is None


# ------------------------------------------------------------------------------------------------ convert


def test_convert_writes_the_engines_audio_under_the_cli_name(ui, clip):
    result = ui.convert(str(clip), "bass", {"transpose": 3, "wav_format": "wav", "loudness_envelope_adjustment": 1})
    assert result.reply.ok, result.reply.message
    assert result.output == ui.results_dir / "clip_3key_bass_sovits_pm.wav"
    data, sr = sf.read(result.output, dtype="float32")
    assert sr == 44100
    n_in = sf.info(clip).frames
    assert len(data) == -(-n_in * 44100 // 22050)
    options = ConvertOptions(speaker="bass", transpose=3)  # inference_main.py's path, same options
    expected = ui.engine.convert_file(clip, options)
    np.testing.assert_allclose(data, np.clip(expected, -1, 1), atol=1.5 / 32768)
    curves = result.f0_curves
    voiced = curves["input"] > 0
    assert voiced.sum() > 10
    np.testing.assert_allclose(curves["requested"][voiced], curves["input"][voiced] * 2 ** (3 / 12), rtol=1e-9)
    assert len(curves["output"]) == len(curves["times"]) and result.f0_figure is not None


@pytest.mark.parametrize("speaker, audio, message", [
    ("tenor", "clip.wav", "unknown speaker 'tenor'"),
    ("alto", "broken.wav", "not a readable audio file"),
])
def test_convert_errors_are_messages(ui, clip, speaker, audio, message):
    (ui.upload_dir / "broken.wav").write_bytes(b"RIFF not really")
    result = ui.convert(str(ui.upload_dir / audio), speaker, {})
    assert not result.reply.ok and message in result.reply.message and result.output is None
    assert result.reply.markdown.startswith("**Error:** ") and str(ui.upload_dir) not in result.reply.message


def test_convert_without_a_model_says_so(project, tmp_path):
    result = WebUI(project.root, upload_dir=tmp_path).convert(None, None, {})
    assert not result.reply.ok and "no model loaded" in result.reply.message


# ------------------------------------------------------------------------------------------------ tools


def test_mixing_defaults_to_exact_and_lands_in_trained(ui, project):
    state = torch.load(project.model, weights_only=True)["model"]
    other = {k: v * 3 if v.is_floating_point() else v for k, v in state.items()}
    second = project.model.with_name("G_2.pth")
    torch.save({"model": other, "iteration": 5}, second)
    try:
        reply, out = ui.mix_models(["logs/44k/G_1.pth", "logs/44k/G_2.pth"], "75, 25", "exact", "../../escape")
        assert reply.ok, reply.message
        assert out == project.root / "trained" / "escape" / "model.pth"
        mixed = torch.load(out, weights_only=True)["model"]
        key = "enc_p.proj.weight"
        torch.testing.assert_close(mixed[key], state[key] * (0.75 + 0.25 * 3))
        assert "trained/escape/model.pth" in ui.model_choices()
        reply, _ = ui.mix_models(["logs/44k/G_1.pth", "logs/44k/G_2.pth"], "50", "exact", "x")
        assert not reply.ok and "2 models selected but 1 rates" in reply.message
        (out.parent / "notes.json").write_text("{}")
        reply, _ = ui.mix_models(["logs/44k/G_1.pth", "logs/44k/G_2.pth"], "", "exact", "escape")
        assert not reply.ok and "trained/escape already holds another model (notes.json)" in reply.message
    finally:
        second.unlink()
        shutil.rmtree(project.root / "trained", ignore_errors=True)


def test_compression_works(ui, project):
    reply, out = ui.compress_model("logs/44k/G_1.pth", True)
    assert reply.ok, reply.message
    assert out == project.model.with_name("G_1_release_half.pth")
    release = torch.load(out, weights_only=True)
    assert not any(k.startswith("enc_q.") for k in release["model"])
    assert release["model"]["enc_p.proj.weight"].dtype == torch.float16
    out.unlink()


def test_speaker_mix_timeline_is_validated_against_the_loaded_model(ui, clip):
    reply, _ = ui.validate_spk_mix("{0: [[0.0, 0.5, 1.0, 0.0]], 1: [[0.0, 1.0, 0.0, 1.0]], 2: [[0.0, 1.0, 0.0, 0.0]]}")
    assert not reply.ok and "last segment must end at 1" in reply.message and "uploads" not in reply.message
    reply, _ = ui.validate_spk_mix("spk_mix_map = {0: [[0.0, 1.0, 1.0, 0.0]], 1: [[0.0, 1.0, 0.0, 1.0]], "
                                   "2: [[0.0, 1.0, 0.0, 0.0]]}")
    assert reply.ok and ui.spk_mix is not None and ui.spk_mix.speaker_ids == (0, 1, 2)
    result = ui.convert(str(clip), "alto", {"use_spk_mix": True})
    assert result.reply.ok and result.output.name == "clip_0key_spk_mix_sovits_pm.flac"


def test_the_cli_has_the_issues_flags_and_binds_loopback_by_default():
    args = webUI.build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.inbrowser) == ("127.0.0.1", 7860, False, False)


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True),
                                         ("192.168.1.5", True)])
def test_binding_beyond_loopback_warns(host, warns):
    from modules.webui import exposure_warning

    warning = exposure_warning(host)
    assert (warning is not None) == warns
    if warns:
        assert host in warning


def test_a_bug_in_a_handler_becomes_a_message_not_a_traceback(caplog):
    from modules.webui import guarded

    def broken(x):
        raise RuntimeError(f"CUDA out of memory at {x}")

    with caplog.at_level("ERROR"):
        outputs = guarded(broken, 3, status_index=1)("step 3")
    assert len(outputs) == 3
    assert outputs[1] == "**Error:** internal error (RuntimeError: CUDA out of memory at step 3); details in the server log"
    assert "Traceback" in caplog.text or caplog.records[0].exc_info is not None


def test_a_new_page_shows_the_loaded_model(ui):
    reply, speakers = ui.current()
    assert reply.ok and reply.message.startswith("Loaded logs/44k/G_1.pth on cpu") and speakers[0] == "alto"


# Every inference_main.py flag and where the web UI offers it; a new flag fails this test until it has a control.
CLI_FLAG_IN_UI = {
    "model_path": "Model tab", "config_path": "Model tab", "device": "Model tab", "fast": "Model tab",
    "precision": "Model tab Fast checkbox (= auto)",
    "clean_names": "Convert tab audio", "spk_list": "Convert tab speaker", "spk_mix_file": "Tools tab timeline",
    "pretrain_dir": "webUI.py --pretrain_dir", "results_dir": "<root>/results", "raw_dir": "uploads instead",
    "no_progress": "progress bar", "debug": "webUI.py --debug",
    "trans": "transpose", "clip": "clip_seconds", "linear_gradient": "linear_gradient",
    "linear_gradient_retain": "linear_gradient_retain", "pad_seconds": "pad_seconds", "slice_db": "slice_db",
    "auto_predict_f0": "auto_predict_f0", "f0_predictor": "f0_predictor", "f0_filter_threshold": "f0_threshold",
    "noice_scale": "noise_scale", "loudness_envelope_adjustment": "loudness_envelope_adjustment",
    "use_spk_mix": "use_spk_mix", "wav_format": "wav_format",
    "cluster_model_path": "Model tab k-means / feature index pickers (scan, no free paths)",
    "diffusion_model_path": "Model tab diffusion picker", "diffusion_config_path": "config.yaml beside the model",
    "backend": "Model tab backend", "onnx_model": "<model>_SoVits.onnx next to the model, exported on first use",
    "vocoder_dir": "no free paths: <pretrain_dir>/nsf_hifigan for -eh, the diffusion config's for diffusion",
    "cluster_infer_ratio": "cluster_infer_ratio", "feature_retrieval": "feature_retrieval",
    "shallow_diffusion": "shallow_diffusion", "only_diffusion": "only_diffusion", "k_step": "k_step",
    "second_encoding": "second_encoding", "enhance": "enhance", "enhancer_adaptive_key": "enhancer_adaptive_key",
    "diffusion_method": "diffusion_method", "diffusion_speedup": "diffusion_speedup",
}


def test_every_inference_main_flag_has_a_control():
    import inference_main

    parser = inference_main.build_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"} | {"debug"}
    fields = {f.target: f for f in CONVERT_FIELDS}
    assert dests == set(CLI_FLAG_IN_UI), f"flags without a web UI control: {sorted(dests - set(CLI_FLAG_IN_UI))}"
    assert {w for w in CLI_FLAG_IN_UI.values() if w in fields} == set(fields)  # and every field is a CLI option
    field_of = {a.dest: a for a in parser._actions}
    assert set(field_of["wav_format"].choices) == set(fields["wav_format"].choices)
    assert tuple(field_of["f0_predictor"].choices) == fields["f0_predictor"].choices
    for dest in ("clip", "linear_gradient", "linear_gradient_retain", "pad_seconds", "slice_db", "f0_filter_threshold",
                 "noice_scale", "cluster_infer_ratio", "k_step", "enhancer_adaptive_key"):
        assert float(field_of[dest].default) == float(fields[CLI_FLAG_IN_UI[dest]].default), dest
    for dest in ("feature_retrieval", "shallow_diffusion", "only_diffusion", "second_encoding", "enhance"):
        assert field_of[dest].default is False and fields[dest].default is False and fields[dest].kind == "checkbox"
    assert set(fields["diffusion_method"].choices) == {METHOD_FROM_CONFIG, *field_of["diffusion_method"].choices}
    _, request = options_from_values({})  # the sampler and speedup left to the diffusion config, as the CLI's None
    assert (request["diffusion"].method, request["diffusion"].speedup) == (field_of["diffusion_method"].default,
                                                                          field_of["diffusion_speedup"].default)
