"""Diffusion ONNX export for MoeSS: the four graphs' interface, each graph vs its torch module, the host
PLMS loop vs our pndm sampler, the CLI and its one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import onnx_export
from diffusion import samplers
from modules.config import load_diffusion_config
from modules.errors import CheckpointError, ConfigError
from modules.onnx_diffusion import (
    OnnxDiffusion,
    export_diffusion_model,
    feature_inputs,
    load_diffusion,
    torch_mel,
    verify_diffusion,
)
from modules.onnx_export import check_graph, describe_inputs
from tests.support.diffusion_models import write_diffusion_config, write_diffusion_model

LIMIT = 1e-4  # largest |onnxruntime - torch| as a fraction of the peak
UNIT_DIM, HIDDEN, MELS = 16, 8, 128  # tiny model: data.encoder_out_channels, model.n_hidden, mel bins


def _files(root: Path, n_spk: int) -> tuple[Path, Path]:
    config = write_diffusion_config(root / "config.yaml", vocoder_dir=root / "vocoder", unit_dim=UNIT_DIM, n_spk=n_spk)
    return write_diffusion_model(root / "model_100.pt", config, seed=n_spk), config


@pytest.fixture(scope="module", params=[1, 3], ids=["single", "mix3"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"onnx_diff_{request.param}")
    model_path, config_path = _files(root, request.param)
    result = export_diffusion_model(model_path, config_path, root / "out", "demo")
    model, _ = load_diffusion(model_path, config_path)
    runner = OnnxDiffusion.load(result.paths, threads=1)
    return request.param, model, result, runner


def test_four_graphs_match_the_reference_table(exported):
    import onnx

    n_spk, _, result, _ = exported
    assert [p.name for p in result.paths.values()] == [f"demo_{p}.onnx" for p in ("encoder", "denoise", "pred", "after")]
    io = {part: describe_inputs(path) for part, path in result.paths.items()}
    for part, path in result.paths.items():
        graph = check_graph(path)  # onnx.checker passes
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [16]
        for name, (kind, dims) in io[part].items():  # every dim is fixed or named by the exporter
            assert all((isinstance(d, int) and d > 0) or (isinstance(d, str) and d) for d in dims), (part, name)
    enc = io["encoder"]
    expected_inputs = ["hubert", "mel2ph", "f0", "volume"] + (["spk_mix"] if n_spk > 1 else [])
    assert list(enc) == expected_inputs + ["mel_pred"]
    assert enc["hubert"] == ("FLOAT", [1, "hubert_dynamic_axes_1", UNIT_DIM])  # the model's own unit width
    assert enc["mel2ph"] == ("INT64", [1, "mel2ph_dynamic_axes_1"])
    assert enc["f0"] == ("FLOAT", [1, "f0_dynamic_axes_1"])
    assert enc["volume"] == ("FLOAT", [1, "volume_dynamic_axes_1"])
    if n_spk > 1:
        assert enc["spk_mix"] == ("FLOAT", ["spk_mix_dynamic_axes_1", n_spk])
    kind, dims = enc["mel_pred"]
    assert kind == "FLOAT" and dims[1] == HIDDEN and isinstance(dims[2], str)
    den = io["denoise"]
    assert list(den) == ["noise", "time", "condition", "noise_pred"]
    assert den["noise"] == ("FLOAT", [1, 1, MELS, "noise_dynamic_axes_1"]) and den["time"] == ("INT64", [1])
    assert den["condition"] == ("FLOAT", [1, HIDDEN, "condition_dynamic_axes_1"])
    assert den["noise_pred"][0] == "FLOAT" and den["noise_pred"][1][:3] == [1, 1, MELS]
    pred = io["pred"]
    assert list(pred) == ["noise", "noise_pred", "time", "time_prev", "noise_pred_o"]
    assert pred["noise_pred"] == ("FLOAT", [1, 1, MELS, "noise_pred_dynamic_axes_1"])
    assert pred["time"] == pred["time_prev"] == ("INT64", [1])
    assert pred["noise_pred_o"][1][:3] == [1, 1, MELS]
    assert list(io["after"]) == ["x", "mel_out"]
    assert io["after"]["x"] == ("FLOAT", [1, 1, MELS, "x_dynamic_axes_1"])
    kind, dims = io["after"]["mel_out"]
    assert kind == "FLOAT" and dims[:2] == [1, MELS] and isinstance(dims[2], str)
    assert onnx.load(str(result.paths["pred"])).graph.initializer  # the schedule travels inside pred


def test_each_graph_equals_its_torch_module(exported):
    n_spk, model, _, runner = exported
    frames = 31  # not the 200-frame trace
    features = feature_inputs(model, frames, units=12, seed=3)
    t = {k: torch.from_numpy(v) for k, v in features.items()}
    # encoder: units repeated by the 1-based mel2ph, then Unit2Mel.condition
    units = torch.cat([torch.zeros(1, 1, UNIT_DIM), t["hubert"]], dim=1)[:, t["mel2ph"][0]]
    cond = runner.condition(features)
    assert cond.shape == (1, HIDDEN, frames)
    with torch.no_grad():
        if n_spk > 1:  # one speaker at full weight equals that speaker's id
            one_hot = np.zeros((frames, n_spk), np.float32)
            one_hot[:, 2] = 1.0
            got = runner.condition({**features, "spk_mix": one_hot})
            ref = model.condition(units, t["f0"][..., None], t["volume"][..., None], spk_id=torch.tensor([[2]]))
            np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-5)
            ref = model.condition(units, t["f0"][..., None], t["volume"][..., None],
                                  spk_mix=t["spk_mix"][None])
        else:
            ref = model.condition(units, t["f0"][..., None], t["volume"][..., None])
    np.testing.assert_allclose(cond, ref.numpy(), rtol=0, atol=1e-5)
    # denoise, pred, after
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 1, MELS, frames)).astype(np.float32)
    eps = rng.standard_normal((1, 1, MELS, frames)).astype(np.float32)
    decoder = model.decoder
    for step in (0, 417, 999):
        got = runner._run("denoise", {"noise": x, "time": np.array([step]), "condition": cond})
        with torch.no_grad():
            ref = decoder.denoise_fn(torch.from_numpy(x), torch.tensor([step]), torch.from_numpy(cond)).numpy()
        assert np.abs(ref).max() > 0.1
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    for step, prev in ((999, 989), (40, 0), (0, 0)):
        got = runner._run("pred", {"noise": x, "noise_pred": eps, "time": np.array([step]), "time_prev": np.array([prev])})
        ref = samplers.plms_step(torch.from_numpy(x), torch.from_numpy(eps), torch.tensor([step]), torch.tensor([prev]),
                                 decoder.alphas_cumprod).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(runner._run("pred", {"noise": x, "noise_pred": eps, "time": np.array([0]),
                                              "time_prev": np.array([0])}), x)  # no step: x unchanged
    mel = runner._run("after", {"x": x})
    np.testing.assert_allclose(mel, (x[:, 0] + 1) / 2 * 14.0 - 12.0, rtol=0, atol=1e-5)  # spec range [-12, 2]


def test_host_plms_loop_equals_unit2mel_pndm(exported):
    """The onnxruntime loop (encoder -> denoise/pred -> after) gives Unit2Mel's own only-diffusion pndm
    mel for the same noise, at two lengths other than the trace's."""
    n_spk, model, _, runner = exported
    for frames in (37, 90):
        features = feature_inputs(model, frames, seed=frames)
        spk = None
        if n_spk > 1:
            features["spk_mix"] = np.eye(n_spk, dtype=np.float32)[np.full(frames, 1)]
            spk = torch.tensor([[1]])
        torch.manual_seed(frames)
        noise = torch.randn(1, 1, MELS, frames).numpy()  # the draw GaussianDiffusion.sample makes first
        torch.manual_seed(frames)
        t = {k: torch.from_numpy(v) for k, v in features.items()}
        ref = model(t["hubert"][:, t["mel2ph"][0] - 1], t["f0"][..., None], t["volume"][..., None], spk_id=spk,
                    infer_speedup=100, method="pndm").transpose(1, 2).numpy()  # 10 PLMS steps from step 1000
        got = runner.mel(features, noise, k_step=1000, speedup=100)
        assert got.shape == ref.shape == (1, MELS, frames)
        assert np.max(np.abs(got - ref)) <= LIMIT * np.max(np.abs(ref))


def test_verify_runs_random_speaker_mixes_and_shallow_steps(exported):
    _, model, result, _ = exported
    for k_step, speedup in ((1000, 100), (100, 10)):
        checks = verify_diffusion(model, result.paths, k_step, speedup, lengths=(29, 75))
        assert [c.frames for c in checks] == [29, 75]
        for c in checks:
            assert c.peak > 1.0 and c.relative_error <= LIMIT, c
    # the comparison can fail: the torch reference on another stride is far from the graphs' loop
    runner = OnnxDiffusion.load(result.paths, threads=1)
    features = feature_inputs(model, 20, seed=0)
    noise = np.random.default_rng(0).standard_normal((1, 1, MELS, 20)).astype(np.float32)
    a = runner.mel(features, noise, 100, 10)
    b = torch_mel(model, features, noise, 100, 20)
    assert np.max(np.abs(a - b)) > 1e-2 * np.max(np.abs(b))


# ----------------------------------------------------------------------------------- CLI and errors


def test_cli_exports_next_to_the_name_and_passes_its_check(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model_path, _ = _files(tmp_path / "logs", 2)  # config.yaml sits next to the model
    assert onnx_export.main(["--diffusion", "-n", "demo", "-m", str(model_path), "-o", "out", "--check",
                             "--speedup", "100"]) == 0
    out = capsys.readouterr().out
    assert "check: PLMS from noise, k_step 1000, speedup 100" in out
    assert "check passed" in out and out.count("check T=") == 2
    assert sorted(p.name for p in (tmp_path / "out" / "demo").iterdir()) == [
        "demo_after.onnx", "demo_denoise.onnx", "demo_encoder.onnx", "demo_pred.onnx"]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert onnx_export.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    model_path, config_path = _files(tmp_path, 1)
    out = ["-o", str(tmp_path / "out")]
    err = _one_line_error(capsys, ["--diffusion", "-m", str(tmp_path / "missing.pt"), "-c", str(config_path)] + out)
    assert "missing.pt: diffusion model file not found" in err
    bad = tmp_path / "model_bad.pt"
    bad.write_bytes(b"not a zip archive at all" * 10)
    err = _one_line_error(capsys, ["--diffusion", "-m", str(bad), "-c", str(config_path)] + out)
    assert "model_bad.pt: not a checkpoint" in err
    err = _one_line_error(capsys, ["--diffusion", "-m", str(model_path), "-c", str(tmp_path / "nope.yaml")] + out)
    assert "nope.yaml: config file not found" in err
    assert "--diffusion needs -m" in _one_line_error(capsys, ["--diffusion"] + out)
    err = _one_line_error(capsys, ["--diffusion", "-m", str(model_path), "--k_step", "2000"] + out)
    assert "k_step 2000 must be between 1 and the model's k_step_max 1000" in err
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are valid


def test_a_config_of_another_width_names_the_mismatch(tmp_path):
    model_path, _ = _files(tmp_path, 1)
    other = write_diffusion_config(tmp_path / "other.yaml", vocoder_dir=tmp_path / "vocoder", unit_dim=24)
    with pytest.raises(CheckpointError, match="'unit_embed.weight' is \\[8, 16\\] in the file but \\[8, 24\\]"):
        load_diffusion(model_path, other)
    with pytest.raises(ConfigError, match="not found"):
        load_diffusion_config(tmp_path / "absent.yaml")
