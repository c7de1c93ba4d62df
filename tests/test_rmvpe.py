"""RMVPE: the published checkpoint layout, loading (once per process), the mel front end and decoding."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from modules.audio import resample
from modules.errors import CheckpointError, UnsafeCheckpointError
from modules.pitch import get_f0_predictor
from modules.pitch.rmvpe import (
    CENTS_OFFSET,
    RMVPENet,
    _check_keys,
    _extract_state_dict,
    decode_salience,
    load_rmvpe,
    log_mel,
)
from tests.support.voices import Note, synth_notes

SR, HOP = 44100, 512


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return RMVPENet().state_dict()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, random_state) -> str:
    """A random-weight rmvpe.pt in the published layout ({'model': state_dict}), stored in fp16."""
    path = tmp_path_factory.mktemp("pretrain") / "rmvpe.pt"
    half = {k: v.half() if v.is_floating_point() else v for k, v in random_state.items()}
    torch.save({"model": half}, path)
    return str(path)


def test_state_dict_matches_published_e2e0_layout(random_state):
    expected_shapes = {
        "unet.encoder.bn.weight": (1,),
        "unet.encoder.layers.0.conv.0.conv.0.weight": (16, 1, 3, 3),
        "unet.encoder.layers.0.conv.0.conv.1.running_var": (16,),
        "unet.encoder.layers.0.conv.0.shortcut.weight": (16, 1, 1, 1),
        "unet.encoder.layers.0.conv.0.shortcut.bias": (16,),
        "unet.encoder.layers.4.conv.3.conv.3.weight": (256, 256, 3, 3),
        "unet.intermediate.layers.0.conv.0.conv.0.weight": (512, 256, 3, 3),
        "unet.intermediate.layers.0.conv.0.shortcut.weight": (512, 256, 1, 1),
        "unet.intermediate.layers.3.conv.3.conv.4.bias": (512,),
        "unet.tf.layers.4.conv.3.weight": (256, 256, 3, 3),
        "unet.decoder.layers.0.conv1.0.weight": (512, 256, 3, 3),  # ConvTranspose2d: [in, out, kh, kw]
        "unet.decoder.layers.0.conv2.0.conv.0.weight": (256, 512, 3, 3),
        "unet.decoder.layers.0.conv2.0.shortcut.weight": (256, 512, 1, 1),
        "unet.decoder.layers.4.conv2.3.conv.3.weight": (16, 16, 3, 3),
        "cnn.weight": (3, 16, 3, 3),
        "cnn.bias": (3,),
        "fc.0.gru.weight_ih_l0": (768, 384),
        "fc.0.gru.weight_hh_l0_reverse": (768, 256),
        "fc.1.weight": (360, 512),
        "fc.1.bias": (360,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(random_state[key].shape) == shape, key
    shortcuts = sorted(k for k in random_state if "shortcut.weight" in k)
    assert shortcuts == sorted(
        [f"unet.encoder.layers.{i}.conv.0.shortcut.weight" for i in range(5)]
        + ["unet.intermediate.layers.0.conv.0.shortcut.weight"]
        + [f"unet.decoder.layers.{i}.conv2.0.shortcut.weight" for i in range(5)]
    )
    assert not any(k.startswith("unet.tf.") and "shortcut" in k for k in random_state)
    assert {k.split(".")[1] for k in random_state if k.startswith("unet.")} == {
        "encoder", "intermediate", "tf", "decoder"}
    assert not any("pool" in k for k in random_state)
    assert len(random_state) == 801
    assert sum(v.numel() for v in random_state.values()) == 92_048_223


def test_load_once_and_output_frames(checkpoint):
    predictor = get_f0_predictor("rmvpe", hop_length=HOP, sampling_rate=SR, model_path=checkpoint)
    again = get_f0_predictor("rmvpe", model_path=checkpoint)
    assert again.net is predictor.net  # loaded once per process
    assert load_rmvpe(checkpoint, "cpu") is predictor.net
    assert not predictor.net.training

    voice = synth_notes([Note(0, 0.2), Note(60, 1.0), Note(0, 0.3)], "alto", seed=2)
    length = len(voice.audio) - 77  # not a multiple of the hop
    f0, uv = predictor.compute_f0_uv(voice.audio[:length])
    assert f0.shape == uv.shape == (length // HOP,)
    assert f0.dtype == np.float32 and uv.dtype == np.float32
    assert set(np.unique(uv)) <= {0.0, 1.0}

    salience = predictor.salience(voice.audio[:length])
    n16 = len(resample(voice.audio[:length], SR, 16000))
    assert salience.shape == (n16 // 160 + 1, 360)
    assert np.all((salience > 0) & (salience < 1))

    silent_f0, silent_uv = predictor.compute_f0_uv(np.zeros(SR // 2, dtype=np.float32))
    assert silent_uv.shape == (SR // 2 // HOP,) and not silent_uv.any() and not silent_f0.any()
    assert predictor.compute_f0_uv(np.zeros(HOP - 1, dtype=np.float32))[0].shape == (0,)


def test_known_salience_peak_decodes_to_its_frequency(checkpoint):
    """Weights that make bin 200 win everywhere: every frame must come out at that bin's pitch."""
    predictor = get_f0_predictor("rmvpe", model_path=checkpoint, silence_gate=None)
    net = copy.deepcopy(predictor.net)
    with torch.no_grad():
        net.fc[1].weight.zero_()
        net.fc[1].bias.fill_(-6.0)
        net.fc[1].bias[200] = 6.0
    predictor.net = net
    wav = (0.1 * np.sin(2 * np.pi * 330 * np.arange(SR) / SR)).astype(np.float32)
    f0, uv = predictor.compute_f0_uv(wav)
    expected = 10 * 2 ** ((20 * 200 + CENTS_OFFSET) / 1200)
    assert uv.all()
    np.testing.assert_allclose(f0, expected, rtol=1e-4)

    predictor.threshold = 0.999  # above the peak: nothing voiced, zeros everywhere
    f0, uv = predictor.compute_f0_uv(wav)
    assert not uv.any() and not f0.any()


def test_decode_salience_weighted_mean_and_threshold():
    salience = np.zeros((4, 360))
    salience[0, 100] = 0.9  # single bin
    salience[1, 100:102] = [0.6, 0.2]  # pulled a quarter bin up
    salience[2, 0:3] = [0.8, 0.4, 0.0]  # window clipped at the lower edge
    salience[3, 50] = 0.05  # not above the threshold
    salience[1, 300] = 0.1  # outside argmax +-4: ignored
    f0 = decode_salience(salience, threshold=0.05)
    cents = lambda bin_: 20 * bin_ + CENTS_OFFSET  # noqa: E731
    hz = lambda c: 10 * 2 ** (c / 1200)  # noqa: E731
    np.testing.assert_allclose(f0[:3], [hz(cents(100)), hz(cents(100.25)), hz(cents(1 / 3))], rtol=1e-9)
    assert f0[3] == 0.0
    assert decode_salience(np.zeros((0, 360)), 0.05).shape == (0,)


def test_log_mel_matches_a_plain_numpy_stft():
    """Centred framing: reflect-pad n_fft/2, periodic Hann, |rfft|, HTK mel bank (librosa), log clamp."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(4000)).astype(np.float64)
    ours = log_mel(torch.from_numpy(audio.astype(np.float32))[None])[0].numpy()
    padded = np.pad(audio, 512, mode="reflect")
    n_frames = 4000 // 160 + 1
    frames = np.stack([padded[i * 160:i * 160 + 1024] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T
    bank = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)
    assert ours.shape == (128, n_frames)
    np.testing.assert_allclose(ours, np.log(np.maximum(bank @ magnitude, 1e-5)), atol=2e-3)


def test_rvc_bare_state_dict_without_timbre_filter_is_accepted(checkpoint, random_state):
    """RVC's rmvpe.pt is the bare state dict of the same network minus the unused `unet.tf` branch."""
    bare = {k: v for k, v in random_state.items() if not k.startswith("unet.tf.")}
    state = _extract_state_dict(bare, Path("rvc_rmvpe.pt"))
    assert state.keys() == bare.keys()
    _check_keys(load_rmvpe(checkpoint), state, Path("rvc_rmvpe.pt"))  # no error
    del bare["cnn.bias"]
    with pytest.raises(CheckpointError, match=r"rvc_rmvpe\.pt: .*1 missing keys \(e\.g\. \['cnn\.bias'\]\)"):
        _check_keys(load_rmvpe(checkpoint), bare, Path("rvc_rmvpe.pt"))


@dataclass
class NotATensor:
    value: int = 1


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "pretrain" / "rmvpe.pt"
    with pytest.raises(CheckpointError, match=r"not found at .*pretrain/rmvpe\.pt.*yxlllc/RMVPE"):
        get_f0_predictor("rmvpe", model_path=missing)

    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {"unet.encoder.bn.weight": torch.zeros(2)}}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.pt: does not match .*missing keys.*shape mismatches"):
        load_rmvpe(wrong)

    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not an RMVPE checkpoint"):
        load_rmvpe(not_dict)

    pickled = tmp_path / "pickled.pt"
    torch.save({"model": NotATensor()}, pickled)
    with pytest.raises(UnsafeCheckpointError, match=r"pickled\.pt: refused: the file refers to tests.test_rmvpe.NotATensor"):
        load_rmvpe(pickled)
