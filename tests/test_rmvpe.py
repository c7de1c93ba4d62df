"""RMVPE: the published checkpoint layout, loading (once per process), the mel front end and decoding."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from modules.audio import resample_sinc
from modules.errors import CheckpointError, UnsafeCheckpointError
from modules.pitch import get_f0_predictor
from modules.pitch.rmvpe import (
    CENTS_OFFSET,
    RMVPEArch,
    RMVPENet,
    _check_keys,
    _extract_state_dict,
    decode_salience,
    infer_arch,
    load_rmvpe,
    log_mel,
)
from modules.synthetic_voices import Note, synth_notes
from tests.support.sinc_reference import windowed_sinc_reference

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
    n16 = -(-length * 16000 // SR)  # the sinc resampler's length: ceil
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


NARROW = {"width": 4, "n_blocks": 1, "n_middle": 1, "n_gru": 1, "gru_hidden": 8}


@pytest.fixture(scope="module")
def narrow_checkpoint(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A narrow E2E0 (width 4, one block per stage, GRU hidden 8) in the published {'model': state_dict} layout."""
    torch.manual_seed(3)
    net = RMVPENet(**NARROW)
    with torch.no_grad():  # random BN statistics, so the running stats matter for the comparison
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("narrow") / "rmvpe.pt"
    torch.save({"model": state}, path)
    return str(path), state


def test_narrow_checkpoint_sizes_come_from_the_state_dict(narrow_checkpoint):
    path, state = narrow_checkpoint
    assert tuple(state["unet.encoder.layers.0.conv.0.conv.0.weight"].shape) == (4, 1, 3, 3)
    assert tuple(state["unet.intermediate.layers.0.conv.0.conv.0.weight"].shape) == (128, 64, 3, 3)
    assert tuple(state["fc.0.gru.weight_hh_l0"].shape) == (24, 8)
    assert infer_arch(state) == RMVPEArch(width=4, n_blocks=1, n_stages=5, n_middle=1, n_gru=1, gru_hidden=8)
    net = load_rmvpe(path)
    assert net.arch == infer_arch(state) and net.frame_multiple == 32
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # a shortcut 1x1 conv exactly where a block changes its width
    shortcuts = sorted(k for k in state if k.endswith("shortcut.weight"))
    assert shortcuts == sorted([f"unet.encoder.layers.{i}.conv.0.shortcut.weight" for i in range(5)]
                               + ["unet.intermediate.layers.0.conv.0.shortcut.weight"]
                               + [f"unet.decoder.layers.{i}.conv2.0.shortcut.weight" for i in range(5)])


def test_width_one_has_no_first_shortcut_and_two_gru_layers_load(tmp_path):
    net = RMVPENet(width=1, n_blocks=2, n_stages=3, n_middle=2, n_gru=2, gru_hidden=5)
    state = net.state_dict()
    assert "unet.encoder.layers.0.conv.0.shortcut.weight" not in state  # 1 -> 1 channel: identity path
    assert "unet.encoder.layers.1.conv.0.shortcut.weight" in state
    torch.save(state, tmp_path / "rvc_style.pt")  # bare state dict
    loaded = load_rmvpe(tmp_path / "rvc_style.pt")
    assert loaded.arch == RMVPEArch(width=1, n_blocks=2, n_stages=3, n_middle=2, n_gru=2, gru_hidden=5)
    assert loaded.frame_multiple == 8


def test_mel_is_zero_padded_to_a_multiple_of_32(narrow_checkpoint):
    path, _ = narrow_checkpoint
    predictor = get_f0_predictor("rmvpe", model_path=path)
    mel = torch.randn(1, 128, 45, generator=torch.Generator().manual_seed(0)) - 4.0
    ours = predictor.mel_salience(mel)
    with torch.inference_mode():
        zeros = predictor.net(torch.cat([mel, torch.zeros(1, 128, 19)], dim=-1))[:, :45]
        reflect = predictor.net(torch.nn.functional.pad(mel, (0, 19), mode="reflect"))[:, :45]
    assert ours.shape == (1, 45, 360)
    torch.testing.assert_close(ours, zeros, rtol=1e-6, atol=1e-7)
    assert (ours - reflect).abs().max() > 1e-3  # the BiGRU carries the padding into the real frames


def test_salience_of_44k_audio_matches_an_independent_pipeline(narrow_checkpoint):
    """Interpolation-formula resampling -> numpy log-mel -> zero padding -> net: the original's steps."""
    path, _ = narrow_checkpoint
    predictor = get_f0_predictor("rmvpe", hop_length=HOP, sampling_rate=SR, model_path=path)
    voice = synth_notes([Note(0, 0.05), Note(57, 0.4), Note(0, 0.05)], "bass", seed=4)
    # A -60 dB noise floor keeps every mel bin well above the 1e-5 clamp: next to it, float32 rounding of
    # the resampled audio (~5e-7, in the original's float32 torchaudio path too) moves a log-mel by 0.007.
    floor = 1e-3 * np.random.default_rng(5).standard_normal(22000)
    audio = (voice.audio[:22000] + floor).astype(np.float32)
    x16 = windowed_sinc_reference(audio, SR, 16000, lowpass_filter_width=128, rolloff=0.99)
    n_frames = len(x16) // 160 + 1
    padded = np.pad(x16, 512, mode="reflect")
    frames = np.stack([padded[i * 160:i * 160 + 1024] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    bank = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)
    mel = np.log(np.maximum(bank @ np.abs(np.fft.rfft(frames * window, axis=1)).T, 1e-5))
    ours_mel = log_mel(resample_sinc(torch.from_numpy(audio)[None], SR, 16000, lowpass_filter_width=128))[0]
    np.testing.assert_allclose(ours_mel.numpy(), mel, rtol=0, atol=2e-3)
    mel = np.pad(mel, ((0, 0), (0, -(-n_frames // 32) * 32 - n_frames)))
    with torch.inference_mode():
        expected = predictor.net(torch.from_numpy(mel).float()[None])[0, :n_frames].numpy()
    ours = predictor.salience(audio)
    assert ours.shape == expected.shape == (n_frames, 360)
    assert np.max(np.abs(ours - expected) / expected) <= 1e-4
