"""A tiny synthetic *preprocessed* so-vits dataset (wavs + every feature file + file lists + config).

Used by the training tests, the inference tests and the quick-start: it writes exactly the files
preprocess_hubert_f0.py would write, but from the synthetic voices (exact F0) and without any
speech encoder, so it is fast and needs no pretrained weights. Units are random but fixed per
(speaker, unit frame), so they carry speaker identity and position but no real phonetic content.

    config_path, train_list, val_list = make_preprocessed_dataset(tmp_path)
    # then: python train.py -c <config_path> -m <name>   (run from any folder; file lists are absolute)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modules.atomic_write import save_numpy, save_torch, write_text
from modules.audio import load_audio, save_audio
from modules.config import load_template
from modules.frame_features import spectrogram, volume
from modules.npy_files import save_f0
from modules.pitch.base import interpolate_f0
from modules.synthetic_voices import SPEAKERS, synth_singing

UNIT_RATE = 50.0  # speech-encoder frames per second

# A model small enough to train for dozens of steps on one CPU core within seconds; the same code
# paths as the default config (NSF decoder, 16-layer enc_q, f0 decoder, flow), just narrower.
SMALL_MODEL: dict[str, Any] = {
    "inter_channels": 16,
    "hidden_channels": 32,
    "filter_channels": 64,
    "n_heads": 2,
    "n_layers": 2,
    "kernel_size": 3,
    "p_dropout": 0.0,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3], [1, 3]],
    "upsample_rates": [8, 8, 8],
    "upsample_initial_channel": 64,
    "upsample_kernel_sizes": [16, 16, 16],
    "gin_channels": 32,
    "n_flow_layer": 2,
    "n_layers_trans_flow": 1,
    "use_depthwise_conv": False,
    "flow_share_parameter": False,
}


def deep_update(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge `overrides` into a copy of `base`."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def fixed_units(speaker_index: int, n_frames: int, unit_dim: int) -> torch.Tensor:
    """[1, unit_dim, n_frames] units, identical for the same speaker and frame index in every clip."""
    rng = np.random.default_rng(10_000 + speaker_index)
    table = rng.standard_normal((unit_dim, max(n_frames, 1)), dtype=np.float32)
    return torch.from_numpy(table[:, :n_frames].copy())[None]


def write_clip_features(wav: Path, speaker_index: int, frame_f0: np.ndarray, unit_dim: int,
                        n_fft: int, hop: int, win: int, with_vol: bool = True) -> None:
    """Write x.wav.soft.pt, x.wav.f0.npy, x.spec.pt (and x.wav.vol.npy) for an existing 16-bit wav."""
    audio, sr = load_audio(wav)
    n_frames = len(audio) // hop
    f0, uv = interpolate_f0(frame_f0[:n_frames])
    save_f0(Path(f"{wav}.f0.npy"), f0, uv)  # the original's object array (2, T), numpy-1 readable
    save_torch(spectrogram(torch.from_numpy(audio), n_fft, hop, win), wav.with_suffix(".spec.pt"))
    n_units = max(1, int(round(len(audio) / sr * UNIT_RATE)))
    save_torch(fixed_units(speaker_index, n_units, unit_dim), Path(f"{wav}.soft.pt"))
    if with_vol:
        save_numpy(volume(torch.from_numpy(audio), hop).numpy().astype(np.float32), Path(f"{wav}.vol.npy"))


def make_preprocessed_dataset(
    root: str | Path,
    speakers: Sequence[str] = ("alto", "bass"),
    clips_per_speaker: int = 4,
    seconds: float = 2.0,
    unit_dim: int = 256,
    val_per_speaker: int = 1,
    sr: int = 44100,
    hop: int = 512,
    model_overrides: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    small_model: bool = True,
    with_vol: bool = True,
    seed: int = 0,
) -> tuple[Path, Path, Path]:
    """Write root/dataset/44k/<speaker>/*.wav with all feature files, root/filelists/{train,val}.txt
    (absolute paths) and root/configs/config.json; return (config_path, train_list, val_list).

    The config starts from the tiny template with `SMALL_MODEL` applied (unless small_model=False),
    then `model_overrides` (into "model") and `config_overrides` (whole-config deep merge).
    `val_per_speaker` clips of each speaker go to the validation list, the rest to training.
    """
    root = Path(root)
    data_dir = root / "dataset" / "44k"
    n_fft = win = 4 * hop
    train: list[str] = []
    val: list[str] = []
    names = sorted(speakers)
    for s_index, name in enumerate(names):
        if name not in SPEAKERS:
            raise ValueError(f"unknown synthetic speaker '{name}' (known: {', '.join(SPEAKERS)})")
        for i in range(clips_per_speaker):
            wav = data_dir / name / f"{name}_{i:03d}.wav"
            voice = synth_singing(name, seconds, sr=sr, hop=hop, seed=seed * 1000 + s_index * 100 + i)
            save_audio(wav, voice.audio, sr)
            write_clip_features(wav, s_index, voice.f0, unit_dim, n_fft, hop, win, with_vol)
            (val if i < val_per_speaker else train).append(str(wav.resolve()))

    filelists = root / "filelists"
    train_list, val_list = filelists / "train.txt", filelists / "val.txt"
    write_text(train_list, "\n".join(train) + "\n")
    write_text(val_list, "\n".join(val) + "\n")

    cfg = load_template(tiny=True)
    if small_model:
        cfg["model"] = deep_update(cfg["model"], SMALL_MODEL)
    rates = cfg["model"]["upsample_rates"]
    if int(np.prod(rates)) != hop:
        raise ValueError(f"model upsample_rates {rates} do not multiply to hop {hop}; pass model_overrides")
    cfg["model"].update(ssl_dim=unit_dim, n_speakers=len(names), speech_encoder="vec256l9" if unit_dim == 256
                        else cfg["model"]["speech_encoder"])
    cfg["data"].update(training_files=str(train_list.resolve()), validation_files=str(val_list.resolve()),
                       sampling_rate=sr, hop_length=hop, filter_length=n_fft, win_length=win, mel_fmax=sr // 2)
    cfg["train"].update(batch_size=2, eval_interval=20, log_interval=10, keep_ckpts=2, epochs=1000,
                        segment_size=8 * hop)
    cfg["model"]["vol_embedding"] = bool(with_vol) and cfg["model"].get("vol_embedding", False)
    cfg["spk"] = {name: i for i, name in enumerate(names)}
    if model_overrides:
        cfg["model"] = deep_update(cfg["model"], model_overrides)
    if config_overrides:
        cfg = deep_update(cfg, config_overrides)
    if cfg["model"]["upsample_rates"] and int(np.prod(cfg["model"]["upsample_rates"])) != cfg["data"]["hop_length"]:
        raise ValueError("model.upsample_rates must multiply to data.hop_length")
    config_path = root / "configs" / "config.json"
    write_text(config_path, json.dumps(cfg, indent=2) + "\n")
    return config_path, train_list, val_list


class _TinyPeriodDiscriminator(nn.Module):
    """A narrow period discriminator: same fold-by-period idea and outputs as the real one, ~1000x fewer weights."""

    def __init__(self, period: int, channels: Sequence[int] = (1, 8, 16, 16)) -> None:
        super().__init__()
        self.period = period
        self.convs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], (5, 1), (3, 1), padding=(2, 0)) for i in range(len(channels) - 1)
        )
        self.conv_post = nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), "reflect")
        x = x.view(b, c, -1, self.period)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class TinyMultiPeriodDiscriminator(nn.Module):
    """Test stand-in for models.MultiPeriodDiscriminator (same forward contract and `discriminators` list).

    The real discriminator has ~47M weights regardless of the generator config, which would make
    a 50-step CPU test take minutes; the training loop code paths are identical with this one.
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(_TinyPeriodDiscriminator(p) for p in periods)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            y_d_rs.append(r)
            y_d_gs.append(g)
            fmap_rs.append(fr)
            fmap_gs.append(fg)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs


def tiny_discriminator(hps: Any = None) -> nn.Module:
    """`discriminator_factory` for modules.training.Trainer / run_training in tests."""
    return TinyMultiPeriodDiscriminator()


def _main(argv: Sequence[str] | None = None) -> int:
    """`torchrun ... -m tests.support.train_data -c CONFIG -m MODEL_DIR [train.py flags]`: train.py with the
    tiny discriminator, for the multi-process test."""
    import sys

    import train as train_cli
    from modules.training import TrainOptions, run_training

    args = train_cli.build_parser().parse_args(argv)
    options = TrainOptions(device=args.device, precision=args.precision, max_steps=args.max_steps,
                           num_workers=args.num_workers, max_nan_steps=args.max_nan_steps,
                           eval_items=args.eval_items, progress=not args.no_progress)
    step = run_training(args.config, args.model, options, logs_root=args.logs_root,
                        discriminator_factory=tiny_discriminator)
    print(f"next step {step}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
