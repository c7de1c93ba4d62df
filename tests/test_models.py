"""SynthesizerTrn / MultiPeriodDiscriminator: reference state-dict compatibility and behaviour."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from models import MultiPeriodDiscriminator, SynthesizerTrn
from modules.attentions import MultiHeadAttention
from modules.config import HParams, load_template
from tests.support.models_refkeys import expected_variant, parse

torch.set_num_threads(1)

SECTIONS = parse()

# Section letter of state_dict_keys.txt -> model switches (on top of the default template).
VARIANTS: dict[str, dict] = {
    "B": {"vol_embedding": True},
    "C": {"speaker_embedding": True},
    "D": {"use_automatic_f0_prediction": False},
    "E": {"use_depthwise_conv": True},
    "F": {"flow_share_parameter": True},
    "G": {"use_transformer_flow": True},
    "H": {"use_transformer_flow": True, "flow_share_parameter": True},
    "I": {"vocoder_name": "nsf-snake-hifigan"},
}


def _hps(tiny: bool = False, **model_overrides) -> HParams:
    hps = HParams(**load_template(tiny=tiny))
    for key, value in model_overrides.items():
        hps.model[key] = value
    return hps


def _shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.fixture(scope="module")
def default_model() -> SynthesizerTrn:
    torch.manual_seed(0)
    return SynthesizerTrn.from_hparams(_hps())


@pytest.fixture(scope="module")
def tiny_model() -> SynthesizerTrn:
    torch.manual_seed(0)
    model = SynthesizerTrn.from_hparams(_hps(tiny=True, n_speakers=3)).eval()
    # Fresh flows are the identity (zero post convs); perturb them so the flow is exercised.
    with torch.no_grad():
        for layer in model.flow.flows[::2]:
            layer.post.weight.normal_(0, 0.02)
    return model


# ------------------------------------------------------------------ state-dict compatibility


def test_default_state_dict_equals_reference_in_order(default_model):
    assert _shapes(default_model) == SECTIONS["A"].entries
    assert sum(p.numel() for p in default_model.parameters()) == 52_402_957


def test_tiny_config_state_dict_equals_reference_in_order():
    model = SynthesizerTrn.from_hparams(_hps(tiny=True))
    assert _shapes(model) == SECTIONS["J"].entries
    # Shared WN: one module under flow.wn and every coupling, so the same tensor in the state dict.
    assert all(model.flow.flows[i].enc is model.flow.wn for i in (0, 2, 4, 6))


@pytest.mark.parametrize("letter", sorted(VARIANTS))
def test_variant_state_dict_equals_reference(letter):
    model = SynthesizerTrn.from_hparams(_hps(**VARIANTS[letter]))
    ours = _shapes(model)
    expected = expected_variant(SECTIONS, letter)
    assert len(ours) == len(expected)
    assert dict(ours) == expected
    # Keys the variant shares with the default keep the default's relative order.
    default_order = [k for k, _ in SECTIONS["A"].entries if k in expected]
    assert [k for k, _ in ours if k in dict(SECTIONS["A"].entries)] == default_order


def test_vol_embedding_keys_follow_emb_g():
    model = SynthesizerTrn.from_hparams(_hps(vol_embedding=True, use_automatic_f0_prediction=False))
    assert list(model.state_dict())[:3] == ["emb_g.weight", "emb_vol.weight", "emb_vol.bias"]


@pytest.fixture(scope="module")
def discriminator() -> MultiPeriodDiscriminator:
    torch.manual_seed(0)
    return MultiPeriodDiscriminator()


def test_discriminator_state_dict_equals_reference_in_order(discriminator):
    d = discriminator
    assert _shapes(d) == SECTIONS["K"].entries
    assert sum(p.numel() for p in d.parameters()) == 46_747_132


def test_reference_shaped_file_loads_strictly(default_model):
    """A community G_*.pth has exactly the reference names and shapes: strict loading must accept it."""
    state = {k: torch.full(shape, 0.5) for k, shape in SECTIONS["A"].entries}
    default_model.load_state_dict(state, strict=True)
    assert torch.all(default_model.emb_g.weight == 0.5)
    del state["emb_uv.weight"]
    with pytest.raises(RuntimeError, match="emb_uv.weight"):
        default_model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------ behaviour (tiny config, small T)


def _inputs(batch: int, frames: int, f0_hz: float = 220.0):
    torch.manual_seed(1)
    c = torch.randn(batch, 768, frames)
    f0 = torch.full((batch, frames), f0_hz)
    uv = torch.ones(batch, frames)
    uv[:, :3] = 0
    return c, f0, uv


def test_forward_output_shapes(tiny_model):
    model = tiny_model.train()
    try:
        c, f0, uv = _inputs(2, 30)
        spec = torch.rand(2, 1025, 30)
        lengths = torch.tensor([30, 24])
        y_hat, ids, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0 = model(
            c, f0, uv, spec, torch.LongTensor([[0], [2]]), lengths, lengths
        )
    finally:
        model.eval()
    assert y_hat.shape == (2, 1, 20 * 512)
    assert ids.shape == (2,) and int(ids[1]) <= 24 - 20
    assert z_mask.shape == (2, 1, 30) and z_mask[1, 0, 24:].sum() == 0
    for t in (z, z_p, m_p, logs_p, m_q, logs_q):
        assert t.shape == (2, 192, 30)
    assert pred_lf0.shape == norm_lf0.shape == lf0.shape == (2, 1, 30)
    expected_lf0 = 2595.0 * math.log10(1 + 220.0 / 700.0) / 500
    assert lf0[0, 0, 5].item() == pytest.approx(expected_lf0, rel=1e-6)


def test_infer_shapes_and_seeding(tiny_model):
    c, f0, uv = _inputs(1, 12)
    g = torch.LongTensor([[1]])
    a1, f0_out = tiny_model.infer(c, f0, uv, g)
    a2, _ = tiny_model.infer(c, f0, uv, g)
    assert a1.shape == (1, 1, 12 * 512)
    assert torch.equal(f0_out, f0)
    assert torch.equal(a1, a2)  # infer reseeds with 52468
    torch.manual_seed(5)
    a3, _ = tiny_model.infer(c, f0, uv, g, seed=None)
    assert not torch.equal(a1, a3)
    assert float(a1.abs().max()) <= 1.0


def test_predict_f0_replaces_f0(tiny_model):
    c, f0, uv = _inputs(1, 10)
    audio, f0_pred = tiny_model.infer(c, f0, uv, torch.LongTensor([0]), predict_f0=True)
    assert audio.shape == (1, 1, 10 * 512)
    assert f0_pred.shape == (1, 10)
    assert not torch.allclose(f0_pred, f0)


def test_float_speaker_embedding_equals_speaker_id(tiny_model):
    c, f0, uv = _inputs(1, 4)
    by_id, _ = tiny_model.infer(c, f0, uv, torch.LongTensor([2]))
    row = tiny_model.emb_g.weight[2].detach()
    static, _ = tiny_model.infer(c, f0, uv, row.view(1, -1, 1))
    varying, _ = tiny_model.infer(c, f0, uv, row.view(1, -1, 1).expand(1, -1, 4).contiguous())
    torch.testing.assert_close(static, by_id, rtol=0, atol=1e-6)
    torch.testing.assert_close(varying, by_id, rtol=0, atol=1e-5)


def test_decoder_equals_synthesize_of_excitation(tiny_model):
    torch.manual_seed(3)
    z = torch.randn(1, 192, 6)
    f0 = torch.linspace(100, 400, 6).unsqueeze(0)
    f0[0, 2] = 0
    g = tiny_model.embed_speaker(torch.LongTensor([1]))
    with torch.no_grad():
        torch.manual_seed(7)
        whole = tiny_model.dec(z, f0, g)
        torch.manual_seed(7)
        source = tiny_model.dec.excitation(f0)
        split = tiny_model.dec.synthesize(z, source, g)
    assert source.shape == (1, 1, 6 * 512)
    assert torch.equal(whole, split)


def test_remove_weight_norm_keeps_infer_output():
    torch.manual_seed(0)
    model = SynthesizerTrn.from_hparams(_hps(tiny=True, n_speakers=2)).eval()
    c, f0, uv = _inputs(1, 8)
    before, _ = model.infer(c, f0, uv, torch.LongTensor([1]))
    folded = model.remove_weight_norm()
    assert folded > 0
    assert not any(k.endswith("weight_g") for k in model.state_dict())
    after, _ = model.infer(c, f0, uv, torch.LongTensor([1]))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_small_variants_run_forward_and_infer():
    """Snake vocoder, transformer flow and volume embedding on a small custom size, with shapes checked."""
    torch.manual_seed(0)
    model = SynthesizerTrn(
        spec_channels=65, segment_size=4, inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2,
        n_layers=2, kernel_size=3, p_dropout=0.1, resblock="2", resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 3]], upsample_rates=[4, 4], upsample_initial_channel=32,
        upsample_kernel_sizes=[8, 8], gin_channels=8, ssl_dim=12, n_speakers=2, vol_embedding=True,
        vocoder_name="nsf-snake-hifigan", use_transformer_flow=True, use_automatic_f0_prediction=False,
    )
    c, f0, uv, vol = torch.randn(1, 12, 9), torch.full((1, 9), 300.0), torch.ones(1, 9), torch.rand(1, 9)
    out = model(c, f0, uv, torch.rand(1, 65, 9), torch.LongTensor([1]), torch.tensor([9]), torch.tensor([9]), vol=vol)
    assert out[0].shape == (1, 1, 4 * 16)
    assert out[4] is None and out[5] is None and out[6] is None
    model.eval()
    audio, _ = model.infer(c, f0, uv, torch.LongTensor([0]), vol=vol)
    assert audio.shape == (1, 1, 9 * 16)
    assert torch.isfinite(audio).all()


def test_unknown_vocoder_falls_back_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        model = SynthesizerTrn(
            65, 4, 8, 8, 16, 2, 1, 3, 0.0, "1", [3], [[1, 3, 5]], [4], 8, [8], 4, 6, 1, vocoder_name="bogus"
        )
    assert model.vocoder_name == "nsf-hifigan"
    assert "bogus" in caplog.text


def test_discriminator_outputs(discriminator):
    d = discriminator
    y, y_hat = torch.randn(1, 1, 1000), torch.randn(1, 1, 1000)
    with torch.no_grad():
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = d(y, y_hat)
    assert len(y_d_rs) == len(y_d_gs) == 6
    assert [len(f) for f in fmap_rs] == [7, 6, 6, 6, 6, 6]
    assert y_d_rs[0].shape == (1, 4)  # 1000 / 4^4 rounded up by the convs' padding
    assert fmap_rs[1][0].shape == (1, 32, 167, 2)  # period 2: 500 rows -> ceil(500/3)


# ------------------------------------------------------------------ long-input attention


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_attention_equals_unblocked(causal):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 16, 2, window_size=None if causal else 4).eval()
    x = torch.randn(2, 16, 203)
    mask = torch.ones(2, 1, 203)
    mask[1, :, 150:] = 0
    with torch.no_grad():
        full = attn(x, x, x_mask=None if causal else mask, causal=causal)
        blocked = attn(x, x, x_mask=None if causal else mask, causal=causal, block_size=37)
    torch.testing.assert_close(blocked, full, rtol=1e-5, atol=1e-6)


def test_relative_attention_matches_dense_reference():
    """The banded relative-position terms equal a dense [T, T] construction of the same maths."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 8, 2, window_size=4).eval()
    x = torch.randn(1, 8, 20)
    with torch.no_grad():
        ours = attn(x, x)
        q = attn.conv_q(x).view(1, 2, 4, 20).transpose(2, 3) / 2.0
        k = attn.conv_k(x).view(1, 2, 4, 20).transpose(2, 3)
        v = attn.conv_v(x).view(1, 2, 4, 20).transpose(2, 3)
        rel = torch.arange(20).view(1, -1) - torch.arange(20).view(-1, 1)  # j - i
        inside = rel.abs() <= 4
        ek = attn.emb_rel_k[0][(rel.clamp(-4, 4) + 4)] * inside.unsqueeze(-1)  # [T, T, d]
        ev = attn.emb_rel_v[0][(rel.clamp(-4, 4) + 4)] * inside.unsqueeze(-1)
        scores = q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, ek)
        p = scores.softmax(-1)
        out = p @ v + torch.einsum("bhij,ijd->bhid", p, ev)
        dense = attn.conv_o(out.transpose(2, 3).reshape(1, 8, 20))
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)


def test_long_padded_input_switches_to_blocks_automatically():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 8, 2, window_size=4).eval()
    attn.block_threshold = 64 * 64  # pretend 100 frames is "long"
    attn.block_elements = 100 * 2 * 16  # over batch x heads: 16 query rows per block
    x = torch.randn(1, 8, 100)
    x_mask = (torch.arange(100) < 90).float().view(1, 1, 100)  # padding: the fused kernel does not apply
    calls = []
    original = attn._attend_block
    attn._attend_block = lambda *a, **k: calls.append(a[0].size(2)) or original(*a, **k)
    with torch.no_grad():
        out = attn(x, x, x_mask=x_mask)
    assert calls == [16] * 6 + [4]
    attn._attend_block = original
    attn.block_threshold = 10 ** 9
    with torch.no_grad():
        torch.testing.assert_close(out, attn(x, x, x_mask=x_mask), rtol=1e-5, atol=1e-6)


def _long_attention(**kwargs) -> MultiHeadAttention:
    attn = MultiHeadAttention(8, 8, 2, **kwargs).eval()
    attn.block_threshold = 64 * 64
    attn.block_elements = 100 * 2 * 16
    return attn


def test_long_unmasked_input_takes_the_fused_kernel_with_a_strong_band():
    torch.manual_seed(1)
    attn = _long_attention(window_size=4)
    attn.block_elements = 2 * 4 * 30  # the band correction in chunks of 30 rows (edges cross chunks)
    with torch.no_grad():
        attn.emb_rel_k.mul_(20.0)  # relative logits of several units: the band correction matters
        attn.emb_rel_v.mul_(20.0)
    x = torch.randn(1, 8, 100)
    calls = []
    original = attn._attend_block
    attn._attend_block = lambda *a, **k: calls.append(a[3]) or original(*a, **k)
    with torch.no_grad():
        fused = attn(x, x, x_mask=torch.ones(1, 1, 100))  # an all-valid mask counts as none
        attn._attend_block = original
        blocks = attn(x, x, block_size=16)
        one_shot = attn(x, x, block_size=100)
    assert calls == []
    assert (fused - blocks).abs().max() > 0  # really another computation
    torch.testing.assert_close(fused, one_shot, rtol=0, atol=1e-5 * float(one_shot.abs().max()))
    torch.testing.assert_close(blocks, one_shot, rtol=1e-5, atol=1e-6)


def test_fused_attention_recomputes_rows_whose_band_correction_is_unsafe():
    torch.manual_seed(0)
    attn = _long_attention(window_size=4, proximal_init=True)
    x = torch.randn(1, 8, 100) * 0.1
    x[:, :, 50] *= 100  # rows 50 and 70 attend almost only to themselves ...
    x[:, :, 70] *= 100
    with torch.no_grad():
        q50 = attn.conv_q(x).view(1, 2, 4, 100)[0, :, :, 50].mean(0)
        attn.emb_rel_k[0, 4] = -50 * q50 / q50.norm()  # ... and the offset-0 bias wipes out (row 50) or overflows
    calls = []
    original = attn._attend_block
    attn._attend_block = lambda *a, **k: calls.append(a[3]) or original(*a, **k)
    with torch.no_grad():
        out = attn(x, x)
        attn._attend_block = original
        one_shot = attn(x, x, block_size=100)
    assert calls == [50, 70]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, one_shot, rtol=0, atol=1e-5 * float(one_shot.abs().max()))


def test_long_causal_attention_takes_the_fused_kernel():
    torch.manual_seed(2)
    attn = _long_attention(proximal_init=True)
    x = torch.randn(1, 8, 100)
    calls = []
    original = attn._attend_block
    attn._attend_block = lambda *a, **k: calls.append(a[3]) or original(*a, **k)
    with torch.no_grad():
        fused = attn(x, x, causal=True)
        attn._attend_block = original
        one_shot = attn(x, x, causal=True, block_size=100)
    assert calls == []
    torch.testing.assert_close(fused, one_shot, rtol=1e-5, atol=1e-6)


def test_discriminator_width_scales_the_weights_and_keeps_the_keys():


    full, quarter = MultiPeriodDiscriminator(False, 1.0), MultiPeriodDiscriminator(False, 0.25)
    n_full = sum(p.numel() for p in full.parameters())
    n_quarter = sum(p.numel() for p in quarter.parameters())
    assert n_full == 46_747_132  # so-vits-svc 4.1's discriminator (pretrained D_0.pth files fit it)
    assert n_quarter < n_full / 15 and list(full.state_dict()) == list(quarter.state_dict())
    y = torch.randn(2, 1, 4096)
    real, fake, fmap_real, _ = quarter(y, y)
    assert len(real) == 6 and all(torch.equal(a, b) for a, b in zip(real, fake))
    with pytest.raises(ValueError, match="discriminator width 0.3"):
        MultiPeriodDiscriminator(False, 0.3)


def test_mask_unvoiced_f0_silences_the_harmonic_source_on_unvoiced_frames_only():
    """Off (the original): the interpolated F0 drives the decoder everywhere. On: unvoiced frames get F0 0,
    and a fully voiced input converts exactly as without the switch."""
    hps_off, hps_on = _hps(tiny=True), _hps(tiny=True, mask_unvoiced_f0=True)
    torch.manual_seed(0)
    off = SynthesizerTrn.from_hparams(hps_off).eval()
    on = SynthesizerTrn.from_hparams(hps_on).eval()
    on.load_state_dict(off.state_dict())  # same keys: the switch adds no weights
    frames = 40
    c, f0 = torch.randn(1, hps_off.model.ssl_dim, frames), torch.full((1, frames), 220.0)
    uv = torch.ones(1, frames)
    assert torch.equal(on.infer(c, f0, uv, noise_scale=0.4)[0], off.infer(c, f0, uv, noise_scale=0.4)[0])
    uv[:, 15:30] = 0
    assert torch.equal(on.source_f0(f0, uv)[0, 15:30], torch.zeros(15))
    assert torch.equal(off.source_f0(f0, uv), f0)
    audio_on, f0_on = on.infer(c, f0, uv, noise_scale=0.4)
    audio_off, f0_off = off.infer(c, f0, uv, noise_scale=0.4)
    assert torch.equal(f0_on, f0_off)  # the F0 reported back stays the contour that was asked for
    assert (audio_on - audio_off).abs().max() > 1e-3 * audio_off.abs().max()


@pytest.mark.parametrize("causal", [False, True])
def test_ffn_in_pieces_equals_the_whole_sequence(causal, monkeypatch):
    """Long inputs at inference run the FFN piece by piece with the convolutions' context: same values."""
    from modules import attentions

    torch.manual_seed(0)
    ffn = attentions.FFN(8, 8, 32, 3, p_dropout=0.1, causal=causal).eval()
    x, mask = torch.randn(1, 8, 100), torch.ones(1, 1, 100)
    mask[..., 90:] = 0
    with torch.no_grad():
        whole = ffn(x, mask)
        monkeypatch.setattr(attentions, "FFN_CHUNK_FRAMES", 16)
        calls = []
        original_conv = ffn.conv_1.forward
        monkeypatch.setattr(ffn.conv_1, "forward", lambda t: calls.append(t.size(-1)) or original_conv(t))
        pieces = ffn(x, mask)
    assert len(calls) == 7 and max(calls) <= 16 + 2 * 2 + 2  # 7 pieces of 16 frames, context and padding
    assert torch.equal(pieces, whole)
