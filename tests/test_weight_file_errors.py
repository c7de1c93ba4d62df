"""Every reader of a weight file answers an unreadable file (empty, truncated, text, random bytes) the same
way: one CheckpointError naming the file, "not a <kind> (...)", without torch's advice to reload with
weights_only=False (the unsafe workaround); and the command lines print it as one line."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

import compress_model
import inference_main
from cluster.files import load_index_file, load_kmeans_file
from diffusion.unit2mel import load_unit2mel
from modules.checkpoint import load_checkpoint, safe_load
from modules.config import load_diffusion_template
from modules.errors import CheckpointError
from modules.pitch.crepe_net import load_crepe
from modules.pitch.fcpe_net import read_checkpoint
from modules.pitch.rmvpe import load_rmvpe
from modules.speaker_embedding import load_speaker_encoder
from vencoder.contentvec import load_fairseq_hubert
from vencoder.dphubert import load_dphubert
from vencoder.wavlm import load_wavlm
from vencoder.whisper_ppg import load_whisper_audio_encoder


def _broken_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.pt"
    torch.save({"model": {"w": torch.zeros(64)}}, good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "text": b"this is a text file, not weights\n" * 20,
        "random": os.urandom(4096),
    }
    out = {}
    for kind, content in files.items():
        path = folder / f"{kind}.pt"
        path.write_bytes(content)
        out[kind] = path
    return out


READERS: dict[str, Callable[[Path], object]] = {
    "G/D checkpoint": safe_load,
    "training resume": lambda p: load_checkpoint(p, torch.nn.Linear(2, 2)),
    "ContentVec / HuBERT (fairseq)": load_fairseq_hubert,
    "whisper-ppg": load_whisper_audio_encoder,
    "wavlmbase+": load_wavlm,
    "dphubert": load_dphubert,
    "rmvpe": load_rmvpe,
    "fcpe": read_checkpoint,
    "crepe": lambda p: load_crepe(str(p)),
    "k-means model": load_kmeans_file,
    "diffusion model": lambda p: load_unit2mel(p, _diffusion_args()),
    "speaker encoder (evaluate.py)": lambda p: load_speaker_encoder(str(p)),
}


def _diffusion_args():
    from modules.config import HParams

    return HParams(**load_diffusion_template())


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    return _broken_files(tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "random"])
def test_every_reader_names_the_file_and_says_it_is_not_weights(broken, reader, kind):
    path = broken[kind]
    with pytest.raises(CheckpointError) as e:
        READERS[reader](path)
    message = str(e.value)
    assert str(path) in message and "not " in message, message
    assert "weights_only" not in message and "\n" not in message, message


@pytest.mark.parametrize("kind", ["empty", "text", "random"])
def test_the_feature_index_reader_refuses_broken_files(broken, kind):
    with pytest.raises(CheckpointError, match=rf"{broken[kind].name}: not a readable feature index file"):
        load_index_file(broken[kind])


@pytest.mark.parametrize("kind", ["text", "random"])
def test_command_lines_print_one_line(broken, kind, tmp_path, capsys):
    from modules.config import load_template, save_config

    config = tmp_path / "config.json"
    save_config(load_template(tiny=True), config)
    assert compress_model.main(["-c", str(config), "-i", str(broken[kind])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{broken[kind]}: not a checkpoint" in err and "weights_only" not in err
    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / "x.wav").write_bytes(b"")
    assert inference_main.main(["-m", str(broken[kind]), "-c", str(config), "-n", str(tmp_path / "raw" / "x.wav"),
                                "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{broken[kind]}: not a checkpoint" in err and "weights_only" not in err
