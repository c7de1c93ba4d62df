"""Synthesis precision: --precision names to dtypes, and reduced-precision output against fp32."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

import inference_main
from modules import device as device_mod
from modules.config import HParams
from modules.device import inference_dtype
from modules.errors import ConfigError
from modules.inference import PieceFeatures, SvcEngine
from tests.support.tiny_models import random_generator, tiny_config_dict

CPU, GPU = torch.device("cpu"), torch.device("cuda:0")  # device objects only: nothing runs on the GPU


def test_names_map_to_dtypes():
    assert inference_dtype("fp32", CPU) == torch.float32
    assert inference_dtype("bf16", GPU) == torch.bfloat16
    assert inference_dtype("fp16", GPU) == torch.float16
    assert inference_dtype("auto", GPU) == torch.float16
    with pytest.raises(ConfigError, match="precision 'fp8' is not known; use one of fp32, bf16, fp16, auto"):
        inference_dtype("fp8", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_the_cpu_follows_native_bf16(native, monkeypatch, caplog):
    monkeypatch.setattr(device_mod, "cpu_has_fast_half", lambda dtype=torch.bfloat16: native)
    with caplog.at_level(logging.INFO, logger="modules.device"):
        dtype = inference_dtype("auto", CPU)
    assert dtype == (torch.bfloat16 if native else torch.float32)
    assert ("no native bf16" in caplog.text) is (not native)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modules.device"):
        assert inference_dtype("bf16", CPU) == torch.bfloat16  # asked for explicitly: honoured
    assert ("emulated" in caplog.text) is (not native)


def test_bf16_synthesis_is_within_30_db_of_fp32():
    hps = HParams(**tiny_config_dict({}))
    model = random_generator(hps, seed=11)
    model.remove_weight_norm()
    n = 40
    gen = torch.Generator().manual_seed(3)
    feats = PieceFeatures(torch.randn(1, hps.model.ssl_dim, n, generator=gen),
                          180 + 40 * torch.sin(torch.arange(n) / 5.0)[None], torch.ones(1, n), None)
    reference = SvcEngine(copy.deepcopy(model), hps, encoder=object(), precision="fp32")
    engine = SvcEngine(model, hps, encoder=object(), precision="bf16")
    assert engine.fast and engine.dtype == torch.bfloat16
    # On the CPU the decoder's filter path is held in bf16; the harmonic source (float64 phases) is not.
    dec = engine.model.dec
    assert dec.conv_pre.weight.dtype == dec.resblocks[0].convs1[0].weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in dec.m_source.parameters())
    assert reference.model.dec.conv_pre.weight.dtype == torch.float32
    g = engine.speaker_condition(1)
    fast, _ = engine.synthesize(feats, g)
    ref, _ = reference.synthesize(feats, g)
    assert fast.dtype == ref.dtype == torch.float32 and fast.shape == ref.shape
    snr = 10 * torch.log10(ref.double().pow(2).sum() / (fast.double() - ref.double()).pow(2).sum())
    assert 30 < float(snr) < 90  # reduced precision really ran, and stayed close


def test_cli_takes_a_precision():
    parser = inference_main.build_parser()
    args = parser.parse_args(["-n", "x.wav", "--precision", "bf16"])
    assert args.precision == "bf16" and args.fast is False
    assert parser.parse_args(["-n", "x.wav"]).precision is None
    with pytest.raises(SystemExit):
        parser.parse_args(["-n", "x.wav", "--precision", "int8"])
