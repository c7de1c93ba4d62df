"""vdecoder: NSF-HiFiGAN generator, snake option, harmonic source, standalone vocoder folder."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from modules.errors import CheckpointError, ConfigError
from modules.synthetic_voices import synth_singing
from tests.support.models_refkeys import parse
from vdecoder import NsfHifiGan, save_vocoder_folder
from vdecoder.nsf_hifigan import (
    DownSample1d,
    Generator,
    GeneratorConfig,
    SourceModuleHnNSF,
    UpSample1d,
    kaiser_sinc_filter,
    running_sum,
)

torch.set_num_threads(1)

OPENVPI_CONFIG = {
    "sampling_rate": 44100, "num_mels": 128, "n_fft": 2048, "win_size": 2048, "hop_size": 512,
    "fmin": 40, "fmax": 16000, "resblock": "1", "upsample_rates": [8, 8, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4, 4], "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "discriminator_periods": [3, 5, 7, 11, 17, 23, 37], "segment_size": 16384, "num_freq": 1025,
}
SMALL_CONFIG = dict(OPENVPI_CONFIG, upsample_initial_channel=32, resblock_kernel_sizes=[3, 5],
                    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])


def test_openvpi_vocoder_state_dict_equals_reference_in_order():
    vocoder = NsfHifiGan(OPENVPI_CONFIG)
    ours = [(k, tuple(v.shape)) for k, v in vocoder.model.state_dict().items()]
    assert ours == parse()["M"].entries


def test_saved_folder_loads_and_vocodes(tmp_path):
    torch.manual_seed(0)
    vocoder = NsfHifiGan(SMALL_CONFIG)
    save_vocoder_folder(vocoder, tmp_path / "nsf_hifigan")
    assert json.loads((tmp_path / "nsf_hifigan" / "config.json").read_text())["num_mels"] == 128
    raw = torch.load(tmp_path / "nsf_hifigan" / "model", weights_only=True)
    assert list(raw) == ["generator"] and "conv_pre.weight_g" in raw["generator"]

    loaded = NsfHifiGan.load(tmp_path / "nsf_hifigan")
    assert not any(k.endswith("weight_g") for k in loaded.model.state_dict())  # weight norm folded

    voice = synth_singing("alto", seconds=0.3, seed=3)
    audio = torch.from_numpy(voice.audio[: 512 * 20]).unsqueeze(0)
    mel = loaded.extract(audio)
    assert mel.shape == (1, 20, 128)
    assert float(mel.min()) >= math.log(1e-5) - 1e-6
    f0 = torch.from_numpy(np.asarray(voice.f0[:20], dtype=np.float32)).unsqueeze(0)
    torch.manual_seed(9)
    out = loaded.infer(mel, f0)
    torch.manual_seed(9)
    with torch.no_grad():
        reference = vocoder.model(mel.transpose(1, 2), f0)  # same weights, still weight-normed
    assert out.shape == (1, 1, 20 * 512)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="vocoder folder not found"):
        NsfHifiGan.load(tmp_path / "missing")
    folder = tmp_path / "voc"
    save_vocoder_folder(NsfHifiGan(SMALL_CONFIG), folder)
    cfg = dict(SMALL_CONFIG, upsample_initial_channel=64)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model: 'noise_convs.0.weight' has shape .16, 1, 128. in the file.*does not match .*config.json"):
        NsfHifiGan.load(folder)
    del cfg["hop_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="missing field.*hop_size"):
        NsfHifiGan.load(folder)


def test_sine_source_phase_stays_exact_over_ten_seconds():
    """Fundamental starts at phase 0 and is accumulated in float64: no drift after 441k samples."""
    source = SourceModuleHnNSF(44100)
    source.noise_std = 0.0
    f = 437.3
    n = 441000
    torch.manual_seed(0)
    waves = source.sine_waves(torch.full((1, n, 1), f))
    t = torch.arange(n, dtype=torch.float64)
    expected = 0.1 * torch.sin(2 * math.pi * ((f / 44100) * (t + 1) % 1))
    assert float((waves[0, :, 0].double() - expected).abs().max()) < 2e-4
    # harmonics 2..9 get random start phases, at f * h
    assert waves.shape == (1, n, 9)
    spectrum = torch.fft.rfft(waves[0, :44100, 2].double()).abs()
    assert int(spectrum.argmax()) == round(3 * f)


@pytest.mark.parametrize("n", [1, 255, 256, 1000, 44100 * 3 + 17])
def test_blocked_phase_scan_equals_the_sequential_cumsum(n):
    """The GPU's blocked scan (forced here on the CPU) gives cumsum's sums to float64 rounding, any length."""
    rad = torch.rand(2, n, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = torch.cumsum(rad, dim=1)
    got = running_sum(rad, blocked=True)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-12 * max(1.0, float(expected.abs().max()))
    assert torch.equal(running_sum(rad), expected)  # on the CPU: torch's own scan


def test_source_with_the_blocked_scan_matches(monkeypatch):
    """Ten seconds of excitation through the blocked scan: the same waves as the sequential one (float32)."""
    import vdecoder.nsf_hifigan as nsf

    source = SourceModuleHnNSF(44100)
    f0 = 220 + 30 * torch.sin(torch.linspace(0, 20, 441000, dtype=torch.float32)).view(1, -1, 1)
    torch.manual_seed(3)
    plain = source.sine_waves(f0)
    monkeypatch.setattr(nsf, "running_sum", lambda v: running_sum(v, blocked=True))
    torch.manual_seed(3)
    blocked = source.sine_waves(f0)
    assert float((plain - blocked).abs().max()) < 1e-5


@pytest.mark.parametrize("init_samples", [1, 512])
def test_random_start_phases_follow_source_style(init_samples):
    """so-vits adds the start phases to sample 0; the openvpi vocoder to its whole first frame."""
    source = SourceModuleHnNSF(44100, phase_init_samples=init_samples)
    source.noise_std = 0.0
    f, n = 311.7, 3000
    torch.manual_seed(4)
    ini = torch.rand(1, 9)[0].double()
    ini[0] = 0
    torch.manual_seed(4)
    waves = source.sine_waves(torch.full((1, n, 1), f))[0].double()
    steps = torch.arange(1, n + 1, dtype=torch.float64).view(-1, 1)
    h = torch.arange(1, 10, dtype=torch.float32)
    rad = ((f * h / 44100) % 1).double().view(1, -1)
    phase = steps * rad + steps.clamp(max=init_samples) * ini.view(1, -1)
    torch.testing.assert_close(waves, 0.1 * torch.sin(2 * math.pi * (phase % 1)), rtol=0, atol=1e-4)


def test_unvoiced_source_is_noise_only():
    source = SourceModuleHnNSF(44100)
    torch.manual_seed(0)
    waves = source.sine_waves(torch.zeros(1, 20000, 1))
    assert float(waves.std()) == pytest.approx(0.1 / 3, rel=0.05)


def test_kaiser_filter_and_resampling():
    taps = kaiser_sinc_filter(0.25, 0.3, 12)
    assert taps.shape == (1, 1, 12)
    assert float(taps.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(taps.flip(-1), taps)
    x = torch.sin(2 * math.pi * 0.01 * torch.arange(400.0)).view(1, 1, -1).repeat(1, 3, 1)
    up = UpSample1d()(x)
    assert up.shape == (1, 3, 800)
    down = DownSample1d()(up)
    assert down.shape == (1, 3, 400)
    torch.testing.assert_close(down[..., 20:-20], x[..., 20:-20], rtol=0, atol=2e-2)


def test_snake_generator_is_same_class_with_option():
    torch.manual_seed(0)
    cfg = GeneratorConfig(in_channels=8, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4],
                          upsample_initial_channel=16, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                          gin_channels=4, activation="snake")
    gen = Generator(cfg)
    keys = list(gen.state_dict())
    assert "snakes.1.act.alpha" in keys and "snake_post.downsample.lowpass.filter" in keys
    assert "resblocks.0.activations.5.upsample.filter" in keys
    tops = list(dict.fromkeys(k.split(".")[0] for k in keys))  # the original's registration order
    assert tops == ["m_source", "noise_convs", "conv_pre", "ups", "resblocks", "snakes", "conv_post", "snake_post", "cond"]
    assert torch.all(gen.snakes[0].act.alpha == 0)  # log-scale, initialised to 0
    z, f0, g = torch.randn(1, 8, 5), torch.full((1, 5), 200.0), torch.randn(1, 4, 1)
    torch.manual_seed(2)
    a = gen(z, f0, g)
    torch.manual_seed(2)
    b = gen.synthesize(z, gen.excitation(f0), g)
    assert a.shape == (1, 1, 40)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="activation"):
        Generator(GeneratorConfig(activation="relu"))


def test_filter_cast_to_bf16_runs_natively_and_stays_close():
    torch.manual_seed(0)
    cfg = GeneratorConfig(in_channels=8, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4],
                          upsample_initial_channel=32, resblock_kernel_sizes=[3, 5],
                          resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], gin_channels=4)
    gen = Generator(cfg).eval()
    gen.remove_weight_norm()
    half = Generator(cfg).eval()
    half.remove_weight_norm()
    half.load_state_dict(gen.state_dict())
    half.cast_filter(torch.bfloat16)
    assert {p.dtype for n, p in half.named_parameters() if not n.startswith("m_source")} == {torch.bfloat16}
    assert {p.dtype for p in half.m_source.parameters()} == {torch.float32}
    z, f0, g = torch.randn(1, 8, 60), torch.full((1, 60), 220.0), torch.randn(1, 4, 1)
    source = gen.excitation(f0)
    with torch.inference_mode():
        ref = gen.synthesize(z, source, g)
        out = half.synthesize(z, source, g)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast changes nothing
            again = half.synthesize(z, source, g)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape == (1, 1, 480)
    assert torch.equal(out, again)
    snr = 10 * torch.log10(ref.double().pow(2).sum() / (out.double() - ref.double()).pow(2).sum())
    assert 30 < float(snr) < 90
