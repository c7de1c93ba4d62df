"""The speech encoders beyond ContentVec / HuBERT-Soft, each loaded from a small seeded random-weight
file in its published layout: ONNX encoders, cnhubertlarge, whisper-ppg(-large), wavlmbase+, dphubert."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.encoder_files import tiny_onnx_module, write_onnx_encoder
from vencoder import PretrainedFileMissing, SPEECH_ENCODERS, clear_cache, encoder_names, get_speech_encoder

ONNX_FILES = {
    "vec256l9-onnx": ("vec-256-layer-9.onnx", 256),
    "vec256l12-onnx": ("vec-256-layer-12.onnx", 256),
    "vec768l9-onnx": ("vec-768-layer-9.onnx", 768),
    "vec768l12-onnx": ("vec-768-layer-12.onnx", 768),
    "hubertsoft-onnx": ("hubert-soft.onnx", 256),
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _wav(n: int, seed: int = 0) -> torch.Tensor:
    t = torch.arange(n) / 16000
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * noise).float()


def test_new_encoders_are_in_the_table():
    assert set(ONNX_FILES) | {"cnhubertlarge"} <= set(encoder_names())


@pytest.fixture(scope="module")
def onnx_pretrain(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    for i, (file, dim) in enumerate(ONNX_FILES.values()):
        write_onnx_encoder(folder / file, dim, seed=i, input_name=f"in{i}", output_name=f"out{i}")
    return folder


@pytest.mark.parametrize("name", list(ONNX_FILES))
def test_onnx_encoder_width_frames_and_values(onnx_pretrain, name):
    file, dim = ONNX_FILES[name]
    encoder = get_speech_encoder(name, pretrain_dir=onnx_pretrain)
    assert encoder.dim == dim == SPEECH_ENCODERS[name].dim
    wav = _wav(16321)
    units = encoder.encode(wav)
    assert units.shape == (1, dim, (16321 - 400) // 320 + 1) == (1, dim, encoder.n_frames(16321))
    expected = tiny_onnx_module(dim, seed=list(ONNX_FILES).index(name))(wav[None, None]).transpose(1, 2)
    torch.testing.assert_close(units, expected.detach(), atol=1e-4, rtol=1e-4)
    stereo = torch.stack([wav, wav])
    torch.testing.assert_close(encoder.encode(stereo), units)
    batch = encoder.encode_batch([_wav(8000, 1), wav, _wav(720, 2)])
    assert [u.shape[-1] for u in batch] == [24, 50, 2]
    torch.testing.assert_close(batch[1], units)


def test_onnx_encoder_is_loaded_once_and_runs_on_cpu_for_cpu_device(onnx_pretrain):
    a = get_speech_encoder("vec768l12-onnx", pretrain_dir=onnx_pretrain)
    assert get_speech_encoder("vec768l12-onnx", pretrain_dir=onnx_pretrain) is a
    assert a.session.get_providers() == ["CPUExecutionProvider"]
    assert (a.input_name, a.output_name) == ("in3", "out3")


def test_onnx_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PretrainedFileMissing, match=r"vec-256-layer-9\.onnx.*MoeSS-SUBModel"):
        get_speech_encoder("vec256l9-onnx", pretrain_dir=tmp_path)
    (tmp_path / "hubert-soft.onnx").write_bytes(b"not a graph")
    from vencoder import CheckpointFormatError

    with pytest.raises(CheckpointFormatError, match=r"hubert-soft\.onnx: not a loadable ONNX model"):
        get_speech_encoder("hubertsoft-onnx", pretrain_dir=tmp_path)


def test_cnhubertlarge_all_layers_final_layer_norm_raw_waveform(tmp_path):
    from tests.support.encoder_files import write_fairseq_hubert_large
    from vencoder.fairseq_checkpoint import load_fairseq_checkpoint

    path = write_fairseq_hubert_large(tmp_path / "chinese-hubert-large-fairseq-ckpt.pt", layers=3, dim=32)
    encoder = get_speech_encoder("cnhubertlarge", pretrain_dir=tmp_path)
    assert encoder.dim == 32 and encoder.model.cfg.layer_norm_first and len(encoder.model.encoder.layers) == 3
    wav = _wav(16321)
    units = encoder.encode(wav)
    assert units.shape == (1, 32, (16321 - 400) // 320 + 1)
    torch.testing.assert_close(encoder.encode(wav), units)  # deterministic
    # The last thing applied is the encoder's final layer norm: undoing its affine leaves unit-variance frames.
    state = load_fairseq_checkpoint(path).model_state
    normed = (units[0].T - state["encoder.layer_norm.bias"]) / state["encoder.layer_norm.weight"]
    torch.testing.assert_close(normed.mean(-1), torch.zeros(units.shape[-1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(normed.var(-1, unbiased=False), torch.ones(units.shape[-1]), atol=1e-3, rtol=0)
    # No waveform normalisation, as in so-vits-svc 4.1 (the file's task asks for it): a DC offset, which
    # normalisation would remove, changes the units.
    assert not encoder.model.cfg.normalize
    assert (encoder.encode(wav + 0.3) - units).abs().max() > 1e-2
    batch = encoder.encode_batch([_wav(5000, 3), wav])
    torch.testing.assert_close(batch[1], units, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(batch[0], encoder.encode(_wav(5000, 3)), atol=2e-4, rtol=1e-4)
