"""preprocess_flist_config: seeded split, sorted and stable speaker ids, encoder dimensions, named errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import preprocess_flist_config as flist_cli
from modules.config import load_config, load_diffusion_config, load_template
from modules.dataset_files import name_problem
from modules.errors import ConfigError, DatasetError
from modules.flist_config import assign_speaker_ids, build_configs, prepare_flist_config, split_dataset
from modules.synthetic_voices import synth_singing
from vencoder import SPEECH_ENCODERS

SR = 44100


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synth_singing("bass", 0.5, sr=SR, seed=2).audio


def make_dataset(root: Path, clip: np.ndarray, speakers: dict[str, int], short: dict[str, int] | None = None) -> Path:
    """root/dataset/44k/<speaker>/<speaker>_NN.wav; `short` adds 0.1 s clips."""
    base = root / "dataset" / "44k"
    for name, count in speakers.items():
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sf.write(folder / f"{name}_{i:02d}.wav", clip, SR, subtype="PCM_16")
        for i in range((short or {}).get(name, 0)):
            sf.write(folder / f"tiny_{i}.wav", clip[: SR // 10], SR, subtype="PCM_16")
    return base


def run(root: Path, *extra: str, out: str = "") -> int:
    """The CLI with relative default paths, run from `root` (so lines read ./dataset/44k/...)."""
    args = ["--train_list", f"filelists{out}/train.txt", "--val_list", f"filelists{out}/val.txt",
            "--config_out", f"configs{out}/config.json", "--diffusion_out", f"configs{out}/diffusion.yaml", *extra]
    return flist_cli.main(args)


def lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text.splitlines()


def test_lists_follow_the_original_format_and_split(tmp_path, monkeypatch, clip, capsys):
    make_dataset(tmp_path, clip, {"zed": 5, "alto": 4, "Mia": 3}, short={"alto": 1})
    monkeypatch.chdir(tmp_path)
    assert flist_cli.main([]) == 0  # every default path, relative to the working folder
    train, val = lines(tmp_path / "filelists/train.txt"), lines(tmp_path / "filelists/val.txt")
    assert len(val) == 6 and len(train) == 12 - 6
    for spk in ("zed", "alto", "Mia"):
        assert sum(line.startswith(f"./dataset/44k/{spk}/") for line in val) == 2
    everything = sorted(train + val)
    expected = sorted(f"./dataset/44k/{s}/{s}_{i:02d}.wav" for s, n in (("zed", 5), ("alto", 4), ("Mia", 3))
                      for i in range(n))
    assert everything == expected  # tiny_0.wav (0.1 s) is left out
    out = capsys.readouterr().out
    assert "alto/tiny_0.wav" in out and "0.3 s" in out
    cfg = load_config(tmp_path / "configs/config.json")
    assert cfg.spk.to_dict() == {"Mia": 0, "alto": 1, "zed": 2}  # sorted, not listdir order
    assert cfg.model.n_speakers == 3 and cfg.data.training_files == "filelists/train.txt"
    diff = load_diffusion_config(tmp_path / "configs/diffusion.yaml")
    assert diff.spk.to_dict() == {"Mia": 0, "alto": 1, "zed": 2} and diff.model.n_spk == 3


def test_same_seed_same_files_other_seed_other_split(tmp_path, monkeypatch, clip):
    make_dataset(tmp_path, clip, {"a": 8, "b": 8, "c": 8})
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path, out="1") == 0 and run(tmp_path, out="2") == 0
    assert run(tmp_path, "--seed", "7", out="3") == 0
    for name in ("train.txt", "val.txt"):
        assert (tmp_path / "filelists1" / name).read_bytes() == (tmp_path / "filelists2" / name).read_bytes()
    assert (tmp_path / "filelists1/val.txt").read_text() != (tmp_path / "filelists3/val.txt").read_text()
    assert sorted(lines(tmp_path / "filelists1/train.txt") + lines(tmp_path / "filelists1/val.txt")) == \
        sorted(lines(tmp_path / "filelists3/train.txt") + lines(tmp_path / "filelists3/val.txt"))
    configs = [json.loads((tmp_path / f"configs{out}/config.json").read_text()) for out in "12"]
    assert configs[1]["data"].pop("training_files") == "filelists2/train.txt"
    for cfg in configs:  # the only difference is where the lists are
        cfg["data"].pop("training_files", None)
        cfg["data"].pop("validation_files")
    assert configs[0] == configs[1]


def test_split_is_a_pure_function_of_seed_and_file_set():
    clips = {"b": ["x3.wav", "x1.wav", "x2.wav", "x4.wav"], "a": ["y1.wav", "y2.wav", "y3.wav"]}
    shuffled = {"a": list(reversed(clips["a"])), "b": list(reversed(clips["b"]))}
    first = split_dataset(clips, "./dataset/44k/", seed=5)
    assert first == split_dataset(shuffled, "./dataset/44k", seed=5)
    train, val = first
    assert len(val) == 4 and len(train) == 3 and all(line.startswith("./dataset/44k/") for line in train + val)
    assert "//" not in "".join(train + val)


def test_speaker_ids_stay_stable_and_new_speakers_get_free_ids(tmp_path, monkeypatch, clip):
    monkeypatch.chdir(tmp_path)
    existing = load_template()
    existing["spk"] = {"zed": 0, "gone": 1, "alto": 2}
    existing["model"]["n_speakers"] = 3
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/config.json").write_text(json.dumps(existing))
    make_dataset(tmp_path, clip, {"zed": 3, "alto": 3, "bass": 3, "Ann": 3})
    assert run(tmp_path) == 0
    cfg = load_config(tmp_path / "configs/config.json")
    assert list(cfg.spk.items()) == [("zed", 0), ("alto", 2), ("Ann", 3), ("bass", 4)]
    assert cfg.model.n_speakers == 5  # ids run to 4; id 1 ('gone') is not reused
    assert assign_speaker_ids(["b", "a", "c"], {}) == {"a": 0, "b": 1, "c": 2}
    assert assign_speaker_ids(["b", "a"], {"b": 3}) == {"a": 0, "b": 3}


def test_empty_existing_config_counts_as_absent_and_broken_one_is_an_error(tmp_path, monkeypatch, clip):
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path, clip, {"b": 3, "a": 3})
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/config.json").write_text("")  # so-vits-svc ships the file empty
    assert run(tmp_path) == 0
    assert load_config(tmp_path / "configs/config.json").spk.to_dict() == {"a": 0, "b": 1}
    (tmp_path / "configs/config.json").write_text("{ broken")
    with pytest.raises(DatasetError, match="not valid JSON.*fix or delete"):
        prepare_flist_config("./dataset/44k", config_out="configs/config.json",
                             diffusion_out="configs/diffusion.yaml", train_list="l/t.txt", val_list="l/v.txt")
    assert not (tmp_path / "l").exists()


@pytest.mark.parametrize("encoder,ssl,filt,tiny", [
    ("vec768l12", 768, 768, False), ("vec256l9", 256, 768, False), ("hubertsoft", 256, 512, True),
    ("whisper-ppg", 1024, 1024, False), ("whisper-ppg-large", 1280, 1280, False), ("cnhubertlarge", 1024, 1024, False),
    ("dphubert", 768, 768, False), ("wavlmbase+", 768, 768, False), ("vec768l12", 768, 512, True),
    ("vec256l9-onnx", 256, 768, False), ("vec768l12-onnx", 768, 768, False),
])
def test_encoder_dimension_overrides(encoder, ssl, filt, tiny, monkeypatch):
    spec = SPEECH_ENCODERS[encoder]
    if not spec.built:  # the widths come from the table whether or not the encoder is built yet
        monkeypatch.setitem(SPEECH_ENCODERS, encoder, dataclasses.replace(spec, target="vencoder.none:Placeholder"))
    config, diffusion = build_configs({"a": 0, "b": 1}, encoder, vol_aug=False, tiny=tiny)
    model = config["model"]
    assert (model["ssl_dim"], model["gin_channels"], model["filter_channels"]) == (ssl, ssl, filt)
    assert model["speech_encoder"] == encoder and diffusion["data"]["encoder"] == encoder
    assert diffusion["data"]["encoder_out_channels"] == ssl
    assert model["use_depthwise_conv"] is tiny  # the tiny template was used
    assert model["vol_embedding"] is False and config["train"]["vol_aug"] is False


def test_an_encoder_that_is_not_built_is_refused_before_anything_is_written(tmp_path, monkeypatch, clip):
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path, clip, {"a": 3})
    monkeypatch.setitem(SPEECH_ENCODERS, "vec256l9", dataclasses.replace(SPEECH_ENCODERS["vec256l9"], target=None))
    with pytest.raises(ConfigError, match="'vec256l9' is not built in this version; available: vec768l12"):
        build_configs({"a": 0}, "vec256l9")
    assert flist_cli.main(["--speech_encoder", "vec256l9"]) == 2
    assert not (tmp_path / "configs").exists() and not (tmp_path / "filelists").exists()
    cfg = load_template()
    cfg["model"]["speech_encoder"] = "vec256l9"
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model.speech_encoder' is 'vec256l9', not built in this version"):
        load_config(tmp_path / "c.json")


def test_vol_aug_tiny_and_list_paths_reach_the_written_configs(tmp_path, monkeypatch, clip):
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path, clip, {"a": 3})
    assert flist_cli.main(["--vol_aug", "--tiny", "--speech_encoder", "vec256l9", "--train_list", "lists/t.txt",
                           "--val_list", "lists/v.txt", "--config_out", "c/config.json",
                           "--diffusion_out", "c/diffusion.yaml"]) == 0
    cfg = load_config(tmp_path / "c/config.json")
    assert cfg.train.vol_aug is True and cfg.model.vol_embedding is True
    assert (cfg.model.ssl_dim, cfg.model.filter_channels, cfg.model.upsample_initial_channel) == (256, 512, 400)
    assert cfg.data.training_files == "lists/t.txt" and cfg.data.validation_files == "lists/v.txt"
    raw = yaml.safe_load((tmp_path / "c/diffusion.yaml").read_text())
    assert raw["data"]["encoder_out_channels"] == 256 and raw["data"]["training_files"] == "lists/t.txt"
    assert json.loads((tmp_path / "c/config.json").read_text())["spk"] == {"a": 0}
    assert (tmp_path / "c/config.json").read_text().startswith('{\n  "train"')  # indent 2 like the original


def test_name_rules():
    for bad in ("a/b", "a\\b", " lead", "trail ", "a|b", "new\nline", "tab\tin", "", ".."):
        assert name_problem(bad), bad
    for good in ("nyaru", "Mia Wong", "歌手", "a.b-c_d"):
        assert name_problem(good) is None, good


@pytest.mark.parametrize("setup,message", [
    ("few", "few: 2 usable clips; each speaker needs at least 3"),
    ("short", "few: 2 usable clips"),
    ("empty", "no speaker folders"),
    ("missing", "folder not found"),
    ("pipe", "speaker folder 'pi|pe' contains '|'"),
    ("space", "speaker folder 'space ' has whitespace"),
    ("newline", "file name contains a newline"),
    ("encoder", "unknown speech encoder 'hubert-giant'"),
    ("unreadable", "broken.wav: not a readable audio file"),
])
def test_errors_are_named_and_nothing_is_written(tmp_path, monkeypatch, clip, capsys, setup, message):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "dataset" / "44k"
    extra: list[str] = []
    if setup != "missing":
        make_dataset(tmp_path, clip, {"ok": 3})
    if setup in ("few", "short"):
        make_dataset(tmp_path, clip, {"few": 2}, short={"few": 3 if setup == "short" else 0})
    elif setup == "empty":
        (base / "ok").rename(tmp_path / "elsewhere")
    elif setup == "pipe":
        make_dataset(tmp_path, clip, {"pi|pe": 3})
    elif setup == "space":
        make_dataset(tmp_path, clip, {"space ": 3})
    elif setup == "newline":
        sf.write(base / "ok" / "bad\nname.wav", clip, SR)
    elif setup == "encoder":
        extra = ["--speech_encoder", "hubert-giant"]
    elif setup == "unreadable":
        (base / "ok" / "broken.wav").write_text("not audio")
    assert run(tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "filelists").exists() and not (tmp_path / "configs").exists()
