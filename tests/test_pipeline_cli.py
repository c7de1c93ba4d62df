"""Every numbered script, run as a user runs it (a subprocess, default paths in a fresh project folder),
chained on a tiny dataset: resample -> file lists and config -> features -> train -> convert -> compress.

The quick-start calls the same stages as library functions; this test keeps the command lines honest.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from modules.audio import save_audio
from modules.synthetic_voices import synth_singing
from vencoder.demo import write_demo_contentvec

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def test_the_numbered_scripts_chain_with_default_paths(tmp_path):
    for s_index, speaker in enumerate(("alto", "bass")):
        for i in range(3):
            voice = synth_singing(speaker, 1.5, seed=s_index * 10 + i)
            save_audio(tmp_path / "dataset_raw" / speaker / f"{speaker}_{i}.wav", voice.audio, voice.sr)
    write_demo_contentvec(tmp_path / "pretrain" / "checkpoint_best_legacy_500.pt")

    _script(tmp_path, "resample.py", "--no_progress")
    assert len(list((tmp_path / "dataset" / "44k").glob("*/*.wav"))) == 6

    _script(tmp_path, "preprocess_flist_config.py", "--speech_encoder", "vec256l9", "--tiny")
    config_path = tmp_path / "configs" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["spk"] == {"alto": 0, "bass": 1} and config["model"]["ssl_dim"] == 256
    config["train"].update(batch_size=2, segment_size=5120, eval_interval=1000, log_interval=1000)
    config["model"]["discriminator_width"] = 0.25
    config_path.write_text(json.dumps(config))

    _script(tmp_path, "preprocess_hubert_f0.py", "--f0_predictor", "pm", "--pretrain_dir", "pretrain")
    units = sorted((tmp_path / "dataset" / "44k").glob("*/*.wav.soft.pt"))
    assert len(units) == 6 and torch.load(units[0], weights_only=True).shape[1] == 256

    _script(tmp_path, "train.py", "-c", "configs/config.json", "-m", "44k", "--max_steps", "2", "--eval_items", "1",
            "--device", "cpu", "--no_progress")
    assert (tmp_path / "logs" / "44k" / "G_1.pth").is_file() and (tmp_path / "logs" / "44k" / "config.json").is_file()

    song = synth_singing("alto", 1.0, seed=99)
    save_audio(tmp_path / "raw" / "song.wav", song.audio, song.sr)
    _script(tmp_path, "inference_main.py", "-m", "logs/44k/G_1.pth", "-c", "logs/44k/config.json", "-n", "song",
            "-t", "-12", "-s", "bass", "-wf", "wav", "--pretrain_dir", "pretrain", "--no_progress")
    out, sr = sf.read(tmp_path / "results" / "song_-12key_bass_sovits_pm.wav")
    assert sr == 44100 and len(out) == len(song.audio) and np.isfinite(out).all()

    _script(tmp_path, "compress_model.py", "-c", "logs/44k/config.json", "-i", "logs/44k/G_1.pth")
    release = torch.load(tmp_path / "logs" / "44k" / "G_1_release.pth", weights_only=True)
    assert release["iteration"] == 0 and not any(k.startswith("enc_q.") for k in release["model"])
