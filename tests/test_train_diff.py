"""train_diff.py on the synthetic singers: loss goes down, saving/pruning/resume rules, NaN and bad-data handling."""
from __future__ import annotations

import math
import random
import signal
from pathlib import Path

import pytest
import torch
import yaml

import train_diff
from diffusion.train import DiffTrainOptions, DiffusionTrainer, find_latest
from modules.config import load_diffusion_config
from modules.errors import DatasetError, JobInterrupted, TrainingError
from tests.support.diffusion_models import make_diffusion_project

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return make_diffusion_project(tmp_path_factory.mktemp("dtrain"))


def test_a_tiny_model_lowers_its_validation_loss(config):
    random.seed(0)  # crop positions
    torch.manual_seed(0)
    trainer = DiffusionTrainer(load_diffusion_config(config), DiffTrainOptions(device="cpu", progress=False,
                                                                               max_steps=300, val_audio=False))
    trainer.expdir = config.parent / "unused"
    trainer.expdir.mkdir()
    trainer.args.train.interval_val = 10_000
    trainer.resume()
    trainer.build_data()
    before = trainer.validation_loss()
    assert trainer.validation_loss() == before  # fixed noise: comparable values
    trainer.fit()
    after = trainer.validation_loss()
    assert trainer.global_step == 300
    assert after < 0.92 * before, (before, after)  # measured: 1.011 -> 0.874


def test_cli_saves_prunes_and_resumes(config):
    expdir = Path(load_diffusion_config(config).env.expdir)
    assert train_diff.main(["-c", str(config), "--device", "cpu", "--max_steps", "120", "--no_progress"]) == 0
    names = sorted(p.name for p in expdir.glob("model_*.pt"))
    # interval_val 50, force-save 100: model_50 pruned after model_100 was written; Ctrl-C/max_steps saves 120
    assert names == ["model_100.pt", "model_120.pt"]
    assert (expdir / "log_info.txt").is_file() and any((expdir / "logs").iterdir())
    assert yaml.safe_load((expdir / "config.yaml").read_text())["model"]["n_chans"] == 32  # the full config
    ckpt = torch.load(expdir / "model_120.pt", weights_only=True)
    assert ckpt["global_step"] == 120 and set(ckpt) == {"global_step", "model"}  # save_opt false
    assert find_latest(expdir)[1] == 120
    assert train_diff.main(["-c", str(config), "--device", "cpu", "--max_steps", "160", "--no_progress",
                            "--no_val_audio"]) == 0
    names = sorted(p.name for p in expdir.glob("model_*.pt"))
    assert names == ["model_100.pt", "model_120.pt", "model_150.pt", "model_160.pt"]
    log = (expdir / "log_info.txt").read_text()
    assert "step 130: loss" in log and "validation --- step 150" in log


def test_pretrained_model_0_with_other_speaker_count_is_picked_up(config, tmp_path):
    args = load_diffusion_config(config)
    args.env.expdir = str(tmp_path / "exp")
    other = load_diffusion_config(config)
    other.model.n_spk = 5
    from diffusion.unit2mel import Unit2Mel

    (tmp_path / "exp").mkdir()
    pre = Unit2Mel.from_config(other)
    torch.save({"global_step": 0, "model": pre.state_dict()}, tmp_path / "exp" / "model_0.pt")
    trainer = DiffusionTrainer(args, DiffTrainOptions(device="cpu", progress=False))
    assert trainer.resume() == 0
    w = trainer.model.decoder.denoise_fn.residual_layers[0].dilated_conv.weight
    torch.testing.assert_close(w, pre.decoder.denoise_fn.residual_layers[0].dilated_conv.weight)
    assert trainer.model.spk_embed.weight.shape == (2, 8)  # kept its own initialisation


def test_nan_steps_are_skipped_then_stop_naming_the_clips(config, tmp_path):
    args = load_diffusion_config(config)
    args.env.expdir = str(tmp_path / "exp")
    trainer = DiffusionTrainer(args, DiffTrainOptions(device="cpu", progress=False, max_nan_steps=2))
    trainer.resume()
    trainer.build_data()
    batch = next(iter(trainer.loader))
    batch["mel"][0, 0, 0] = math.nan
    before = [p.clone() for p in trainer.model.parameters()]
    assert trainer.train_step(batch) is None
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # not applied
    with pytest.raises(TrainingError, match=batch["name"][0]):
        trainer.train_step(batch)


def test_missing_feature_file_names_the_clip(config, tmp_path):
    args = load_diffusion_config(config)
    wav = Path(args.data.training_files and open(args.data.training_files).read().split()[0])
    moved = tmp_path / "moved.npy"
    Path(f"{wav}.mel.npy").rename(moved)
    try:
        with pytest.raises(DatasetError, match=f"{wav.name}.*mel.npy"):
            DiffusionTrainer(args, DiffTrainOptions(device="cpu", progress=False)).build_data()
    finally:
        moved.rename(Path(f"{wav}.mel.npy"))


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        train_diff.main(["--help"])
    assert "--max_steps" in capsys.readouterr().out


def test_sigterm_saves_then_exits_143(config, tmp_path, capsys):
    args = load_diffusion_config(config)
    trainer = DiffusionTrainer(args, DiffTrainOptions(device="cpu", progress=False, max_steps=50, val_audio=False))
    trainer.expdir = tmp_path / "exp"
    trainer.expdir.mkdir()
    trainer.args.train.interval_val = 10_000
    trainer.resume()
    trainer.build_data()
    real_step = trainer.train_step

    def step_then_signal(batch):
        value = real_step(batch)
        if trainer.global_step == 3:
            signal.raise_signal(signal.SIGTERM)
        return value

    trainer.train_step = step_then_signal
    with pytest.raises(JobInterrupted, match=r"diffusion training at step 3 stopped by SIGTERM") as e:
        trainer.fit()
    assert e.value.exit_code == 143
    assert (trainer.expdir / "model_3.pt").is_file()
