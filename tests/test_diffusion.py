"""Unit2Mel (4.1 key layout), GaussianDiffusion, the five samplers, the vocoder chunking and the enhancer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion import samplers
from diffusion.unit2mel import GaussianDiffusion, Unit2Mel, load_unit2mel
from diffusion.wavenet import WaveNet
from modules.config import load_diffusion_config
from modules.diffusion_infer import Enhancer, load_vocoder, vocode
from modules.errors import CheckpointError, InferenceError, PretrainedFileMissing
from modules.synthetic_voices import synth_singing
from tests.support.diffusion_models import (
    random_unit2mel,
    write_diffusion_config,
    write_diffusion_model,
    write_vocoder_folder,
)
from tests.support.models_refkeys import REFERENCE, parse

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    vocoder = write_vocoder_folder(root / "pretrain" / "nsf_hifigan")
    config = write_diffusion_config(root / "diffusion" / "config.yaml", vocoder, unit_dim=16, n_spk=3)
    model = write_diffusion_model(root / "diffusion" / "model_0.pt", config)
    return root, vocoder, config, model


@pytest.fixture(scope="module")
def unit2mel(files):
    _, _, config, model = files
    return load_unit2mel(model, load_diffusion_config(config))


def _inputs(n: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    units = torch.randn(1, n, dim, generator=g)
    f0 = (200 + 40 * torch.sin(torch.arange(n) / 5.0)).reshape(1, n, 1)
    vol = torch.rand(1, n, 1, generator=g) * 0.3
    mel = torch.randn(1, n, 128, generator=g) * 2 - 5
    return units, f0, vol, mel


# ----------------------------------------------------------------------------------- layout and loading


def test_default_config_state_dict_equals_reference_in_order():
    ref = parse()["L"]
    model = Unit2Mel(768, 1, True, 128, 20, 512, 256, 1000, 0)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == ref.entries
    multi = Unit2Mel(768, 5, True, 128, 20, 512, 256, 1000, 0)
    keys = [(k, tuple(v.shape)) for k, v in multi.state_dict().items()]
    assert keys[6] == ("spk_embed.weight", (5, 256))  # the reference inserts it right after volume_embed.bias
    assert "spk_embed.weight  [5, 256]" in REFERENCE.read_text(encoding="utf-8")
    assert keys[:6] + keys[7:] == ref.entries
    state = model.state_dict()
    assert float(state["decoder.spec_min"]) == -12.0 and float(state["decoder.spec_max"]) == 2.0
    betas = state["decoder.betas"].double()
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert state["decoder.alphas_cumprod"][-1].item() == pytest.approx(float(np.prod(1 - np.linspace(1e-4, 0.02, 1000))),
                                                                       rel=1e-5)


def test_strict_loading_names_the_first_bad_key(files, tmp_path):
    _, _, config, model = files
    args = load_diffusion_config(config)
    ckpt = torch.load(model, weights_only=True)
    del ckpt["model"]["decoder.betas"]
    bad = tmp_path / "model_5.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="decoder.betas"):
        load_unit2mel(bad, args)
    args.model.n_layers = 4
    with pytest.raises(CheckpointError, match="residual_layers.3"):
        load_unit2mel(model, args)


# ----------------------------------------------------------------------------------- denoiser and samplers


def test_windowed_denoiser_equals_whole():
    torch.manual_seed(1)
    net = WaveNet(128, 4, 16, 8)
    torch.nn.init.normal_(net.output_projection.weight, std=0.2)
    x, cond = torch.randn(1, 1, 128, 70), torch.randn(1, 8, 70)
    t = torch.tensor([37])
    whole = net(x, t, cond)
    torch.testing.assert_close(net.forward_windowed(x, t, cond, 16), whole, rtol=0, atol=2e-6)
    # context reaches n_layers frames: one frame less per side changes the result (the test can fail)
    short = _ShortContext(128, 4, 16, 8)
    short.load_state_dict(net.state_dict())
    assert (short.forward_windowed(x, t, cond, 16) - whole).abs().max() > 1e-4


class _ShortContext(WaveNet):
    @property
    def context_frames(self) -> int:
        return 0


@pytest.mark.parametrize("method", ["dpm-solver++", "dpm-solver", "pndm", "ddim", "unipc", None])
def test_each_sampler_is_deterministic_under_a_seed(unit2mel, method):
    units, f0, vol, mel = _inputs(24)
    spk = torch.tensor([[2]])
    kwargs = dict(spk_id=spk, gt_spec=mel, infer=True, infer_speedup=10 if method else 1, method=method, k_step=30)
    torch.manual_seed(5)
    a = unit2mel(units, f0, vol, **kwargs)
    torch.manual_seed(5)
    b = unit2mel(units, f0, vol, **kwargs)
    torch.manual_seed(6)
    c = unit2mel(units, f0, vol, **kwargs)
    assert a.shape == (1, 24, 128)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3  # the seed matters: the shallow start is noised
    assert torch.isfinite(a).all()


def test_k_step_zero_returns_the_input_mel_and_too_large_k_is_an_error(unit2mel):
    units, f0, vol, mel = _inputs(10)
    out = unit2mel(units, f0, vol, spk_id=torch.tensor([[0]]), gt_spec=mel, k_step=0)
    assert torch.equal(out, mel)
    unit2mel.k_step_max = 200
    try:
        with pytest.raises(InferenceError, match="k_step 300 is larger than this diffusion model's k_step_max 200"):
            unit2mel(units, f0, vol, spk_id=torch.tensor([[0]]), gt_spec=mel, k_step=300)
        with pytest.raises(InferenceError, match="only refine"):
            unit2mel(units, f0, vol, spk_id=torch.tensor([[0]]), gt_spec=None)
    finally:
        unit2mel.k_step_max = 1000


def test_shallow_start_is_q_sample_at_k_minus_one():
    diff = GaussianDiffusion(WaveNet(128, 2, 8, 4))
    mel = torch.randn(1, 12, 128) - 4
    start = diff.norm_spec(mel).transpose(1, 2)[:, None]
    torch.manual_seed(3)
    noise = torch.randn_like(start)  # drawn in the transposed layout, as the original does
    expected = diff.sqrt_alphas_cumprod[49] * start + diff.sqrt_one_minus_alphas_cumprod[49] * noise
    torch.manual_seed(3)
    got = diff.q_sample(start, torch.tensor([49]))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(diff.denorm_spec(diff.norm_spec(mel)), mel, rtol=0, atol=1e-5)


class _Oracle:
    """The exact noise of data that is one fixed x0: eps = (x - sqrt(a) x0) / sqrt(1 - a) at (fractional) step t."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        self.x0 = x0
        self.log_a = torch.log(alphas_cumprod.double())
        self.calls: list[float] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = float(t.reshape(-1)[0])
        self.calls.append(step)
        lo = min(int(math.floor(step)), len(self.log_a) - 1)
        hi = min(lo + 1, len(self.log_a) - 1)
        w = step - lo
        # the solvers interpolate log sqrt(alpha_cumprod) linearly between steps; so does the oracle
        a = float(torch.exp((1 - w) * self.log_a[lo] + w * self.log_a[hi]))
        return ((x.double() - math.sqrt(a) * self.x0) / math.sqrt(1 - a)).float()


@pytest.mark.parametrize("method", ["dpm-solver++", "dpm-solver", "pndm", "ddim", "unipc"])
def test_samplers_recover_the_data_with_an_exact_denoiser(method):
    """With the exact noise of a point-mass x0 every deterministic solver must land on x0."""
    diff = GaussianDiffusion(WaveNet(128, 1, 4, 4))
    x0 = torch.linspace(-0.8, 0.8, 128 * 6).reshape(1, 1, 128, 6).double()
    oracle = _Oracle(x0, diff.alphas_cumprod)
    diff.denoise_fn.forward_windowed = lambda x, t, cond, window: oracle(x, t)
    mel = diff.denorm_spec(x0.float()).squeeze(1).transpose(1, 2)
    start = diff.norm_spec(mel).transpose(1, 2)[:, None]
    torch.manual_seed(0)
    noise = torch.randn_like(start).double()
    torch.manual_seed(0)
    out = diff.sample(torch.zeros(1, 4, 6), gt_spec=mel, k_step=100, method=method, speedup=10)
    # an exact ODE step keeps the noise direction: the end point at step 0 is sqrt(a0) x0 + sqrt(1 - a0) n
    a0 = float(diff.alphas_cumprod[0])
    if method in ("ddim", "pndm"):
        # 4.1 quirk: the start is noised to step k-1 = 99, but these walk range(0, k, speedup) = 90 .. 0,
        # so they read that start as if it were at step 90
        ac = diff.alphas_cumprod.double()
        x_start = ac[99].sqrt() * x0 + (1 - ac[99]).sqrt() * noise
        noise = (x_start - ac[90].sqrt() * x0) / (1 - ac[90]).sqrt()
    expected = diff.denorm_spec((math.sqrt(a0) * x0 + math.sqrt(1 - a0) * noise).float()).squeeze(1).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-3)
    calls = oracle.calls
    if method in ("ddim", "pndm"):
        assert calls[:2] == ([90.0, 80.0] if method == "ddim" else [90.0, 80.0])
        assert calls[-1] == 0.0 and len(calls) == samplers.denoiser_calls(method, 100, 10)
    else:
        # time inputs are the discrete step index of t in [1/k, 1]: 99 first, 0 last
        assert calls[0] == pytest.approx(99.0, abs=1e-4) and len(calls) == 10
        assert calls[1] == pytest.approx(99 - 9.9, abs=1e-3)


def test_only_diffusion_starts_from_noise_and_uses_k_step_max(unit2mel):
    units, f0, vol, _ = _inputs(8)
    calls = []
    original = unit2mel.decoder.denoise_fn.forward_windowed
    unit2mel.decoder.denoise_fn.forward_windowed = lambda x, t, c, w: (calls.append(float(t[0])), original(x, t, c, w))[1]
    try:
        torch.manual_seed(0)
        out = unit2mel(units, f0, vol, spk_id=torch.tensor([[1]]), gt_spec=None, infer_speedup=100,
                       method="dpm-solver++")
    finally:
        del unit2mel.decoder.denoise_fn.forward_windowed
    assert out.shape == (1, 8, 128) and len(calls) == 10 and calls[0] == pytest.approx(999.0, abs=1e-3)


# ----------------------------------------------------------------------------------- vocoder and enhancer


def test_chunked_vocoder_equals_whole(files):
    _, folder, _, _ = files
    vocoder = load_vocoder(folder)
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, 90, 128, generator=g) - 4
    f0 = 150 + 50 * torch.rand(1, 90, generator=g)
    torch.manual_seed(11)
    whole = vocode(vocoder, mel, f0, chunk_frames=0)
    torch.manual_seed(11)
    chunked = vocode(vocoder, mel, f0, chunk_frames=32)
    assert whole.shape == chunked.shape == (1, 90 * 512)
    assert (chunked - whole).abs().max() / whole.abs().max() < 1e-4


@pytest.mark.parametrize("key", [0, 3])
def test_enhancer_keeps_the_length_exact(files, key):
    _, folder, _, _ = files
    enhancer = Enhancer(load_vocoder(folder))
    voice = synth_singing("alto", 0.5, seed=2)
    audio = voice.audio[:22050 - 77]
    out = enhancer.enhance(audio, 44100, np.asarray(voice.f0, dtype=np.float32), 512, adaptive_key=key)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and np.abs(out).max() > 0


def test_missing_vocoder_is_a_one_line_error(tmp_path):

    with pytest.raises(PretrainedFileMissing, match="nsf_hifigan"):
        load_vocoder(tmp_path / "pretrain" / "nsf_hifigan")


def test_random_unit2mel_has_no_zero_output_layer(files):
    _, _, config, _ = files
    model = random_unit2mel(load_diffusion_config(config), seed=1)
    assert model.decoder.denoise_fn.output_projection.weight.abs().sum() > 0
