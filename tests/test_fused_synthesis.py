"""The fused channels-last CPU decoder (vdecoder.fused_synthesis) against the generator's own synthesize."""
from __future__ import annotations

import pytest
import torch

from modules.config import HParams
from tests.support.tiny_models import random_generator, tiny_config_dict
from vdecoder.fused_synthesis import FusedSynthesis, cpu_synthesis, supported
from vdecoder.nsf_hifigan import Generator, GeneratorConfig

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs torch with oneDNN")


def _inputs(gen: Generator, frames: int, seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    x = torch.randn(1, gen.config.in_channels, frames, generator=rng)
    source = torch.tanh(torch.randn(1, 1, frames * gen.upp, generator=rng))
    g = torch.randn(1, gen.config.gin_channels, 1, generator=rng) if gen.config.gin_channels else None
    return x, source, g


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_fused_equals_eager_synthesis(resblock):
    hps = HParams(**tiny_config_dict({"resblock": resblock, "resblock_dilation_sizes": [[1, 3, 5]] * 3
                                      if resblock == "1" else [[1, 2]] * 3}))
    model = random_generator(hps, seed=5)
    model.remove_weight_norm()
    gen = model.dec
    x, source, g = _inputs(gen, 37)
    with torch.no_grad():
        want = gen.synthesize(x, source, g)
        got = FusedSynthesis(gen)(x, source, g)
        unpacked = FusedSynthesis(gen, pack=False)(x, source, g)
    assert got.shape == want.shape == (1, 1, 37 * gen.upp)
    assert _rel(got, want) < 1e-5
    assert _rel(unpacked, want) < 1e-5
    # a real comparison: another input gives another output
    assert _rel(FusedSynthesis(gen)(*_inputs(gen, 37, seed=1)), want) > 0.1


def test_fused_bf16_is_close_to_fp32():
    hps = HParams(**tiny_config_dict({}))
    model = random_generator(hps, seed=6)
    model.remove_weight_norm()
    gen = model.dec
    x, source, g = _inputs(gen, 20)
    with torch.no_grad():
        want = gen.synthesize(x, source, g).double()
        got = FusedSynthesis(gen, torch.bfloat16)(x, source, g)
    assert got.dtype == torch.bfloat16
    snr = 10 * torch.log10(want.pow(2).sum() / (got.double() - want).pow(2).sum())
    assert 30 < float(snr) < 80  # bf16 rounding: clearly not fp32, still within 30 dB


def test_standalone_vocoder_without_speaker_condition():
    gen = Generator(GeneratorConfig(in_channels=16, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4],
                                    upsample_initial_channel=32, resblock_kernel_sizes=[3, 5],
                                    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], sampling_rate=8000)).eval()
    gen.remove_weight_norm()
    x, source, _ = _inputs(gen, 25)
    with torch.no_grad():
        assert _rel(cpu_synthesis(gen)(x, source), gen.synthesize(x, source)) < 1e-5


def test_snake_decoders_keep_the_eager_path():
    hps = HParams(**tiny_config_dict({"vocoder_name": "nsf-snake-hifigan"}))
    model = random_generator(hps, seed=7)
    assert not supported(model.dec)
    assert cpu_synthesis(model.dec) == model.dec.synthesize
    with pytest.raises(ValueError, match="leaky-ReLU"):
        FusedSynthesis(model.dec)
