"""modules.checkpoint: reference format, safe loading, tolerant-but-loud partial loads, pruning."""
from __future__ import annotations

import logging
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from models import SynthesizerTrn
from modules.checkpoint import clean_checkpoints, latest_checkpoint_path, load_checkpoint, safe_load, save_checkpoint
from modules.errors import CheckpointError

torch.set_num_threads(1)


def _small_model(n_speakers: int = 3, share: bool = False) -> SynthesizerTrn:
    """A few-thousand-parameter SynthesizerTrn with the default layout (fast to build and save)."""
    return SynthesizerTrn(
        spec_channels=33, segment_size=4, inter_channels=8, hidden_channels=8, filter_channels=16, n_heads=2,
        n_layers=1, kernel_size=3, p_dropout=0.0, resblock="1", resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[4, 2], upsample_initial_channel=16,
        upsample_kernel_sizes=[8, 4], gin_channels=4, ssl_dim=6, n_speakers=n_speakers,
        flow_share_parameter=share,
    )


def _adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), 1e-4, betas=(0.8, 0.99), eps=1e-9)


def _one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_save_writes_reference_format_and_round_trips_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = _small_model(share=True)
    opt = _adamw(model)
    _one_step(model, opt)
    path = tmp_path / "G_800.pth"
    save_checkpoint(model, opt, 1e-4, 7, path)
    raw = safe_load(path)
    assert set(raw) == {"model", "iteration", "optimizer", "learning_rate"}
    assert raw["iteration"] == 7 and raw["learning_rate"] == 1e-4
    assert list(raw["model"]) == list(model.state_dict())
    assert not any(k.startswith("module.") for k in raw["model"])
    assert raw["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file

    torch.manual_seed(1)
    fresh = _small_model(share=True)
    fresh_opt = _adamw(fresh)
    loaded = load_checkpoint(path, fresh, fresh_opt)
    model_out, opt_out, lr, iteration = loaded
    assert model_out is fresh and opt_out is fresh_opt and lr == 1e-4 and iteration == 7
    assert loaded.reinitialized == []
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    state_a, state_b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)


def test_module_prefix_is_stripped_on_load(tmp_path):
    model = _small_model()
    path = tmp_path / "G_1.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "iteration": 2,
                "optimizer": None, "learning_rate": 1e-4}, path)
    fresh = _small_model()
    loaded = load_checkpoint(path, fresh)
    assert loaded.reinitialized == []
    assert torch.equal(fresh.pre.weight, model.pre.weight)


def test_other_speaker_count_reinitialises_only_emb_g_and_warns(tmp_path, caplog):
    torch.manual_seed(0)
    pretrained = _small_model(n_speakers=5)
    path = tmp_path / "G_0.pth"
    save_checkpoint(pretrained, _adamw(pretrained), 1e-4, 0, path)
    torch.manual_seed(1)
    model = _small_model(n_speakers=2)
    fresh_emb = model.emb_g.weight.detach().clone()
    opt = _adamw(model)
    with caplog.at_level(logging.WARNING, logger="modules.checkpoint"):
        loaded = load_checkpoint(path, model, opt)
    assert loaded.reinitialized == ["emb_g.weight"]
    assert "emb_g.weight" in caplog.text and "[5, 4]" in caplog.text and "[2, 4]" in caplog.text
    assert "optimizer state not loaded" in caplog.text
    assert torch.equal(model.emb_g.weight, fresh_emb)
    assert torch.equal(model.dec.conv_pre.weight_v, pretrained.dec.conv_pre.weight_v)


def test_fp16_file_loads_into_fp32_model(tmp_path):
    torch.manual_seed(0)
    source = _small_model()
    half_state = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()
                  if "enc_q" not in k}  # what compress_model.py -hf writes
    path = tmp_path / "G_half.pth"
    torch.save({"model": half_state, "iteration": 0, "optimizer": None, "learning_rate": 0.0001}, path)
    model = _small_model()
    loaded = load_checkpoint(path, model)
    assert model.pre.weight.dtype == torch.float32
    assert torch.equal(model.pre.weight, source.pre.weight.half().float())
    assert loaded.reinitialized and all(k.startswith("enc_q.") for k in loaded.reinitialized)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "G_666.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "iteration": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="G_666.pth.*refused"):
        safe_load(path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, _small_model())
    assert not marker.exists()

    raw_pickle = tmp_path / "D_1.pth"
    raw_pickle.write_bytes(pickle.dumps({"model": _Exploit(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="D_1.pth"):
        safe_load(raw_pickle)
    assert not marker.exists()


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth: checkpoint file not found"):
        safe_load(tmp_path / "nothere.pth")
    bad = tmp_path / "G_5.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="G_5.pth"):
        safe_load(bad)
    no_model = tmp_path / "G_6.pth"
    torch.save({"iteration": 1}, no_model)
    with pytest.raises(CheckpointError, match="no 'model'"):
        load_checkpoint(no_model, _small_model())


def _touch(path: Path, mtime: float) -> None:
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_latest_checkpoint_uses_step_number(tmp_path):
    assert latest_checkpoint_path(tmp_path) is None
    now = time.time()
    for step, age in ((0, 0), (800, 10), (1600, 20), (12000, 30)):
        _touch(tmp_path / f"G_{step}.pth", now - age)
    _touch(tmp_path / "D_9999.pth", now)
    assert Path(latest_checkpoint_path(tmp_path)).name == "G_12000.pth"
    assert Path(latest_checkpoint_path(tmp_path, "D_*.pth")).name == "D_9999.pth"


def test_clean_checkpoints_keeps_newest_and_never_step_zero(tmp_path):
    now = time.time()
    steps = [0, 800, 1600, 2400, 3200]
    for i, step in enumerate(steps):
        _touch(tmp_path / f"G_{step}.pth", now - 100 + i)
        _touch(tmp_path / f"D_{step}.pth", now - 100 + i)
    _touch(tmp_path / "G_0.pth", now - 1000)  # oldest of all, still kept
    (tmp_path / "train.log").write_text("log")
    deleted = clean_checkpoints(tmp_path, keep=2)
    assert sorted(Path(p).name for p in deleted) == ["D_1600.pth", "D_800.pth", "G_1600.pth", "G_800.pth"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["D_0.pth", "D_2400.pth", "D_3200.pth", "G_0.pth", "G_2400.pth", "G_3200.pth", "train.log"]
    assert clean_checkpoints(tmp_path, keep=0) == []
    assert len(list(tmp_path.iterdir())) == 7
