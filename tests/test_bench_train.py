"""bench.train --original: the side-by-side plumbing, against a stand-in for a so-vits-svc 4.1 checkout.

The stand-in (written to a temp folder by this test, nowhere else) has what bench/_train_side.py imports
from a checkout, with the so-vits-svc 4.1 signatures (checked against a 4.1-Stable state of the original):
`utils.get_hparams_from_file(config_path, infer_mode=False)`, `utils.load_checkpoint(checkpoint_path, model,
optimizer=None, skip_optimizer=False)` (tolerant: a tensor the file lacks keeps its initial value),
`models.SynthesizerTrn(spec_channels, segment_size, **model)` and `models.MultiPeriodDiscriminator(
use_spectral_norm=False)`, `modules.losses`, `modules.mel_processing.spec_to_mel_torch(spec, n_fft, num_mels,
sampling_rate, fmin, fmax)` / `mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size,
fmin, fmax, center=False)` and `modules.commons.slice_segments` / `clip_grad_value_(parameters, clip_value,
norm_type=2)`. Everything wraps our own code, loaded under other module names; its `modules` package falls
back to ours for every other submodule.
"""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from bench import train as bench_train
from modules.config import save_config
from tests.support.tiny_models import tiny_config_dict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DISCRIMINATOR_WIDTH = 0.25  # the tiny config's; the stand-in's discriminator has it built in


def _fake_checkout(folder: Path) -> Path:
    root = repr(str(PROJECT_ROOT))
    (folder / "modules").mkdir(parents=True)
    (folder / "modules" / "__init__.py").write_text(textwrap.dedent(f"""
        import importlib.util
        import sys
        sys.path.append({root})
        __path__.append({root} + "/modules")  # submodules the stand-in lacks come from the project

        def load_ours(name):
            spec = importlib.util.spec_from_file_location("project_" + name, {root} + "/modules/" + name + ".py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    """))
    (folder / "modules" / "commons.py").write_text(textwrap.dedent("""
        import torch
        from modules import load_ours
        globals().update({k: v for k, v in vars(load_ours("commons")).items() if not k.startswith("__")})

        def clip_grad_value_(parameters, clip_value, norm_type=2):
            grads = [p.grad for p in parameters if p.grad is not None]
            if clip_value is not None:
                for g in grads:
                    g.clamp_(min=-clip_value, max=clip_value)
            return float(torch.nn.utils.get_total_norm(grads, norm_type))
    """))
    (folder / "modules" / "losses.py").write_text(textwrap.dedent("""
        from modules import load_ours
        globals().update({k: v for k, v in vars(load_ours("losses")).items() if not k.startswith("__")})
    """))
    (folder / "modules" / "mel_processing.py").write_text(textwrap.dedent("""
        from modules.frame_features import mel_spectrogram, spec_to_mel

        def spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax):
            return spec_to_mel(spec, sampling_rate, n_fft, num_mels, fmin, fmax)

        def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
            assert not center
            return mel_spectrogram(y, sampling_rate, n_fft, hop_size, win_size, num_mels, fmin, fmax)
    """))
    (folder / "utils.py").write_text(textwrap.dedent("""
        import torch
        from modules.config import load_config

        def get_hparams_from_file(config_path, infer_mode=False):
            return load_config(config_path)

        def load_checkpoint(checkpoint_path, model, optimizer=None, skip_optimizer=False):
            saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            state = model.state_dict()
            state.update({k: v for k, v in saved["model"].items() if k in state and v.shape == state[k].shape})
            model.load_state_dict(state)
            return model, optimizer, saved["learning_rate"], saved["iteration"]
    """))
    (folder / "models.py").write_text(textwrap.dedent(f"""
        import importlib.util
        import modules  # puts the project on the path
        spec = importlib.util.spec_from_file_location("project_models", {root} + "/models.py")
        ours = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ours)

        class SynthesizerTrn(ours.SynthesizerTrn):
            def __init__(self, spec_channels, segment_size, **model):
                super().__init__(spec_channels, segment_size, **model)

        class MultiPeriodDiscriminator(ours.MultiPeriodDiscriminator):
            def __init__(self, use_spectral_norm=False):  # the original's signature; narrow here for speed
                super().__init__(use_spectral_norm, width={DISCRIMINATOR_WIDTH})
    """))
    return folder


def _tiny_config(path: Path) -> Path:
    cfg = tiny_config_dict({"discriminator_width": DISCRIMINATOR_WIDTH})
    save_config(cfg, path)
    return path


def test_side_by_side_training_step(tmp_path, capsys):
    checkout = _fake_checkout(tmp_path / "so-vits-svc")
    results = tmp_path / "rows.json"
    code = bench_train.main(["--original", str(checkout), "--config", str(_tiny_config(tmp_path / "config.json")),
                             "--batches", "2", "--segment", "2048", "--seconds", "1", "--steps", "2",
                             "--repeats", "1", "--threads", "1", "--json", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| training step")]
    assert len(table) == 1
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[0] == "training step, batch 2, segment 2048"
    number = r"(\d+\.\d\d) s/step, (\d+\.\d\d) GB"
    (t_orig, gb_orig), (t_ours, gb_ours) = (map(float, re.fullmatch(number, c).groups()) for c in cells[1:3])
    assert 0 < t_orig < 30 and 0 < t_ours < 30
    assert 0.2 < gb_orig < 8 and 0.2 < gb_ours < 8  # torch alone is a few hundred MB of RSS

    rows = json.loads(results.read_text())
    original, ours = rows[0]["original"][0], rows[0]["ours"][0]
    assert (original["side"], ours["side"]) == ("original", "ours")
    ratio = f"time {ours['s_per_step'] / original['s_per_step']:.2f}, memory {ours['peak_mb'] / original['peak_mb']:.2f}"
    assert cells[3] == ratio
    # Same config, batch, seed and starting G_0 / D_0 pair: the step assembled from the checkout's pieces
    # computes the same losses as Trainer.train_step (up to fused vs plain AdamW rounding in the D update).
    assert original["loss_d"] == pytest.approx(ours["loss_d"], rel=1e-6)
    assert original["loss_g"] == pytest.approx(ours["loss_g"], rel=1e-4)
    assert f"first step losses D / G: original {original['loss_d']:.6g} / {original['loss_g']:.6g}" in out
    assert "weights" not in original  # checked against the starting pair, then dropped


def test_ratio_column_from_given_numbers():
    rows = [{"device": "cpu", "batch": 6, "segment": 10240,
             "original": [{"s_per_step": s, "peak_mb": mb} for s, mb in ((10.0, 6144), (12.0, 5120), (11.0, 7000))],
             "ours": [{"s_per_step": s, "peak_mb": mb} for s, mb in ((4.0, 2048), (2.75, 3072), (3.0, 4096))]},
            {"device": "cuda", "batch": 2, "segment": 8192,
             "original": [{"s_per_step": 0.5, "peak_mb": 4096}], "ours": [{"s_per_step": 0.25, "peak_mb": 1024}]}]
    lines = bench_train.compare_table(rows).splitlines()
    assert lines[0] == "| case | original | ours | ours/original |"
    assert lines[2] == ("| training step, batch 6, segment 10240 | 11.00 s/step, 6.00 GB | 3.00 s/step, 3.00 GB "
                        "| time 0.27, memory 0.50 |")
    assert lines[3] == ("| training step, batch 2, segment 8192 (cuda) | 0.50 s/step, 4.00 GB | 0.25 s/step, 1.00 GB "
                        "| time 0.50, memory 0.25 |")


def test_original_must_be_a_checkout(tmp_path, capsys):
    (tmp_path / "models.py").write_text("")
    assert bench_train.main(["--original", str(tmp_path), "--batches", "2"]) == 2
    err = capsys.readouterr().err
    assert "not a so-vits-svc 4.1 checkout" in err and "modules/losses.py" in err and "utils.py" in err
    assert "missing models.py" not in err
