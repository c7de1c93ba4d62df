"""Speech encoders: fairseq checkpoint reading (safely), our HuBERT against a torch.nn reference,
layer selection, frame counts, batching, HuBERT-Soft key conversion and error messages."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.errors import CheckpointError, ConfigError, PretrainedFileMissing, UnsafeCheckpointError
from vencoder import clear_cache, encoder_names, get_speech_encoder
from vencoder.fairseq_checkpoint import load_fairseq_checkpoint, safe_torch_load
from vencoder.fairseq_writer import (
    fairseq_hubert_state,
    write_fairseq_hubert,
    write_hubert_soft,
    write_malicious_checkpoint,
)
from vencoder.hubert import parse_conv_layers

STRIDES = [5, 2, 2, 2, 2, 2, 2]
DIM, FFN, HEADS, CONV_DIM, CONV_POS, GROUPS, FINAL = 32, 64, 4, 24, 16, 4, 16


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrain")
    write_fairseq_hubert(folder / "checkpoint_best_legacy_500.pt", seed=0)
    write_hubert_soft(folder / "hubert-soft-0d54a1f4.pt", dim=48, seed=1)
    return folder


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def reference_layers(sd: dict[str, torch.Tensor], wav: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Independent single-clip forward with torch.nn building blocks; returns every layer's output [T, D]."""
    dim = sd["encoder.layer_norm.weight"].numel()
    x = wav[None, None]
    for i, stride in enumerate(STRIDES):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        if i == 0:
            x = F.group_norm(x, x.size(1), sd["feature_extractor.conv_layers.0.2.weight"],
                             sd["feature_extractor.conv_layers.0.2.bias"])
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = F.layer_norm(x, (x.size(-1),), sd["layer_norm.weight"], sd["layer_norm.bias"])
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    v, g = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)
    pos = F.conv1d(x.transpose(1, 2), weight, sd["encoder.pos_conv.0.bias"], padding=v.size(-1) // 2,
                   groups=dim // v.size(1))[:, :, :-1]
    x = x + F.gelu(pos).transpose(1, 2)
    x = F.layer_norm(x, (dim,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    outputs = []
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    for n in range(n_layers):
        p = f"encoder.layers.{n}."
        layer = nn.TransformerEncoderLayer(dim, heads, sd[p + "fc1.weight"].size(0), dropout=0.0,
                                           activation="gelu", batch_first=True).eval()
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(torch.cat([sd[p + f"self_attn.{c}_proj.weight"] for c in "qkv"]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([sd[p + f"self_attn.{c}_proj.bias"] for c in "qkv"]))
            layer.self_attn.out_proj.weight.copy_(sd[p + "self_attn.out_proj.weight"])
            layer.self_attn.out_proj.bias.copy_(sd[p + "self_attn.out_proj.bias"])
            for ours, theirs in (("linear1", "fc1"), ("linear2", "fc2"), ("norm1", "self_attn_layer_norm"),
                                 ("norm2", "final_layer_norm")):
                getattr(layer, ours).weight.copy_(sd[p + theirs + ".weight"])
                getattr(layer, ours).bias.copy_(sd[p + theirs + ".bias"])
            x = layer(x)
        outputs.append(x[0])
    return outputs


def _wav(n: int, seed: int = 0) -> torch.Tensor:
    t = torch.arange(n) / 16000
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * noise).float()


def test_registry_names_and_unknown_encoder():
    assert {"vec768l12", "vec256l9", "hubertsoft"} <= set(encoder_names())
    with pytest.raises(ConfigError, match="unknown speech encoder 'nope'; available: vec768l12"):
        get_speech_encoder("nope")


def test_missing_pretrained_file_names_path_and_source(tmp_path):
    with pytest.raises(PretrainedFileMissing) as err:
        get_speech_encoder("vec768l12", pretrain_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "checkpoint_best_legacy_500.pt") in message
    assert "contentvec" in message.lower() and "hubert_base.pt" in message
    with pytest.raises(PretrainedFileMissing, match="bshall/hubert/releases"):
        get_speech_encoder("hubertsoft", pretrain_dir=tmp_path)


def test_checkpoint_config_and_weights_are_read(pretrain):
    ckpt = load_fairseq_checkpoint(pretrain / "checkpoint_best_legacy_500.pt")
    assert ckpt.model_cfg["encoder_layers"] == 12 and ckpt.model_cfg["encoder_embed_dim"] == DIM
    assert ckpt.model_cfg["conv_feature_layers"].startswith("[(24, 10, 5)]")
    assert ckpt.task_cfg["normalize"] is False
    assert ckpt.model_state["label_embs_concat"].shape == (7, FINAL)
    # The fairseq Dictionary in task_state came back as an inert stand-in, not an import of fairseq.
    raw = safe_torch_load(pretrain / "checkpoint_best_legacy_500.pt")
    stand_in = raw["task_state"]["dictionaries"][0]
    assert type(stand_in).qualified_name == "fairseq.data.dictionary.Dictionary"
    assert stand_in._state["symbols"][4:] == ["0", "1", "2"]


@pytest.mark.parametrize("n", [400, 719, 720, 16000, 16321])
def test_contentvec_frame_counts(pretrain, n):
    expected = (n - 400) // 320 + 1
    for name in ("vec768l12", "vec256l9"):
        encoder = get_speech_encoder(name, pretrain_dir=pretrain)
        assert encoder.n_frames(n) == expected
        assert encoder.encode(_wav(n)).shape == (1, encoder.dim, expected)


def test_layer_selection_matches_reference(pretrain):
    sd = fairseq_hubert_state(12, DIM, FFN, CONV_DIM, CONV_POS, GROUPS, FINAL, seed=0)
    wav = _wav(8000)
    layers = reference_layers(sd, wav, HEADS)
    vec768 = get_speech_encoder("vec768l12", pretrain_dir=pretrain).encode(wav)[0].T  # [T, D]
    vec256 = get_speech_encoder("vec256l9", pretrain_dir=pretrain).encode(wav)[0].T
    assert vec768.shape == (24, DIM) and vec256.shape == (24, FINAL)
    torch.testing.assert_close(vec768, layers[11], atol=2e-4, rtol=1e-4)
    proj9 = F.linear(layers[8], sd["final_proj.weight"], sd["final_proj.bias"])
    proj12 = F.linear(layers[11], sd["final_proj.weight"], sd["final_proj.bias"])
    torch.testing.assert_close(vec256, proj9, atol=2e-4, rtol=1e-4)
    assert (vec256 - proj12).abs().max() > 0.1  # layer 9, not 12
    assert (vec768 - layers[10]).abs().max() > 0.1  # layer 12, not 11


def test_batched_equals_clip_by_clip(pretrain):
    encoder = get_speech_encoder("vec768l12", pretrain_dir=pretrain)
    clips = [_wav(n, seed=n) for n in (16000, 5000, 12345, 720)]
    batched = encoder.encode_batch(clips)
    for clip, got in zip(clips, batched):
        alone = encoder.encode(clip)
        assert got.shape == alone.shape == (1, DIM, (clip.numel() - 400) // 320 + 1)
        torch.testing.assert_close(got, alone, atol=2e-4, rtol=1e-4)
    encoder.max_batch_samples = 16000  # forces several batches; order must be preserved
    again = encoder.encode_batch(clips)
    for a, b in zip(again, batched):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", [
    {"config_style": "namespace"}, {"config_style": "omegaconf"}, {"legacy_format": True}, {"half": True},
])
def test_checkpoint_variants_load_the_same_model(tmp_path, pretrain, variant):
    write_fairseq_hubert(tmp_path / "checkpoint_best_legacy_500.pt", seed=0, **variant)
    wav = _wav(4000)
    expected = get_speech_encoder("vec256l9", pretrain_dir=pretrain).encode(wav)
    got = get_speech_encoder("vec256l9", pretrain_dir=tmp_path).encode(wav)
    tol = 0.05 if variant.get("half") else 1e-5
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = write_malicious_checkpoint(tmp_path / "checkpoint_best_legacy_500.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load.*posix\.system|refusing to load.*os\.system"):
        load_fairseq_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        get_speech_encoder("vec768l12", pretrain_dir=tmp_path)
    assert not marker.exists()


def test_fairseq_named_reduce_stays_inert(tmp_path):
    """A pickle calling a `fairseq.*` global only constructs a stand-in; nothing is imported or run."""
    import sys
    import types

    module = types.ModuleType("fairseq")

    class Trap:
        def __reduce__(self):
            return (module.boom, ("rm -rf /",))

    def boom(arg):  # never called on load
        raise AssertionError("called")

    boom.__module__, boom.__qualname__ = "fairseq", "boom"
    module.boom = boom
    sys.modules["fairseq"] = module
    try:
        torch.save({"model": {}, "x": Trap()}, tmp_path / "t.pt")
    finally:
        del sys.modules["fairseq"]
    loaded = safe_torch_load(tmp_path / "t.pt")
    assert type(loaded["x"]).qualified_name == "fairseq.boom"
    assert loaded["x"]._args == ("rm -rf /",)
    assert "fairseq" not in sys.modules


def test_wrong_keys_and_shapes_are_reported(tmp_path):
    path = write_fairseq_hubert(tmp_path / "checkpoint_best_legacy_500.pt", seed=0)
    raw = safe_torch_load(path)
    del raw["model"]["encoder.layers.3.fc1.weight"]
    from vencoder.hubert import HubertConfig, HubertModel

    model = HubertModel(HubertConfig.from_fairseq(load_fairseq_checkpoint(path).model_cfg))
    with pytest.raises(CheckpointError, match="encoder.layers.3.fc1.weight"):
        model.load_fairseq_state(raw["model"], source="x.pt")
    state = load_fairseq_checkpoint(path).model_state
    state["final_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"final_proj.weight \(3, 3\)"):
        model.load_fairseq_state(state, source="x.pt")


def test_conv_layer_spec_is_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    with pytest.raises(ValueError, match="not a list"):
        parse_conv_layers("__import__('os').system('true')")


def test_hubert_soft_matches_reference_and_frame_count(pretrain):
    sd = fairseq_hubert_state(12, 48, FFN, CONV_DIM, CONV_POS, GROUPS, FINAL, seed=1)
    encoder = get_speech_encoder("hubertsoft", pretrain_dir=pretrain)
    for n in (320, 16000, 16319):
        assert encoder.encode(_wav(n)).shape == (1, FINAL, n // 320)
    wav = _wav(8000)
    layers = reference_layers(sd, F.pad(wav, (40, 40)), heads=12)
    expected = F.linear(layers[-1], sd["final_proj.weight"], sd["final_proj.bias"])
    torch.testing.assert_close(encoder.encode(wav)[0].T, expected, atol=2e-4, rtol=1e-4)


def test_hubert_soft_unknown_key_is_reported(tmp_path):
    path = write_hubert_soft(tmp_path / "hubert-soft-0d54a1f4.pt", module_prefix=False)
    sd = torch.load(path, weights_only=True)
    sd["surprise.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="surprise.weight"):
        get_speech_encoder("hubertsoft", pretrain_dir=tmp_path)
