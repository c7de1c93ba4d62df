"""preprocess_hubert_f0.py: the original's files and formats, resumability, per-clip failures,
missing pretrained files, the safe .npy reader and a multi-process run."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import preprocess_hubert_f0
import vencoder.base
from modules.audio import load_audio, resample
from modules.config import load_diffusion_template, load_template, save_config, save_diffusion_config
from modules.dataset_files import ClipFiles
from modules.errors import UnsafeCheckpointError
from modules.frame_features import nsf_mel, spectrogram, volume
from modules.npy_files import load_aug_mel, load_f0, load_npy, save_f0
from modules.synthetic_voices import synth_singing, write_dataset
from vencoder import clear_cache, get_speech_encoder
from vencoder.fairseq_writer import write_fairseq_hubert

UNIT_DIM = 16  # final_dim of the small fake checkpoint (vec256l9 -> final_proj)


def _make_project(root: Path, speakers: dict[str, int], vol_embedding: bool = False) -> dict[str, Path]:
    pretrain = root / "pretrain"
    write_fairseq_hubert(pretrain / "checkpoint_best_legacy_500.pt", seed=0)
    (pretrain / "nsf_hifigan").mkdir(parents=True)
    (pretrain / "nsf_hifigan" / "config.json").write_text(json.dumps({
        "sampling_rate": 44100, "num_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_size": 512,
        "fmin": 40, "fmax": 16000}))
    cfg = load_template()
    cfg["model"]["speech_encoder"] = "vec256l9"
    cfg["model"]["ssl_dim"] = cfg["model"]["gin_channels"] = 16  # the test encoder's final_proj width
    cfg["model"]["vol_embedding"] = vol_embedding
    save_config(cfg, root / "configs" / "config.json")
    dcfg = load_diffusion_template()
    dcfg["vocoder"]["ckpt"] = str(pretrain / "nsf_hifigan" / "model")
    dcfg["data"]["encoder"] = "vec256l9"
    save_diffusion_config(dcfg, root / "configs" / "diffusion.yaml")
    write_dataset(root / "dataset", speakers, seconds=1.0, seed=3)
    return {"pretrain": pretrain, "config": root / "configs" / "config.json",
            "diffusion": root / "configs" / "diffusion.yaml", "data": root / "dataset"}


def _ground_truth(wav: Path):
    """Regenerate the synthetic voice of a clip written by `write_dataset(seed=3)` (exact per-frame F0)."""
    names = sorted(p.name for p in wav.parent.parent.iterdir() if p.is_dir())
    index = int(wav.stem.rsplit("_", 1)[1])
    return synth_singing(wav.parent.name, 1.0, seed=3 * 1000 + names.index(wav.parent.name) * 100 + index)


def _cli(project: dict[str, Path], *extra: str) -> int:
    return preprocess_hubert_f0.main([
        "--in_dir", str(project["data"]), "--config", str(project["config"]),
        "--diffusion_config", str(project["diffusion"]), "--f0_predictor", "pm", "-d", "cpu", *extra])


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(vencoder.base, "DEFAULT_PRETRAIN_DIR", tmp_path / "pretrain")
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def project(tmp_path) -> dict[str, Path]:
    return _make_project(tmp_path, {"alto": 2, "bass": 1})


def test_cli_writes_the_original_files(project, capsys):
    assert _cli(project, "--use_diff") == 0
    assert "3 clips processed" in capsys.readouterr().out
    wavs = sorted(project["data"].glob("*/*.wav"))
    assert len(wavs) == 3
    for wav in wavs:
        audio, sr = load_audio(wav, 44100)
        t = len(audio) // 512
        files = ClipFiles(wav)
        assert files.spec == wav.parent / (wav.stem + ".spec.pt")

        units = torch.load(files.units, weights_only=True)
        n16 = len(resample(audio, 44100, 16000))
        assert units.dtype == torch.float32 and units.shape == (1, UNIT_DIM, (n16 - 400) // 320 + 1)

        raw = np.load(files.f0, allow_pickle=True)  # the original's own reader
        assert raw.dtype == object and raw.shape == (2, t) and type(raw[0, 0]) is float
        assert b"numpy.core.multiarray\n_reconstruct" in files.f0.read_bytes()  # loadable by numpy 1.23
        f0, uv = load_f0(files.f0)
        assert set(np.unique(uv)) <= {0.0, 1.0} and uv.mean() > 0.2
        assert np.all(f0 > 0)  # interpolated: never 0 inside the clip
        truth = _ground_truth(wav)
        both = (uv > 0) & truth.voiced[:t] & truth.stable[:t]
        cents = 1200 * np.abs(np.log2(f0[both] / truth.f0[:t][both]))
        assert both.sum() > 10 and np.median(cents) < 50  # row 0 is the f0 of this clip, frame-aligned

        spec = torch.load(files.spec, weights_only=True)
        assert spec.shape == (1025, t)
        torch.testing.assert_close(spec, spectrogram(torch.from_numpy(audio)), atol=1e-5, rtol=1e-5)

        vol = np.load(files.vol)
        assert vol.dtype == np.float32 and vol.shape == (t,)
        np.testing.assert_allclose(vol, volume(audio).numpy(), rtol=1e-5, atol=1e-7)
        mel = np.load(files.mel)
        assert mel.dtype == np.float32 and mel.shape == (t, 128)
        np.testing.assert_allclose(mel, nsf_mel(torch.from_numpy(audio)).T.numpy(), atol=1e-4)

        aug_raw = np.load(files.aug_mel, allow_pickle=True)
        assert aug_raw.shape == (2,) and type(aug_raw[1]) is float
        aug_mel, keyshift = load_aug_mel(files.aug_mel)
        aug_vol = np.load(files.aug_vol)
        assert aug_mel.shape == (t, 128) and aug_vol.shape == (t,) and -5 <= keyshift <= 5
        loud = vol > 1e-3
        ratio = aug_vol[loud] / vol[loud]
        assert np.ptp(ratio) < 1e-3 * ratio.mean()  # one volume factor for the whole clip
        scale = float(np.median(ratio))
        assert 0.1 - 1e-6 <= scale <= 10 ** min(1.0, np.log10(1 / (np.abs(audio).max() + 1e-5))) + 1e-6
        expected = nsf_mel(torch.from_numpy(audio) * scale, keyshift=keyshift).T.numpy()
        np.testing.assert_allclose(aug_mel, expected, atol=2e-3)


def test_two_processes_then_rerun_skips_done_clips_and_redoes_missing_files(project, capsys):
    assert _cli(project, "--num_processes", "2") == 0  # spawned workers
    assert "3 clips processed" in capsys.readouterr().out
    wav = sorted(project["data"].glob("alto/*.wav"))[0]
    files = ClipFiles(wav)
    audio, _ = load_audio(wav, 44100)
    encoder = get_speech_encoder("vec256l9", pretrain_dir=project["pretrain"])
    expected = encoder.encode(torch.from_numpy(resample(audio, 44100, 16000)))
    torch.testing.assert_close(torch.load(files.units, weights_only=True), expected, atol=2e-4, rtol=1e-4)
    assert not files.vol.exists()  # vol_embedding is off and no --use_diff
    units_mtime = files.units.stat().st_mtime_ns
    files.f0.unlink()
    capsys.readouterr()
    assert _cli(project) == 0
    out = capsys.readouterr().out
    assert "1 clips processed" in out and "2 already done" in out
    assert files.f0.exists() and files.units.stat().st_mtime_ns == units_mtime
    assert _cli(project) == 0
    assert "0 clips processed" in capsys.readouterr().out
    assert not list(project["data"].glob("*/.*.tmp"))  # no temporary files left behind


def test_one_failing_clip_is_reported_and_the_rest_done(project, capsys, caplog):
    bad = project["data"] / "alto" / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav")
    short = project["data"] / "bass" / "tiny.wav"
    sf.write(str(short), np.zeros(300, dtype=np.float32), 44100, subtype="PCM_16")
    assert _cli(project) == 1
    captured = capsys.readouterr()
    assert "3 clips processed" in captured.out and "2 failed" in captured.out
    failures = [r.getMessage() for r in caplog.records if r.name == "preprocess_hubert_f0" and r.levelname == "ERROR"]
    assert len(failures) == 2 and "broken.wav" in " ".join(failures) and "tiny.wav" in " ".join(failures)
    assert not ClipFiles(bad).units.exists()
    assert all(ClipFiles(w).units.exists() for w in project["data"].glob("*/*_0*.wav"))


def test_missing_pretrained_file_is_reported_with_path(project, capsys):
    (project["pretrain"] / "checkpoint_best_legacy_500.pt").unlink()
    assert _cli(project) == 2
    err = capsys.readouterr().err
    assert str(project["pretrain"] / "checkpoint_best_legacy_500.pt") in err
    assert "contentvec" in err.lower()


def test_unknown_f0_predictor_is_a_setup_error(project, capsys):
    assert preprocess_hubert_f0.main(["--in_dir", str(project["data"]), "--config", str(project["config"]),
                                      "--f0_predictor", "nope", "-d", "cpu"]) == 2
    assert "unknown F0 predictor 'nope'" in capsys.readouterr().err


def test_safe_reader_reads_original_files_and_refuses_code(tmp_path):
    f0 = np.array([0.0, 220.0, 230.5], dtype=np.float32)
    uv = np.array([0.0, 1.0, 1.0], dtype=np.float32)
    np.save(tmp_path / "orig.f0.npy", np.asanyarray((f0, uv), dtype=object))  # how the original writes it
    got_f0, got_uv = load_f0(tmp_path / "orig.f0.npy")
    np.testing.assert_array_equal(got_f0, f0)
    np.testing.assert_array_equal(got_uv, uv)
    save_f0(tmp_path / "ours.f0.npy", f0, uv)
    np.testing.assert_array_equal(np.load(tmp_path / "ours.f0.npy", allow_pickle=True).astype(np.float32),
                                  np.stack([f0, uv]))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = Evil(), 1.0
    with open(tmp_path / "evil.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(evil))
        pickle.dump(evil, f, protocol=3)
    with pytest.raises(UnsafeCheckpointError, match="not allowed"):
        load_npy(tmp_path / "evil.npy")
    assert not (tmp_path / "pwned").exists()
    np.save(tmp_path / "plain.npy", np.ones((3, 2)))
    with pytest.raises(UnsafeCheckpointError, match=r"shape \(2, T\)"):
        load_f0(tmp_path / "plain.npy")


def test_features_made_with_other_settings_are_recomputed_and_force_redoes_all(project, capsys):
    assert _cli(project) == 0
    wavs = sorted(project["data"].glob("*/*.wav"))
    record = json.loads(ClipFiles(wavs[0]).record.read_text())
    assert record["f0_predictor"] == "pm" and record["ssl_dim"] == 16 and record["speech_encoder"] == "vec256l9"
    assert record["encoder_weights"].startswith(f"{(project['pretrain'] / 'checkpoint_best_legacy_500.pt').stat().st_size}:")
    f0_before = ClipFiles(wavs[0]).f0.read_bytes()
    capsys.readouterr()
    # another F0 predictor: every clip is redone, and the run says why
    assert preprocess_hubert_f0.main(["--in_dir", str(project["data"]), "--config", str(project["config"]),
                                      "--f0_predictor", "dio", "-d", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "3 clip(s) recomputed: made with other settings (f0_predictor: 'pm' -> 'dio')" in out
    assert "3 clips processed" in out and ClipFiles(wavs[0]).f0.read_bytes() != f0_before
    # a clip without a record (made by so-vits-svc 4.1, or interrupted before its record) is redone
    ClipFiles(wavs[1]).record.unlink()
    assert _cli(project) == 0  # back to pm: all three redone
    assert "3 clips processed" in capsys.readouterr().out
    assert _cli(project) == 0
    out = capsys.readouterr().out
    assert "0 clips processed" in out and "3 already done" in out
    assert _cli(project, "--force") == 0
    assert "3 clips processed" in capsys.readouterr().out


def test_units_of_another_width_than_ssl_dim_stop_the_job(project, capsys):
    cfg = json.loads(project["config"].read_text())
    cfg["model"]["ssl_dim"] = cfg["model"]["gin_channels"] = 256
    project["config"].write_text(json.dumps(cfg))
    assert _cli(project) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # one line after the progress bar
    assert last.startswith("preprocess_hubert_f0.py: error: ")
    assert "gives 16-wide units, but the config's model.ssl_dim is 256" in last
    assert not list(project["data"].glob("*/*.soft.pt"))
