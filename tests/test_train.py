"""Training: data loading and checks, losses, the loop (learning, resume, Ctrl-C, NaN), DDP.

Everything runs on the CPU with a narrow generator (tests/support/train_data.SMALL_MODEL) and a
narrow discriminator (TinyMultiPeriodDiscriminator), on a two-speaker synthetic dataset.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modules import losses
from modules.checkpoint import safe_load
from modules.config import load_config
from modules.data import ClipDataset, collate_clips, make_loader, read_f0_file
from modules.dataset_files import ClipFiles
from modules.errors import DatasetError, JobInterrupted, TrainingError
from modules.fingerprint import training_expectation, write_record
from modules.training import Precision, Trainer, TrainOptions, run_training
from tests.support.train_data import make_preprocessed_dataset, tiny_discriminator

ROOT = Path(__file__).resolve().parent.parent

TEST_TRAIN = {"learning_rate": 2e-3, "eval_interval": 1000, "log_interval": 1000, "batch_size": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 speakers x 3 clips of ~1.5 s: 4 training clips (2 steps per epoch), 2 validation clips."""
    root = tmp_path_factory.mktemp("train_ds")
    config, train_list, val_list = make_preprocessed_dataset(
        root, clips_per_speaker=3, seconds=1.5, config_overrides={"train": TEST_TRAIN},
    )
    return config, train_list, val_list


def _hps(config: Path, **train):
    hps = load_config(config)
    for key, value in train.items():
        hps.train[key] = value
    return hps


def _options(**kw) -> TrainOptions:
    base = dict(device="cpu", num_workers=0, tensorboard=False, progress=False)
    base.update(kw)
    return TrainOptions(**base)


def _trainer(config: Path, model_dir: Path, callback=None, options: TrainOptions | None = None, **train) -> Trainer:
    return Trainer(_hps(config, **train), model_dir, options=options or _options(), step_callback=callback,
                   discriminator_factory=tiny_discriminator)


# --------------------------------------------------------------------------------------------- data


def test_dataset_items_are_aligned_and_collated(dataset):
    config, train_list, _ = dataset
    hps = _hps(config)
    hps.model.vol_embedding = True
    ds = ClipDataset(train_list, hps)
    assert len(ds) == 4
    item = ds[0]
    t = item.frames
    assert item.units.shape == (256, t) and item.f0.shape == (t,) and item.uv.shape == (t,)
    assert item.spec.shape == (1025, t) and item.audio.shape == (1, t * 512) and item.vol.shape == (t,)
    assert set(np.unique(item.uv.numpy())) <= {0.0, 1.0}
    assert float(item.f0.min()) > 50.0  # interpolated through unvoiced frames
    batch = collate_clips([ds[i] for i in range(4)])
    assert batch.lengths.tolist() == sorted(batch.lengths.tolist(), reverse=True)
    assert batch.spec.shape == (4, 1025, int(batch.lengths[0])) and batch.audio.shape[-1] == 512 * int(batch.lengths[0])
    assert sorted(batch.speaker[:, 0].tolist()) == [0, 0, 1, 1]  # alto=0, bass=1 (sorted names)
    short = int(batch.lengths.argmin())
    assert float(batch.spec[short, :, int(batch.lengths[short]):].abs().sum()) == 0.0  # zero padding


def test_f0_reader_reads_object_arrays_and_refuses_code(dataset, tmp_path):
    _, train_list, _ = dataset
    wav = Path(train_list.read_text().split()[0])
    f0, uv = read_f0_file(f"{wav}.f0.npy")
    assert f0.dtype == np.float32 and f0.shape == uv.shape and f0.min() > 50.0

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = np.empty((2, 3), dtype=object)
    evil[0, 0] = Evil()
    path = tmp_path / "evil.wav.f0.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, evil, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"evil\.wav\.f0\.npy: not a valid f0 file.*'posix.system' is not allowed"):
        read_f0_file(path)


def _copy_clip(src_wav: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src in src_wav.parent.glob(src_wav.stem + ".*"):
        shutil.copy(src, dst_dir / src.name)
    return dst_dir / src_wav.name


def test_length_mismatch_names_the_clip(dataset, tmp_path):
    config, train_list, _ = dataset
    wav = _copy_clip(Path(train_list.read_text().split()[0]), tmp_path / "alto")
    spec = torch.load(wav.with_suffix(".spec.pt"), weights_only=True)
    torch.save(spec[:, :-5], wav.with_suffix(".spec.pt"))
    ds = ClipDataset([wav], _hps(config))
    with pytest.raises(DatasetError, match=rf"{wav.name}: inconsistent feature lengths.*spec {spec.size(1) - 5}"):
        ds[0]


def test_missing_features_and_unknown_speaker_are_reported(dataset, tmp_path):
    config, train_list, _ = dataset
    settings = _hps(config)
    wav = _copy_clip(Path(train_list.read_text().split()[0]), tmp_path / "alto")
    Path(f"{wav}.soft.pt").unlink()
    with pytest.raises(DatasetError, match=r"(?s)1 feature file\(s\) missing.*alto_\d+\.wav\.soft\.pt"):
        ClipDataset([wav], settings)
    stranger = _copy_clip(Path(train_list.read_text().split()[0]), tmp_path / "tenor")
    with pytest.raises(DatasetError, match=r"speaker folder 'tenor' is not in the config's 'spk' map"):
        ClipDataset([stranger], settings)


def test_features_that_do_not_fit_the_config_are_refused_at_start_up(dataset, tmp_path):
    config, train_list, _ = dataset
    hps = _hps(config)
    wav = _copy_clip(Path(train_list.read_text().split()[0]), tmp_path / "alto")
    # a clip with a record made for another encoder width: refused before any worker starts, naming the field
    write_record(wav, {**training_expectation(hps), "ssl_dim": hps.model.ssl_dim + 1})
    with pytest.raises(DatasetError, match=rf"alto_\d+\.wav: its features do not fit the config \(ssl_dim: "
                                           rf"{hps.model.ssl_dim + 1} -> {hps.model.ssl_dim}\)"):
        ClipDataset([wav], hps)
    write_record(wav, training_expectation(hps))
    assert len(ClipDataset([wav], hps)) == 1
    # no record (so-vits-svc 4.1's features): the unit width is read and checked at start-up
    ClipFiles(wav).record.unlink()
    units = torch.load(ClipFiles(wav).units, weights_only=True)
    torch.save(units[:, :-1], ClipFiles(wav).units)
    with pytest.raises(DatasetError, match=rf"soft\.pt: units are {hps.model.ssl_dim - 1} wide but the config's "
                                           rf"model\.ssl_dim is {hps.model.ssl_dim}"):
        ClipDataset([wav], hps)


def test_a_loader_worker_error_reaches_the_user_as_its_own_line():
    from torch._utils import ExceptionWrapper

    from modules.training import _worker_message

    try:
        raise DatasetError("/data/alto_1.wav: inconsistent feature lengths")
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as e:
        wrapped.reraise()
    assert "Traceback" in str(e.value)
    assert _worker_message(e.value) == "/data/alto_1.wav: inconsistent feature lengths"


def test_distributed_sampler_gives_ranks_disjoint_data(dataset):
    config, train_list, _ = dataset
    ds = ClipDataset(train_list, _hps(config))
    seen = []
    for rank in range(2):
        loader, sampler = make_loader(ds, batch_size=1, rank=rank, world_size=2, seed=3)
        sampler.set_epoch(5)
        seen.append({name for batch in loader for name in batch.names})
    assert len(seen[0]) == len(seen[1]) == 2
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 4


# --------------------------------------------------------------------------------------------- losses


def test_losses_match_their_definitions():
    real, fake = [torch.full((2, 3), 0.5)], [torch.full((2, 3), 0.25)]
    total, _, _ = losses.discriminator_loss(real, fake)
    assert math.isclose(float(total), 0.25 + 0.0625)
    gen, _ = losses.generator_loss(fake)
    assert math.isclose(float(gen), 0.5625)
    fm = losses.feature_loss([[torch.ones(2, 2)]], [[torch.zeros(2, 2)]])
    assert math.isclose(float(fm), 2.0)
    z = torch.zeros(1, 2, 4)
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    # logs = 0 and z_p = m_p: -0.5 per element, summed over the 2 channels, averaged over the 2 valid frames
    # (the mask is [B, 1, T], as in the original), so -1.0; with z_p - m_p = 2: -0.5 + 2 = 1.5 per element.
    assert math.isclose(float(losses.kl_loss(z, z, z, z, mask)), -1.0)
    assert math.isclose(float(losses.kl_loss(z + 2.0, z, z, z, mask)), 3.0)


def test_precision_follows_config(dataset):
    config, _, _ = dataset
    assert Precision.resolve(_hps(config)) == Precision(None, False)
    assert Precision.resolve(_hps(config, fp16_run=True, half_type="bf16")) == Precision(torch.bfloat16, False)
    assert Precision.resolve(_hps(config, fp16_run=True, half_type="fp16")) == Precision(torch.float16, True)
    assert Precision.resolve(_hps(config), "bf16").name == "bf16"


# --------------------------------------------------------------------------------------------- loop


def test_the_options_device_is_used_without_a_distributed_context(dataset, tmp_path, monkeypatch):
    import modules.training as training

    asked = []
    monkeypatch.setattr(training, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    trainer = _trainer(dataset[0], tmp_path / "m", options=_options(device="cpu"))
    assert asked == ["cpu"]  # not "auto": on a CUDA machine that would put the models on the GPU
    assert trainer.device == torch.device("cpu")


def test_training_reduces_mel_loss(dataset, tmp_path):
    config, _, _ = dataset
    mel: list[float] = []
    trainer = _trainer(config, tmp_path / "m", lambda tr, r: mel.append(r.losses["g/mel_l1"]),
                       _options(max_steps=52, save_on_stop=False))
    assert trainer.fit() == 52
    first, last = float(np.mean(mel[:5])), float(np.mean(mel[-10:]))
    assert len(mel) == 52 and all(math.isfinite(v) for v in mel)
    assert last < 0.75 * first, f"mel L1 went from {first:.3f} to {last:.3f}"
    # Step 0 is always an eval/save step (as the original); iteration is the epoch, lr the initial one.
    ckpt = safe_load(tmp_path / "m" / "G_0.pth")
    assert ckpt["iteration"] == 1 and ckpt["learning_rate"] == pytest.approx(2e-3)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert trainer.epoch == 26  # 4 clips, batch 2: 2 steps per epoch
    assert trainer.optim_g.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.999875 ** 25)


def test_resume_continues_step_epoch_and_optimizer(dataset, tmp_path):
    config, _, _ = dataset
    model_dir = tmp_path / "m"

    def kill_at_6(trainer, result):
        if result.step == 6:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        _trainer(config, model_dir, kill_at_6, eval_interval=4).fit()
    assert sorted(p.name for p in model_dir.glob("*.pth")) == ["D_0.pth", "D_4.pth", "G_0.pth", "G_4.pth"]
    saved = safe_load(model_dir / "G_4.pth")
    assert saved["iteration"] == 3  # step 4 is the first step of epoch 3

    resumed = _trainer(config, model_dir, options=_options(max_steps=8), eval_interval=4)
    assert (resumed.global_step, resumed.epoch) == (5, 3)
    state = resumed.optim_g.state_dict()["state"]
    assert set(state) == set(saved["optimizer"]["state"])
    for index, moments in saved["optimizer"]["state"].items():
        assert float(state[index]["step"]) == float(moments["step"]) == 5.0  # steps 0..4
        assert torch.equal(state[index]["exp_avg"], moments["exp_avg"])
    for name, value in resumed.net_g.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name
    assert resumed.fit() == 8
    assert (model_dir / "G_7.pth").exists() and float(
        safe_load(model_dir / "G_7.pth")["optimizer"]["state"][0]["step"]) == 8.0


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_reports_the_stop(dataset, tmp_path, sig, code):
    config, _, _ = dataset

    def interrupt(trainer, result):
        if result.step == 2:
            signal.raise_signal(sig)

    previous = signal.getsignal(sig)
    trainer = _trainer(config, tmp_path / "m", interrupt, eval_interval=100)
    with pytest.raises(JobInterrupted, match=f"training at step 3 stopped by {sig.name} .saved step 2 in .*run the same") as e:
        trainer.fit()
    assert e.value.exit_code == code  # a stopped job never looks finished to a script or the quick-start
    assert (tmp_path / "m" / "G_2.pth").exists() and (tmp_path / "m" / "D_2.pth").exists()
    assert signal.getsignal(sig) is previous  # handler restored


def test_nan_loss_skips_the_step_then_stops(dataset, tmp_path, monkeypatch):
    config, _, _ = dataset
    real_kl = losses.kl_loss
    calls = {"n": 0, "nan_from": 1, "nan_to": 1}

    def flaky_kl(*args):
        calls["n"] += 1
        value = real_kl(*args)
        return value * float("nan") if calls["nan_from"] <= calls["n"] <= calls["nan_to"] else value

    monkeypatch.setattr(losses, "kl_loss", flaky_kl)
    results = []
    trainer = _trainer(config, tmp_path / "a", lambda tr, r: results.append(r),
                       _options(max_steps=4, save_on_stop=False), eval_interval=100)
    trainer.fit()
    assert [r.skipped for r in results] == [True, False, False, False]
    assert trainer.nan_streak == 0 and all(torch.isfinite(p).all() for p in trainer.net_g.parameters())

    calls.update(n=0, nan_from=3, nan_to=10**9)
    trainer = _trainer(config, tmp_path / "b", options=_options(max_nan_steps=3), eval_interval=100)
    with pytest.raises(TrainingError, match=r"3 consecutive steps had NaN/Inf losses.*Last good checkpoint: G_0\.pth"):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "b").glob("G_*.pth")) == ["G_0.pth"]

    with torch.no_grad():
        next(trainer.net_g.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="refusing to write a broken checkpoint"):
        trainer.save(99)
    assert not (tmp_path / "b" / "G_99.pth").exists()


@pytest.mark.parametrize("half_type", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(dataset, tmp_path, half_type):
    config, _, _ = dataset
    results = []
    trainer = _trainer(config, tmp_path / "m", lambda tr, r: results.append(r),
                       _options(max_steps=2, save_on_stop=False), fp16_run=True, half_type=half_type,
                       eval_interval=100)
    trainer.fit()
    assert trainer.precision.name == half_type and trainer.scaler.is_enabled() == (half_type == "fp16")
    assert len(results) == 2 and all(math.isfinite(v) for r in results for v in r.losses.values())


def test_run_training_copies_config_and_writes_log(dataset, tmp_path):
    config, _, _ = dataset
    next_step = run_training(config, tmp_path / "logs" / "44k", _options(max_steps=1),
                             discriminator_factory=tiny_discriminator)
    model_dir = tmp_path / "logs" / "44k"
    assert next_step == 1
    assert (model_dir / "config.json").read_bytes() == Path(config).read_bytes()
    log = (model_dir / "train.log").read_text()
    assert "training from scratch" in log and "saved G_0.pth and D_0.pth (epoch 1)" in log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(dataset, tmp_path):
    config, _, _ = dataset
    model_dir = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "tests.support.train_data", "-c", str(config), "-m", str(model_dir), "--device", "cpu",
           "--max_steps", "2", "--num_workers", "0", "--no_progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (model_dir / "train.log").read_text()
    assert "2 process(es)" in log and "4 training clips (2 per rank)" in log
    assert sorted(p.name for p in model_dir.glob("G_*.pth")) == ["G_0.pth", "G_1.pth"]
    ckpt = safe_load(model_dir / "G_1.pth")
    assert not any(k.startswith("module.") for k in ckpt["model"]) and ckpt["iteration"] == 2  # 1 step per epoch per rank
