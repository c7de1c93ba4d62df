"""bench.infer --original: the side-by-side plumbing, against a stand-in for a so-vits-svc 4.1 checkout.

The stand-in (written to a temp folder by this test, nowhere else) has the two things the benchmark uses
from a checkout, with the so-vits-svc 4.1 signatures (checked against a 4.1-Stable state of the original):
`utils.get_hparams_from_file(config_path, infer_mode=False)` / `utils.load_checkpoint(checkpoint_path,
model, optimizer=None, skip_optimizer=False)` (tolerant: a tensor the file lacks keeps its initial value,
with a mere print), and a `models.SynthesizerTrn(spec_channels, segment_size, **model)` whose
`infer(c, f0, uv, g=None, noice_scale=0.35, seed=52468, predict_f0=False, vol=None)` returns (audio, f0).
It wraps our own classes, loaded under another module name.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench import infer as bench_infer
from tests.support.tiny_models import write_tiny_project

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _fake_checkout(folder: Path, scale: float = 1.0, skip: str = "") -> Path:
    """A folder that imports like a so-vits-svc checkout; `scale` multiplies its audio (to make it differ),
    and its loader leaves tensors whose names start with `skip` (if given) at their initial values."""
    folder.mkdir(parents=True)
    root = repr(str(PROJECT_ROOT))
    (folder / "utils.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.append({root})
        import torch
        from modules.config import load_config

        def get_hparams_from_file(config_path, infer_mode=False):
            return load_config(config_path)

        def load_checkpoint(checkpoint_path, model, optimizer=None, skip_optimizer=False):
            saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            state = model.state_dict()
            for k, v in saved["model"].items():
                if k in state and v.shape == state[k].shape and not ({skip!r} and k.startswith({skip!r})):
                    state[k] = v
                else:
                    print(k, "is not in the checkpoint")
            model.load_state_dict(state)
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


def test_original_that_did_not_load_every_tensor_is_refused(tiny, tmp_path, capsys):
    checkout = _fake_checkout(tmp_path / "partial", skip="dec.conv_post")
    code = bench_infer.main(["--original", str(checkout), "--model", str(tiny.model), "--config", str(tiny.config),
                             "--durations", "0.5", "--repeats", "1", "--threads", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"original did not load 3 tensor(s) of {tiny.model.resolve()} as saved" in err
    assert "dec.conv_post.bias" in err


def test_original_must_be_a_checkout(tmp_path, capsys):
    assert bench_infer.main(["--original", str(tmp_path), "--durations", "1"]) == 2
    assert "not a so-vits-svc checkout" in capsys.readouterr().err
