"""Release compression and static model mixing."""
from __future__ import annotations

import math

import pytest
import torch

import compress_model
import mix_models
from modules import model_mix
from modules.errors import CheckpointError, ConfigError
from modules.inference import SvcEngine
from modules.model_mix import mix_state_dicts, mix_weights
from tests.support.tiny_models import random_generator, write_generator, write_tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return write_tiny_project(tmp_path_factory.mktemp("h6tools"))


def test_mix_weights_per_mode():
    convex = mix_weights([100, 0], "convex")  # the original's softmax quirk: not 1/0
    assert convex == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)])
    assert mix_weights([70, 30], "exact") == pytest.approx([0.7, 0.3])
    assert mix_weights([70, 30], "linear") == pytest.approx([0.7, 0.3])
    assert mix_weights([100, 100], "linear") == pytest.approx([1.0, 1.0])
    with pytest.raises(ConfigError, match="unknown mix mode"):
        mix_weights([1, 2], "average")
    with pytest.raises(ConfigError, match="positive sum"):
        mix_weights([0, 0], "exact")


def test_mix_state_dicts_values_and_errors():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([9])}
    mixed = mix_state_dicts([a, b], [0.25, 0.75])
    torch.testing.assert_close(mixed["w"], torch.tensor([2.5, 5.0]))
    assert torch.equal(mixed["n"], a["n"])  # integer tensors are the first model's
    with pytest.raises(CheckpointError, match=r"b\.pth: 'w' has shape \[3\]"):
        mix_state_dicts([a, {"w": torch.zeros(3)}], [0.5, 0.5], ["a.pth", "b.pth"])
    with pytest.raises(CheckpointError, match="has no tensor 'w'"):
        mix_state_dicts([a, {}], [0.5, 0.5])


@pytest.mark.parametrize("mode", ["convex", "exact"])
def test_mixing_identical_checkpoints_returns_the_same_weights(project, tmp_path, mode):
    out = tmp_path / "mixed.pth"
    assert mix_models.main(["-i", str(project.model), str(project.model), "-r", "100", "100",
                             "-m", mode, "-o", str(out)]) == 0
    original = torch.load(project.model, weights_only=True)
    mixed = torch.load(out, weights_only=True)
    assert mixed["iteration"] == original["iteration"] and mixed.keys() == original.keys()
    assert mixed["model"].keys() == original["model"].keys()
    for key, value in original["model"].items():
        assert torch.equal(mixed["model"][key], value), key


def test_mix_two_models_is_the_weighted_sum(project, tmp_path):
    other = write_generator(tmp_path / "G_2.pth", random_generator(project.hps, seed=5), with_optimizer=False)
    out = model_mix.mix_checkpoints([project.model, other], [30, 10], "exact", tmp_path / "m.pth")
    a = torch.load(project.model, weights_only=True)["model"]
    b = torch.load(other, weights_only=True)["model"]
    m = torch.load(out, weights_only=True)["model"]
    key = "emb_g.weight"
    torch.testing.assert_close(m[key], 0.75 * a[key] + 0.25 * b[key])
    assert mix_models.main(["-i", str(project.model), "-r", "1", "-o", str(tmp_path / "x.pth")]) == 2


def test_compress_round_trip(project, tmp_path, capsys):
    assert compress_model.main(["-c", str(project.config), "-i", str(project.model), "-hf"]) == 0
    release = project.model.with_name("G_1_release_half.pth")
    assert str(release) in capsys.readouterr().out
    data = torch.load(release, weights_only=True)
    full = torch.load(project.model, weights_only=True)["model"]
    assert set(data) == {"model", "iteration", "optimizer", "learning_rate"}
    assert data["iteration"] == 0 and data["learning_rate"] == 0.0001
    assert set(data["model"]) == {k for k in full if "enc_q" not in k}
    assert any("enc_q" in k for k in full)
    assert all(v.dtype == torch.float16 for v in data["model"].values() if v.is_floating_point())
    assert data["optimizer"]["state"] == {}
    n_params = len(data["optimizer"]["param_groups"][0]["params"])
    assert n_params == len(list(random_generator(project.hps).parameters()))
    # fp32 release keeps the exact values
    out32 = tmp_path / "rel.pth"
    assert compress_model.main(["-c", str(project.config), "-i", str(project.model), "-o", str(out32)]) == 0
    rel32 = torch.load(out32, weights_only=True)["model"]
    assert all(torch.equal(rel32[k], full[k]) for k in rel32)
    # our engine loads the release strictly (only enc_q may be absent) and gives the full model's output
    full_engine = SvcEngine.load(project.model, project.config, device="cpu")
    engine = SvcEngine.load(out32, project.config, device="cpu")
    for key, value in full_engine.model.state_dict().items():
        if "enc_q" not in key:
            assert torch.equal(engine.model.state_dict()[key], value), key
    half_engine = SvcEngine.load(release, project.config, device="cpu")
    assert next(half_engine.model.parameters()).dtype == torch.float32


def test_compress_errors_name_the_file(project, tmp_path, capsys):
    bogus = tmp_path / "bogus.pth"
    torch.save({"weights": 1}, bogus)
    assert compress_model.main(["-c", str(project.config), "-i", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "bogus.pth: not a G checkpoint" in err
