"""bench.infer --original: the side-by-side plumbing, against a stand-in for a so-vits-svc 4.1 checkout.

The stand-in (written to a temp folder by this test, nowhere else) has the two things the benchmark uses
from a checkout: `utils.get_hparams_from_file` / `utils.load_checkpoint`, and a `models.SynthesizerTrn`
with the original's constructor and `infer(c, f0, uv, g=None, noice_scale=0.35, seed=52468,
predict_f0=False, vol=None)` signature. It wraps our own classes, loaded under another module name.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench import infer as bench_infer
from tests.support.tiny_models import write_tiny_project

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _fake_checkout(folder: Path, scale: float = 1.0) -> Path:
    """A folder that imports like a so-vits-svc checkout; `scale` multiplies its audio (to make it differ)."""
    folder.mkdir(parents=True)
    root = repr(str(PROJECT_ROOT))
    (folder / "utils.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.append({root})
        import torch
        from modules.config import load_config

        def get_hparams_from_file(path):
            return load_config(path)

        def load_checkpoint(path, model, optimizer):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["model"])
            return model, optimizer, saved["learning_rate"], saved["iteration"]
    """))
    (folder / "models.py").write_text(textwrap.dedent(f"""
        import importlib.util
        import sys
        sys.path.append({root})
        spec = importlib.util.spec_from_file_location("project_models", {root} + "/models.py")
        ours = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ours)

        class SynthesizerTrn(ours.SynthesizerTrn):
            def __init__(self, spec_channels, segment_size, **model):
                super().__init__(spec_channels, segment_size, **model)

            def infer(self, c, f0, uv, g=None, noice_scale=0.35, seed=52468, predict_f0=False, vol=None):
                audio, f0 = super().infer(c, f0, uv, g=g, noise_scale=noice_scale, seed=seed,
                                          predict_f0=predict_f0, vol=vol)
                return audio * {scale}, f0
    """))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_project(tmp_path_factory.mktemp("benchproj"))


def _run(tiny, checkout: Path, capsys) -> str:
    code = bench_infer.main(["--original", str(checkout), "--model", str(tiny.model), "--config", str(tiny.config),
                             "--durations", "0.5", "2", "--repeats", "1", "--threads", "1",
                             "--original-max-seconds", "1"])
    assert code == 0
    return capsys.readouterr().out


def test_side_by_side_table_with_the_same_weights(tiny, tmp_path, capsys):
    out = _run(tiny, _fake_checkout(tmp_path / "so-vits-svc"), capsys)
    table = [line for line in out.splitlines() if line.startswith("| synthesizer")]
    assert len(table) == 2
    short, long = table
    cells = [c.strip() for c in short.strip("|").split("|")]
    assert cells[0] == "synthesizer, 0.5 s of audio"
    assert "RTF" in cells[1] and "GB" in cells[1] and "RTF" in cells[2]
    assert cells[3].startswith("time ") and ", memory " in cells[3]
    # same G file, same inputs, same random draws: the outputs agree to float rounding
    agreement = float(cells[3].split("differ by ")[1].split(" of peak")[0])
    assert agreement < 1e-4
    assert "(not run)" in long  # 2 s is above --original-max-seconds: ours only


def test_agreement_shows_a_different_output(tiny, tmp_path, capsys):
    out = _run(tiny, _fake_checkout(tmp_path / "louder", scale=1.5), capsys)
    short = next(line for line in out.splitlines() if line.startswith("| synthesizer, 0.5 s"))
    assert float(short.split("differ by ")[1].split(" of peak")[0]) > 0.2


def test_original_must_be_a_checkout(tmp_path, capsys):
    assert bench_infer.main(["--original", str(tmp_path), "--durations", "1"]) == 2
    assert "not a so-vits-svc checkout" in capsys.readouterr().err
