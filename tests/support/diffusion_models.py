"""Tiny random-weight diffusion models and vocoder folders in the 4.1 file layouts, for the diffusion tests.

    folder = write_vocoder_folder(tmp / "pretrain" / "nsf_hifigan")
    cfg = write_diffusion_config(tmp / "logs/44k/diffusion/config.yaml", vocoder_dir=folder, unit_dim=16)
    model = write_diffusion_model(tmp / "logs/44k/diffusion/model_0.pt", cfg)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from diffusion.unit2mel import Unit2Mel
from modules.config import load_diffusion_config, load_diffusion_template
from tests.support.train_data import deep_update

# Same mel front end and hop as the openvpi release; a narrow generator so tests run fast.
SMALL_VOCODER: dict[str, Any] = {
    "sampling_rate": 44100, "num_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_size": 512,
    "fmin": 40, "fmax": 16000, "resblock": "1", "upsample_rates": [8, 8, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4, 4], "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]],
}
TINY_DIFFUSION_MODEL = {"n_layers": 3, "n_chans": 16, "n_hidden": 8}


def write_vocoder_folder(folder: Path, seed: int = 0) -> Path:
    from vdecoder import NsfHifiGan, save_vocoder_folder

    torch.manual_seed(seed)
    save_vocoder_folder(NsfHifiGan(SMALL_VOCODER), folder)
    return Path(folder)


def diffusion_config_dict(vocoder_dir: Path, unit_dim: int = 16, n_spk: int = 1,
                          overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg = load_diffusion_template()
    cfg = deep_update(cfg, {
        "data": {"encoder": "vec256l9", "encoder_out_channels": unit_dim},
        "model": {**TINY_DIFFUSION_MODEL, "n_spk": n_spk},
        "vocoder": {"ckpt": str(Path(vocoder_dir) / "model")},
        "device": "cpu",
    })
    cfg["spk"] = {f"spk{i}": i for i in range(max(n_spk, 1))}
    return deep_update(cfg, dict(overrides or {}))


def write_diffusion_config(path: Path, vocoder_dir: Path, unit_dim: int = 16, n_spk: int = 1,
                           overrides: Mapping[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(diffusion_config_dict(vocoder_dir, unit_dim, n_spk, overrides)), encoding="utf-8")
    return path


def random_unit2mel(args: Any, seed: int = 0) -> Unit2Mel:
    """Unit2Mel with every weight random (the zero-initialised output layer too), buffers as built."""
    torch.manual_seed(seed)
    model = Unit2Mel.from_config(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.05)
    return model.eval()


def write_diffusion_model(path: Path, config_path: Path, seed: int = 0, global_step: int = 0) -> Path:
    args = load_diffusion_config(config_path)
    model = random_unit2mel(args, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": global_step, "model": model.state_dict()}, path)
    return path


def save_yaml(data: Mapping[str, Any], path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(dict(data)), encoding="utf-8")


def write_diffusion_features(wav: Path, seed: int = 0) -> None:
    """x.wav.mel.npy, x.wav.aug_mel.npy and x.wav.aug_vol.npy as preprocess_hubert_f0.py --use_diff writes them."""
    import numpy as np

    from modules.atomic_write import save_numpy
    from modules.audio import load_audio
    from modules.frame_features import nsf_mel, volume
    from modules.npy_files import save_aug_mel

    audio, _sr = load_audio(wav)
    y = torch.from_numpy(audio)[None]
    save_numpy(nsf_mel(y)[0].transpose(0, 1).numpy().astype(np.float32), Path(f"{wav}.mel.npy"))
    rng = np.random.default_rng(seed)
    keyshift = float(rng.uniform(-5, 5))
    shifted = y * float(10 ** rng.uniform(-1, 0))
    save_aug_mel(Path(f"{wav}.aug_mel.npy"), nsf_mel(shifted, keyshift=keyshift)[0].transpose(0, 1).numpy(), keyshift)
    save_numpy(volume(shifted[0]).numpy().astype(np.float32), Path(f"{wav}.aug_vol.npy"))


def make_diffusion_project(root: Path, unit_dim: int = 16, clips_per_speaker: int = 3, seconds: float = 1.6,
                           overrides: Mapping[str, Any] | None = None) -> Path:
    """A synthetic two-singer dataset with the --use_diff features and a tiny diffusion.yaml; returns its path."""
    from tests.support.train_data import make_preprocessed_dataset

    root = Path(root)
    _config, train_list, val_list = make_preprocessed_dataset(root, speakers=("alto", "bass"),
                                                              clips_per_speaker=clips_per_speaker, seconds=seconds,
                                                              unit_dim=unit_dim)
    wavs = train_list.read_text().split() + val_list.read_text().split()
    for i, wav in enumerate(wavs):
        write_diffusion_features(Path(wav), seed=i)
    vocoder = write_vocoder_folder(root / "pretrain" / "nsf_hifigan")
    base = {
        "data": {"training_files": str(train_list), "validation_files": str(val_list), "duration": 0.5},
        "env": {"expdir": str(root / "logs" / "44k" / "diffusion")},
        "train": {"batch_size": 4, "interval_log": 10, "interval_val": 50, "interval_force_save": 100,
                  "lr": 0.003, "num_workers": 0},
        "infer": {"speedup": 100},
        "model": {"n_chans": 32},
    }
    cfg = diffusion_config_dict(vocoder, unit_dim=unit_dim, n_spk=2, overrides=deep_update(base, dict(overrides or {})))
    cfg["spk"] = {"alto": 0, "bass": 1}
    path = root / "configs" / "diffusion.yaml"
    save_yaml(cfg, path)
    return path
