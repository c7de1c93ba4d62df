"""The speech encoders beyond ContentVec / HuBERT-Soft, each loaded from a small seeded random-weight
file in its published layout: ONNX encoders, cnhubertlarge, whisper-ppg(-large), wavlmbase+, dphubert."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modules.errors import CheckpointError, PretrainedFileMissing
from vencoder import SPEECH_ENCODERS, clear_cache, encoder_names, get_speech_encoder
from vencoder.random_weights import tiny_onnx_module, write_onnx_encoder

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


def test_all_thirteen_encoders_are_built_with_the_published_widths():
    assert set(encoder_names()) == set(SPEECH_ENCODERS) and len(SPEECH_ENCODERS) == 13
    widths = {name: spec.dim for name, spec in SPEECH_ENCODERS.items()}
    assert widths == {"vec768l12": 768, "vec256l9": 256, "hubertsoft": 256, "whisper-ppg": 1024,
                      "whisper-ppg-large": 1280, "cnhubertlarge": 1024, "dphubert": 768, "wavlmbase+": 768,
                      "vec256l9-onnx": 256, "vec256l12-onnx": 256, "vec768l9-onnx": 768, "vec768l12-onnx": 768,
                      "hubertsoft-onnx": 256}
    from vencoder import encoder_class

    for name in SPEECH_ENCODERS:
        cls = encoder_class(name)
        assert (cls.name, cls.dim) == (name, SPEECH_ENCODERS[name].dim) and cls.weight_file


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
    with pytest.raises(CheckpointError, match=r"hubert-soft\.onnx: not a loadable ONNX model"):
        get_speech_encoder("hubertsoft-onnx", pretrain_dir=tmp_path)


def test_cnhubertlarge_all_layers_final_layer_norm_raw_waveform(tmp_path):
    from vencoder.fairseq_checkpoint import load_fairseq_checkpoint
    from vencoder.random_weights import write_fairseq_hubert_large

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


# ---- whisper-ppg: tiny context (100 units = 2 s windows) so the >window path runs on short audio ----
W_CTX, W_DIM, W_HEADS = 100, 32, 4


def reference_whisper_window(sd: dict[str, torch.Tensor], audio: np.ndarray, n_ctx: int, heads: int) -> torch.Tensor:
    """Independent single-window whisper: numpy log-mel (pad/trim to the window), functional encoder. [n_ctx, D]"""
    import librosa
    import scipy.signal

    window = n_ctx * 320
    audio = np.pad(audio, (0, max(0, window - len(audio))))[:window].astype(np.float64)
    padded = np.pad(audio, (200, 200), mode="reflect")
    hann = scipy.signal.get_window("hann", 400)
    frames = np.stack([padded[i * 160: i * 160 + 400] * hann for i in range(window // 160 + 1)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, 201]
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) @ power[:-1].T
    log = np.log10(np.maximum(mel, 1e-10))
    log = (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0
    x = torch.from_numpy(log).float()[None]
    e = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    x = F.gelu(F.conv1d(x, e["conv1.weight"], e["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, e["conv2.weight"], e["conv2.bias"], stride=2, padding=1))[0].T
    x = x + e["positional_embedding"]
    dim = x.size(1)
    for n in range(len({k.split(".")[1] for k in e if k.startswith("blocks.")})):
        p = f"blocks.{n}."
        h = F.layer_norm(x, (dim,), e[p + "attn_ln.weight"], e[p + "attn_ln.bias"])
        q = (h @ e[p + "attn.query.weight"].T + e[p + "attn.query.bias"]).view(-1, heads, dim // heads).transpose(0, 1)
        k = (h @ e[p + "attn.key.weight"].T).view(-1, heads, dim // heads).transpose(0, 1)
        v = (h @ e[p + "attn.value.weight"].T + e[p + "attn.value.bias"]).view(-1, heads, dim // heads).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(1, 2) / (dim // heads) ** 0.5, dim=-1) @ v
        x = x + F.linear(a.transpose(0, 1).reshape(-1, dim), e[p + "attn.out.weight"], e[p + "attn.out.bias"])
        h = F.layer_norm(x, (dim,), e[p + "mlp_ln.weight"], e[p + "mlp_ln.bias"])
        h = F.linear(F.gelu(F.linear(h, e[p + "mlp.0.weight"], e[p + "mlp.0.bias"])), e[p + "mlp.2.weight"],
                     e[p + "mlp.2.bias"])
        x = x + h
    return F.layer_norm(x, (dim,), e["ln_post.weight"], e["ln_post.bias"])


@pytest.fixture(scope="module")
def whisper_pretrain(tmp_path_factory) -> Path:
    from vencoder.random_weights import write_whisper

    folder = tmp_path_factory.mktemp("whisper")
    write_whisper(folder / "medium.pt", n_ctx=W_CTX, dim=W_DIM, heads=W_HEADS, layers=2, seed=0)
    write_whisper(folder / "large-v2.pt", n_ctx=W_CTX, dim=40, heads=W_HEADS, layers=1, seed=1, half=True)
    return folder


def test_whisper_short_clip_equals_single_padded_window(whisper_pretrain):
    from vencoder.random_weights import whisper_state

    encoder = get_speech_encoder("whisper-ppg", pretrain_dir=whisper_pretrain)
    sd = whisper_state(80, W_CTX, W_DIM, 2, 0)
    for n in (16000, 32000, 32319):  # shorter than, equal to, and a partial unit past the 2-s context
        wav = _wav(n, seed=n)
        units = encoder.encode(wav)
        assert units.shape == (1, W_DIM, n // 320) == (1, encoder.dim, encoder.n_frames(n))
        expected = reference_whisper_window(sd, wav.numpy(), W_CTX, W_HEADS)[: n // 320]
        torch.testing.assert_close(units[0].T, expected, atol=2e-4, rtol=1e-4)
    large = get_speech_encoder("whisper-ppg-large", pretrain_dir=whisper_pretrain)
    assert large.encode(_wav(9000)).shape == (1, 40, 9000 // 320)


def test_whisper_long_clip_joins_overlapping_windows(whisper_pretrain):
    from vencoder.random_weights import whisper_state
    from vencoder.whisper_ppg import window_starts, window_unit_spans

    encoder = get_speech_encoder("whisper-ppg", pretrain_dir=whisper_pretrain)
    sd = whisper_state(80, W_CTX, W_DIM, 2, 0)
    n = 80000 + 123  # 5 s: three 2-s windows with hop 83 units
    wav = _wav(n, seed=5)
    units = encoder.encode(wav)[0].T
    assert units.shape == (n // 320, W_DIM)
    starts = window_starts(n, W_CTX * 320, 83 * 320)
    spans = window_unit_spans(n, starts, W_CTX)
    assert starts == [0, 26560, 48000] and spans[0][0] == 0 and spans[-1][1] == n // 320
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for start, (begin, end) in zip(starts, spans):
        alone = reference_whisper_window(sd, wav[start: start + W_CTX * 320].numpy(), W_CTX, W_HEADS)
        torch.testing.assert_close(units[begin:end], alone[begin - start // 320: end - start // 320],
                                   atol=2e-4, rtol=1e-4)
    # Deterministic, and clips batched together give the clip-by-clip result.
    batch = encoder.encode_batch([_wav(7000, 1), wav, _wav(40000, 2)])
    torch.testing.assert_close(batch[1][0].T, units)
    torch.testing.assert_close(batch[2], encoder.encode(_wav(40000, 2)))


def test_whisper_bad_files(tmp_path):

    with pytest.raises(PretrainedFileMissing, match=r"medium\.pt.*whisper"):
        get_speech_encoder("whisper-ppg", pretrain_dir=tmp_path)
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {}}, tmp_path / "large-v2.pt")
    with pytest.raises(CheckpointError, match=r"large-v2\.pt: 'dims' lacks"):
        get_speech_encoder("whisper-ppg-large", pretrain_dir=tmp_path)


# ---- wavlmbase+ ----

def test_wavlm_relative_position_buckets():
    from vencoder.wavlm import relative_position_buckets

    b = relative_position_buckets(1, 2000, 320, 800)[0]  # key k minus query 0 = distance k
    assert [int(b[d]) for d in (0, 1, 79, 80, 100, 799, 800, 1999)] == [0, 161, 239, 240, 247, 319, 319, 319]
    back = relative_position_buckets(2000, 1, 320, 800)[:, 0]  # negative distances
    assert [int(back[d]) for d in (1, 79, 80, 100, 1999)] == [1, 79, 80, 87, 159]


def reference_wavlm(sd: dict[str, torch.Tensor], cfg: dict, wav: torch.Tensor) -> torch.Tensor:
    """Independent single-clip post-LN WavLM forward with the gated relative position bias. [T, D]"""
    from vencoder.wavlm import relative_position_buckets

    x = wav[None, None]
    for i, stride in enumerate([5, 2, 2, 2, 2, 2, 2]):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        if i == 0:
            x = F.group_norm(x, x.size(1), sd["feature_extractor.conv_layers.0.2.weight"],
                             sd["feature_extractor.conv_layers.0.2.bias"])
        x = F.gelu(x)
    x = F.layer_norm(x[0].T, (x.size(1),), sd["layer_norm.weight"], sd["layer_norm.bias"])
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    dim, heads = x.size(1), cfg["encoder_attention_heads"]
    hd = dim // heads
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    pos = F.conv1d(x.T[None], g * v / v.norm(dim=(0, 1), keepdim=True), sd["encoder.pos_conv.0.bias"],
                   padding=v.size(-1) // 2, groups=dim // v.size(1))[0, :, :-1].T
    x = F.layer_norm(x + F.gelu(pos), (dim,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    t = x.size(0)
    buckets = relative_position_buckets(t, t, cfg["num_buckets"], cfg["max_distance"])
    rel = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"][buckets].permute(2, 0, 1)  # [H, T, T]
    for n in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{n}."
        lin = {c: F.linear(x, sd[p + f"self_attn.{c}_proj.weight"], sd[p + f"self_attn.{c}_proj.bias"])
               .view(t, heads, hd).transpose(0, 1) for c in "qkv"}
        gate = F.linear(x.view(t, heads, hd).transpose(0, 1), sd[p + "self_attn.grep_linear.weight"],
                        sd[p + "self_attn.grep_linear.bias"]).view(heads, t, 2, 4).sum(-1).sigmoid()
        scale = gate[..., 0:1] * (gate[..., 1:2] * sd[p + "self_attn.grep_a"][0] - 1) + 2  # [H, T, 1]
        scores = lin["q"] @ lin["k"].transpose(1, 2) / hd ** 0.5 + scale * rel
        a = (scores.softmax(-1) @ lin["v"]).transpose(0, 1).reshape(t, dim)
        x = x + F.linear(a, sd[p + "self_attn.out_proj.weight"], sd[p + "self_attn.out_proj.bias"])
        x = F.layer_norm(x, (dim,), sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"])
        h = F.linear(F.gelu(F.linear(x, sd[p + "fc1.weight"], sd[p + "fc1.bias"])), sd[p + "fc2.weight"],
                     sd[p + "fc2.bias"])
        x = F.layer_norm(x + h, (dim,), sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"])
    return x


def test_wavlm_matches_reference_frames_and_batching(tmp_path):
    from vencoder.random_weights import wavlm_cfg, wavlm_state, write_wavlm

    # max_distance 40 / 40 buckets: a 1-s clip (49 frames) reaches the log-spaced and capped buckets.
    sizes = {"layers": 2, "dim": 32, "heads": 4, "num_buckets": 40, "max_distance": 40}
    write_wavlm(tmp_path / "WavLM-Base+.pt", seed=3, **sizes)
    encoder = get_speech_encoder("wavlmbase+", pretrain_dir=tmp_path)
    wav = _wav(16000, seed=4)
    units = encoder.encode(wav)
    assert units.shape == (1, 32, 49) == (1, encoder.dim, encoder.n_frames(16000))
    cfg = wavlm_cfg(**sizes)
    expected = reference_wavlm(wavlm_state(cfg, seed=3), cfg, wav)
    torch.testing.assert_close(units[0].T, expected, atol=2e-4, rtol=1e-4)
    batch = encoder.encode_batch([_wav(6000, 1), wav, _wav(720, 2)])
    assert [u.shape[-1] for u in batch] == [18, 49, 2]
    torch.testing.assert_close(batch[1], units, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(batch[0], encoder.encode(_wav(6000, 1)), atol=2e-4, rtol=1e-4)


# ---- dphubert ----

def reference_dphubert(sd: dict[str, torch.Tensor], cfg: dict, wav: torch.Tensor) -> torch.Tensor:
    """Independent single-clip forward of the pruned post-LN model in torchaudio's naming. [T, D]"""
    x = wav[None, None]
    for i, (_out, _k, stride) in enumerate(cfg["extractor_conv_layer_config"]):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.conv.weight"], stride=stride)
        if i == 0:
            x = F.group_norm(x, x.size(1), sd["feature_extractor.conv_layers.0.layer_norm.weight"],
                             sd["feature_extractor.conv_layers.0.layer_norm.bias"])
        x = F.gelu(x)
    p = "encoder.feature_projection."
    x = F.layer_norm(x[0].T, (x.size(1),), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
    x = F.linear(x, sd[p + "projection.weight"], sd[p + "projection.bias"])
    dim, hd, t = x.size(1), cfg["encoder_head_dim"], x.size(0)
    p = "encoder.transformer."
    v, g = sd[p + "pos_conv_embed.conv.weight_v"], sd[p + "pos_conv_embed.conv.weight_g"]
    pos = F.conv1d(x.T[None], g * v / v.norm(dim=(0, 1), keepdim=True), sd[p + "pos_conv_embed.conv.bias"],
                   padding=v.size(-1) // 2, groups=dim // v.size(1))[0, :, :-1].T
    x = F.layer_norm(x + F.gelu(pos), (dim,), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"])
    for n, heads in enumerate(cfg["encoder_num_heads"]):
        q = f"{p}layers.{n}."
        if cfg["encoder_use_attention"][n]:
            proj = {c: F.linear(x, sd[q + f"attention.{c}_proj.weight"], sd[q + f"attention.{c}_proj.bias"])
                    .view(t, heads, hd).transpose(0, 1) for c in "qkv"}
            a = torch.softmax(proj["q"] @ proj["k"].transpose(1, 2) / hd ** 0.5, -1) @ proj["v"]
            x = x + F.linear(a.transpose(0, 1).reshape(t, heads * hd), sd[q + "attention.out_proj.weight"],
                             sd[q + "attention.out_proj.bias"])
        x = F.layer_norm(x, (dim,), sd[q + "layer_norm.weight"], sd[q + "layer_norm.bias"])
        if cfg["encoder_use_feed_forward"][n]:
            h = F.gelu(F.linear(x, sd[q + "feed_forward.intermediate_dense.weight"],
                                sd[q + "feed_forward.intermediate_dense.bias"]))
            x = x + F.linear(h, sd[q + "feed_forward.output_dense.weight"], sd[q + "feed_forward.output_dense.bias"])
        x = F.layer_norm(x, (dim,), sd[q + "final_layer_norm.weight"], sd[q + "final_layer_norm.bias"])
    return x


def test_dphubert_pruned_layers_match_reference(tmp_path):
    from vencoder.random_weights import dphubert_config, dphubert_state, write_dphubert

    write_dphubert(tmp_path / "DPHuBERT-sp0.75.pth", seed=5)
    encoder = get_speech_encoder("dphubert", pretrain_dir=tmp_path)
    layers = encoder.model.encoder.transformer.layers
    assert [layer.attention is None for layer in layers] == [False, True, False, False]
    assert [layer.feed_forward is None for layer in layers] == [False, False, True, False]
    wav = _wav(16000, seed=6)
    units = encoder.encode(wav)
    assert units.shape == (1, 32, 49) == (1, encoder.dim, encoder.n_frames(16000))
    expected = reference_dphubert(dphubert_state(dphubert_config(), seed=5), dphubert_config(), wav)
    torch.testing.assert_close(units[0].T, expected, atol=2e-4, rtol=1e-4)
    batch = encoder.encode_batch([_wav(6000, 1), wav])
    torch.testing.assert_close(batch[1], units, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(batch[0], encoder.encode(_wav(6000, 1)), atol=2e-4, rtol=1e-4)


def test_dphubert_bad_config_and_missing_weight(tmp_path):
    from vencoder.random_weights import dphubert_config, dphubert_state

    cfg = dphubert_config()
    state = dphubert_state(cfg)
    del state["encoder.transformer.layers.2.attention.q_proj.weight"]
    torch.save({"config": cfg, "state_dict": state}, tmp_path / "DPHuBERT-sp0.75.pth")
    with pytest.raises(CheckpointError, match=r"DPHuBERT-sp0\.75\.pth \(DPHuBERT\): '.*layers\.2\.attention\.q_proj.*' is missing from the file"):
        get_speech_encoder("dphubert", pretrain_dir=tmp_path)
    torch.save({"config": {**cfg, "encoder_num_heads": [1]}, "state_dict": state}, tmp_path / "DPHuBERT-sp0.75.pth")
    with pytest.raises(CheckpointError, match="encoder_num_heads has 1 entries for 4 layers"):
        get_speech_encoder("dphubert", pretrain_dir=tmp_path)


# ---- the command lines: every new encoder name from config to unit files ----

def _write_weights(name: str, folder: Path) -> int:
    """Write `name`'s weight file into `folder`; returns the unit width it gives."""
    from vencoder import random_weights as ef

    if name in ONNX_FILES:
        ef.write_onnx_encoder(folder / ONNX_FILES[name][0], 12)
    elif name.startswith("whisper-ppg"):
        ef.write_whisper(folder / ("medium.pt" if name == "whisper-ppg" else "large-v2.pt"), dim=12, heads=2, layers=1)
    elif name == "cnhubertlarge":
        ef.write_fairseq_hubert_large(folder / "chinese-hubert-large-fairseq-ckpt.pt", layers=1, dim=12, heads=2)
    elif name == "wavlmbase+":
        ef.write_wavlm(folder / "WavLM-Base+.pt", layers=1, dim=12, heads=2)
    else:
        ef.write_dphubert(folder / "DPHuBERT-sp0.75.pth", dim=12)
    return 12


NEW_ENCODERS = ["whisper-ppg", "whisper-ppg-large", "cnhubertlarge", "dphubert", "wavlmbase+", *ONNX_FILES]


@pytest.mark.parametrize("name", NEW_ENCODERS)
def test_preprocess_hubert_f0_writes_units_for_every_new_encoder(tmp_path, monkeypatch, name, capsys):
    import json

    import vencoder.base
    from modules.audio import load_audio, resample
    from modules.dataset_files import ClipFiles
    from tests.test_preprocess_hubert_f0 import _cli, _make_project

    monkeypatch.setattr(vencoder.base, "DEFAULT_PRETRAIN_DIR", tmp_path / "pretrain")
    project = _make_project(tmp_path, {"alto": 1})
    width = _write_weights(name, project["pretrain"])
    cfg = json.loads(project["config"].read_text())
    cfg["model"]["speech_encoder"] = name
    cfg["model"]["ssl_dim"] = width  # the tiny test weights' width
    project["config"].write_text(json.dumps(cfg))
    assert _cli(project) == 0, capsys.readouterr().err
    (wav,) = sorted(project["data"].glob("*/*.wav"))
    n16 = len(resample(load_audio(wav, 44100)[0], 44100, 16000))
    frames = n16 // 320 if name.startswith("whisper") else (n16 - 400) // 320 + 1
    assert torch.load(ClipFiles(wav).units, weights_only=True).shape == (1, width, frames)


def test_preprocess_reports_the_missing_weight_file(tmp_path, monkeypatch, capsys):
    import json

    import vencoder.base
    from tests.test_preprocess_hubert_f0 import _cli, _make_project

    monkeypatch.setattr(vencoder.base, "DEFAULT_PRETRAIN_DIR", tmp_path / "pretrain")
    project = _make_project(tmp_path, {"alto": 1})
    cfg = json.loads(project["config"].read_text())
    cfg["model"]["speech_encoder"], cfg["model"]["ssl_dim"] = "wavlmbase+", 768
    project["config"].write_text(json.dumps(cfg))
    assert _cli(project) == 2
    assert str(project["pretrain"] / "WavLM-Base+.pt") in capsys.readouterr().err


@pytest.mark.parametrize("name,file", [("whisper-ppg", "medium.pt"), ("wavlmbase+", "WavLM-Base+.pt"),
                                       ("dphubert", "DPHuBERT-sp0.75.pth"),
                                       ("cnhubertlarge", "chinese-hubert-large-fairseq-ckpt.pt")])
def test_weight_files_that_would_run_code_are_refused(tmp_path, name, file):
    from vencoder.fairseq_checkpoint import UnsafeCheckpointError
    from vencoder.fairseq_writer import write_malicious_checkpoint

    marker = tmp_path / "ran"
    write_malicious_checkpoint(tmp_path / file, marker)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(file) + ": refusing to load"):
        get_speech_encoder(name, pretrain_dir=tmp_path)
    assert not marker.exists()


def test_onnx_provider_choice(monkeypatch):
    import onnxruntime

    from vencoder.onnx_encoders import onnx_providers

    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers(torch.device("cuda:1")) == ["CPUExecutionProvider"]  # no CUDA build: CPU, with a warning
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers(torch.device("cuda:1")) == [("CUDAExecutionProvider", {"device_id": 1}),
                                                       "CPUExecutionProvider"]
