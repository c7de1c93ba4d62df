"""Inference engine, chunked synthesis, slicing/crossfade arithmetic, speaker mix and the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import inference_main
from modules import inference
from modules.config import HParams, load_template
from modules.errors import InferenceError
from modules.inference import ConvertOptions, PieceFeatures, SvcEngine
from modules.inference_chunked import (
    ExcitationStream,
    ReceptiveField,
    decoder_receptive_frames,
    flow_receptive_frames,
)
from modules.inference_plan import (
    OutputAssembler,
    Piece,
    crossfade_split,
    loudness_envelope,
    output_name,
    plan_pieces,
    to_output_samples,
)
from modules.speaker_mix import load_spk_mix, validate_spk_mix
from modules.synthetic_voices import synth_singing
from tests.support.tiny_models import SPEAKERS, TinyProject, random_generator, tiny_config_dict, write_tiny_project

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> TinyProject:
    return write_tiny_project(tmp_path_factory.mktemp("h6proj"))


@pytest.fixture(scope="module")
def engine(project) -> SvcEngine:
    return SvcEngine.load(project.model, project.config, device="cpu", pretrain_dir=project.root / "pretrain")


def _voice(seconds: float, sr: int, seed: int = 1) -> np.ndarray:
    return synth_singing("alto", seconds, sr=sr, seed=seed).audio


@pytest.mark.parametrize("overrides", [{}, {"vocoder_name": "nsf-snake-hifigan", "vol_embedding": True}])
def test_load_synthesizer_takes_the_file_tensors_and_matches_a_plain_build(tmp_path, overrides):
    """The inference loader builds on the meta device and adopts the loaded tensors (no random copy
    first): the same synthesis, bit for bit, as a model built normally and loaded by copying."""
    from models import SynthesizerTrn
    from modules.checkpoint import load_weights, model_state, safe_load
    from modules.config import load_config

    tiny = write_tiny_project(tmp_path, model_overrides=overrides)
    adopted, hps = inference.load_synthesizer(tiny.model, tiny.config)
    plain = SynthesizerTrn.from_hparams(load_config(tiny.config))
    load_weights(plain, model_state(safe_load(tiny.model), tiny.model))
    plain = inference.prepare_for_synthesis(plain)
    assert not any(t.is_meta for t in list(adopted.parameters()) + list(adopted.buffers()))
    n = 60
    gen = torch.Generator().manual_seed(3)
    feats = PieceFeatures(torch.randn(1, hps.model.ssl_dim, n, generator=gen), torch.full((1, n), 233.0),
                          torch.ones(1, n), torch.rand(1, n, generator=gen) if overrides else None)
    outputs = []
    for model in (adopted, plain):
        engine = SvcEngine(model, hps, torch.device("cpu"), encoder=object())
        outputs.append(engine.synthesize(feats, engine.speaker_condition(0))[0])
    assert outputs[0].shape == (1, 1, n * hps.data.hop_length)
    assert torch.equal(outputs[0], outputs[1])


def test_load_weights_assign_keeps_the_loaded_storage():
    layer = torch.nn.Conv1d(4, 4, 3)
    saved = {"weight": torch.randn(4, 4, 3), "bias": torch.randn(4)}
    from modules.checkpoint import load_weights

    load_weights(layer, saved, assign=True)
    assert layer.weight.data_ptr() == saved["weight"].data_ptr() and torch.equal(layer.bias, saved["bias"])
    copied = torch.nn.Conv1d(4, 4, 3)
    load_weights(copied, saved)
    assert copied.weight.data_ptr() != saved["weight"].data_ptr() and torch.equal(copied.weight, saved["weight"])


# ----------------------------------------------------------------------------------- sample arithmetic


@pytest.mark.parametrize("sr_in", [22050, 48000])
def test_pieces_tile_the_output_exactly_at_odd_rates(sr_in):
    n = sr_in * 7 + 13  # odd length
    chunks = [(0, sr_in // 3, True), (sr_in // 3, n - 1001, False), (n - 1001, n, True)]
    pieces = plan_pieces(chunks, sr_in, 44100, clip_seconds=2.0, overlap_seconds=0.3)
    total = to_output_samples(n, sr_in, 44100)
    assert total == math.ceil(n * 44100 / sr_in)
    assert pieces[0].start == 0 and pieces[-1].end == total
    voiced = [p for p in pieces if not p.silent]
    assert [p.length for p in voiced[:-1]] == [88200] + [88200 + 13230] * (len(voiced) - 2)
    assert [p.overlap for p in voiced] == [0] + [13230] * (len(voiced) - 1)
    for prev, cur in zip(pieces, pieces[1:]):  # consecutive: touch, or overlap by exactly -lg
        assert prev.end - cur.start == cur.overlap
    assert voiced[0].start == to_output_samples(sr_in // 3, sr_in, 44100)


def test_crossfade_lengths_and_values():
    fade = crossfade_split(13230, 0.75)
    assert (fade.left, fade.ramp, fade.right) == (1654, 9922, 1654)
    assert crossfade_split(100, 1.0) == type(fade)(100, 0, 100, 0)
    out = OutputAssembler(300, retain=0.5)
    out.add(Piece(0, 200, False), np.full(200, 1.0, dtype=np.float32))
    out.add(Piece(100, 300, False, overlap=100), np.full(200, 3.0, dtype=np.float32))
    assert np.all(out.audio[:125] == 1.0) and np.all(out.audio[175:] == 3.0)
    np.testing.assert_allclose(out.audio[125:175], 1.0 + 2.0 * np.linspace(0, 1, 50), atol=1e-6)


def test_output_name_matches_the_original_pattern():
    assert output_name("song.wav", 3, "alto", "pm", "flac") == "song.wav_3key_alto_sovits_pm.flac"
    assert output_name("a", -2, "x", "rmvpe", "wav", auto_f0=True, spk_mix=True) == "a_auto_spk_mix_sovits_rmvpe.wav"


def test_loudness_envelope_rate_zero_imposes_the_input_envelope():
    sr = 8000
    ramp = np.linspace(0.05, 0.5, sr * 4).astype(np.float32)
    src = ramp * np.sin(np.arange(sr * 4) * 0.3).astype(np.float32)
    out = 0.2 * np.sin(np.arange(sr * 4) * 0.5).astype(np.float32)
    same = loudness_envelope(src, out, sr, 1.0)
    assert same is out
    adjusted = loudness_envelope(src, out, sr, 0.0)
    mid = slice(sr, 3 * sr)
    ratio = np.sqrt(np.mean(adjusted[mid][-sr // 2:] ** 2)) / np.sqrt(np.mean(adjusted[mid][: sr // 2] ** 2))
    expected = np.sqrt(np.mean(src[mid][-sr // 2:] ** 2)) / np.sqrt(np.mean(src[mid][: sr // 2] ** 2))
    assert ratio == pytest.approx(expected, rel=0.1)


# ----------------------------------------------------------------------------------- chunked synthesis


def test_receptive_field_is_computed_from_the_config(engine):
    default = load_template()["model"]
    assert decoder_receptive_frames(default) == 17
    assert decoder_receptive_frames({**default, "vocoder_name": "nsf-snake-hifigan"}) > 17
    # tiny model: 4 couplings x n_flow_layer(2) WN layers x kernel 5 reach 2, plus 2 safety frames
    assert flow_receptive_frames(engine.model.flow) == 4 * 2 * 2 + 2


def _features(n_frames: int, dim: int, seed: int = 0) -> PieceFeatures:
    g = torch.Generator().manual_seed(seed)
    f0 = 180 + 60 * torch.sin(torch.arange(n_frames) / 7.0)[None]
    uv = torch.ones(1, n_frames)
    uv[:, n_frames // 3: n_frames // 3 + 9] = 0
    return PieceFeatures(torch.randn(1, dim, n_frames, generator=g), f0, uv, None)


def test_chunked_synthesis_equals_whole_piece(engine):
    model, n = engine.model, 170
    feats = _features(n, engine.hps.model.ssl_dim)
    g_ids = torch.tensor([1])
    with torch.no_grad():
        whole, _ = model.infer(feats.units, feats.f0, feats.uv, g=g_ids, noise_scale=0.4)
    engine.chunk_frames = 32  # 6 windows; long piece -> streamed excitation
    try:
        chunked, _ = engine.synthesize(feats, model.embed_speaker(g_ids), 0.4)
        rel = (chunked - whole).abs().max() / whole.abs().max()
        assert chunked.shape == whole.shape == (1, 1, n * 512)
        assert rel < 1e-4
        saved, engine.rf = engine.rf, ReceptiveField(0, 0)  # without margins the seams show: the test can fail
        try:
            broken, _ = engine.synthesize(feats, model.embed_speaker(g_ids), 0.4)
        finally:
            engine.rf = saved
        assert (broken - whole).abs().max() / whole.abs().max() > 1e-3
    finally:
        engine.chunk_frames = 1024


@pytest.mark.parametrize("variant", [
    {"use_transformer_flow": True},  # causal attention in the flow: flow runs whole, decoder chunked
    {"vocoder_name": "nsf-snake-hifigan", "flow_share_parameter": True, "use_depthwise_conv": True},
    {"mask_unvoiced_f0": True},  # the excitation is built from F0 x uv; _features has an unvoiced run
])
def test_chunked_synthesis_equals_whole_for_model_variants(variant):
    hps = HParams(**tiny_config_dict(variant))
    model = random_generator(hps, seed=3)
    model.remove_weight_norm()
    eng = SvcEngine(model, hps, chunk_frames=24, encoder=object())
    assert (eng.rf.flow is None) == bool(variant.get("use_transformer_flow"))
    feats = _features(100, hps.model.ssl_dim, seed=4)
    g = torch.tensor([2])
    with torch.no_grad():
        whole, _ = model.infer(feats.units, feats.f0, feats.uv, g=g, noise_scale=0.4)
    chunked, _ = eng.synthesize(feats, model.embed_speaker(g), 0.4)
    assert (chunked - whole).abs().max() / whole.abs().max() < 1e-4


def test_excitation_stream_equals_decoder_excitation(engine):
    dec, n = engine.model.dec, 90
    f0 = _features(n, 4).f0
    f0[:, 10:20] = 0
    torch.manual_seed(3)
    whole = dec.excitation(f0)
    torch.manual_seed(3)
    stream = ExcitationStream(dec.m_source, f0, 512, block_frames=16)
    parts = [stream.get(max(a - 5, 0), min(a + 25, n))[..., (a - max(a - 5, 0)) * 512:] for a in range(0, n, 20)]
    joined = torch.cat([p[..., : min(20, n - i * 20) * 512] for i, p in enumerate(parts)], dim=-1)
    assert torch.allclose(joined, whole, atol=1e-6)


def test_time_varying_speaker_chunked_equals_whole(engine):
    model, n = engine.model, 120
    feats = _features(n, engine.hps.model.ssl_dim, seed=2)
    mix = validate_spk_mix({0: [[0, 1, 1, 0]], 1: [[0, 1, 0, 1]], 2: [[0, 1, 0, 0]]}, SPEAKERS)
    g = mix.embedding(model.emb_g.weight, np.linspace(0, 1, n))
    assert g.shape == (1, engine.hps.model.gin_channels, n)
    torch.testing.assert_close(g[..., 0], model.emb_g.weight[0][None])
    torch.testing.assert_close(g[..., -1], model.emb_g.weight[1][None])
    with torch.no_grad():
        whole, _ = model.infer(feats.units, feats.f0, feats.uv, g=g, noise_scale=0.4)
    engine.chunk_frames = 40
    try:
        chunked, _ = engine.synthesize(feats, g, 0.4)
    finally:
        engine.chunk_frames = 1024
    assert (chunked - whole).abs().max() / whole.abs().max() < 1e-4


# ----------------------------------------------------------------------------------- engine


def test_transpose_twelve_doubles_the_decoder_f0(engine, monkeypatch):
    seen: list[torch.Tensor] = []

    class SpyStream(ExcitationStream):  # the engine makes the decoder's excitation through this class
        def __init__(self, source, f0, hop, block_frames=512):
            seen.append(f0.clone())
            super().__init__(source, f0, hop, block_frames)

    monkeypatch.setattr(inference, "ExcitationStream", SpyStream)
    audio = _voice(1.5, 44100)
    for t in (0, 12):
        engine.convert(audio, 44100, ConvertOptions(speaker="alto", transpose=t, slicing=False, pad_seconds=0.1))
    assert len(seen) == 2 and seen[0].shape == seen[1].shape
    assert float(seen[0].max()) > 100
    torch.testing.assert_close(seen[1], 2.0 * seen[0])


@pytest.mark.parametrize("sr_in", [22050, 48000])
def test_convert_lengths_and_reproducibility_at_odd_rates(engine, sr_in):
    audio = np.concatenate([_voice(1.2, sr_in), np.zeros(sr_in // 2, np.float32), _voice(1.0, sr_in, seed=2)])
    opts = ConvertOptions(speaker="bass", clip_seconds=0.7, linear_gradient=0.2, pad_seconds=0.2)
    out = engine.convert(audio, sr_in, opts)
    assert out.dtype == np.float32 and len(out) == math.ceil(len(audio) * 44100 / sr_in)
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 1e-4
    again = engine.convert(audio, sr_in, opts)
    np.testing.assert_array_equal(out, again)


class _BlockEncoder:
    """Fake encoder: one unit per 320 samples, equal to that block's mean (so units reveal their position)."""

    hop_size = 320

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        self.lengths.append(len(wav))
        n = len(wav) // 320
        return wav[: n * 320].reshape(n, 320).mean(dim=1)[None, None]


def test_long_pieces_are_encoded_in_windows_with_aligned_frames(engine):
    wav16 = np.repeat(np.arange(1000, dtype=np.float32), 320)  # block k holds the value k
    fake, saved = _BlockEncoder(), (engine._encoder, engine.encoder_window_seconds)
    engine._encoder, engine.encoder_window_seconds = fake, 1.0
    try:
        units = engine.encode_units(wav16, context_seconds=0.2)
    finally:
        engine._encoder, engine.encoder_window_seconds = saved
    assert max(fake.lengths) == 16000 + 2 * 3200 and len(fake.lengths) == 20
    np.testing.assert_array_equal(units[0].numpy(), np.arange(1000, dtype=np.float32))


def test_speakers_by_name_or_id_and_unknown_speaker(engine):
    assert engine.resolve_speaker("soprano") == 2
    assert engine.resolve_speaker("3") == 3 and engine.resolve_speaker(1) == 1
    with pytest.raises(InferenceError, match=r"unknown speaker 'tenor'.*alto \(0\)"):
        engine.resolve_speaker("tenor")


# ----------------------------------------------------------------------------------- speaker mix


@pytest.mark.parametrize("bad, message", [
    ([1, 2], "must be a dict"),
    ({0: [[0, 1, 1, 1]], "tenor": [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, "not a speaker id"),
    ({0: [[0, 1, 1]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, "expected 4 numbers"),
    ({0: [[0, 0.5, 1, 1], [0.6, 1, 1, 1]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, "contiguous"),
    ({0: [[0.1, 1, 1, 1]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, "must start at 0"),
    ({0: [[0, 0.9, 1, 1]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, "must end at 1"),
    ({0: [[0, 1, -1, 1]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, ">= 0"),
    ({0: [[0, 1, 1, 1]], 1: [[0, 1, 1, 1]]}, "missing soprano"),
    ({0: [[0, 1, 1, 1]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]], 7: [[0, 1, 0, 0]]}, "out of range"),
])
def test_spk_mix_validation_errors(bad, message):
    with pytest.raises(InferenceError, match=message):
        validate_spk_mix(bad, SPEAKERS, n_speakers=4)


def test_spk_mix_weights_ramp_and_normalise(tmp_path):
    mix = validate_spk_mix({"alto": [[0, 0.5, 1, 0], [0.5, 1, 0, 0]], 1: [[0, 1, 1, 1]], 2: [[0, 1, 0, 0]]}, SPEAKERS)
    w = mix.weights(np.array([0.0, 0.25, 0.75]))
    np.testing.assert_allclose(w[:, 0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(w[:, 1], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(w[:, 2], [0.0, 1.0, 0.0])
    zero = validate_spk_mix({0: [[0, 1, 0, 0]], 1: [[0, 1, 0, 0]], 2: [[0, 1, 0, 0]]}, SPEAKERS)
    np.testing.assert_allclose(zero.weights(np.array([0.3]))[:, 0], [1 / 3] * 3)
    # the shipped map file parses and fits the 5 speakers of the config template
    shipped = load_spk_mix(PROJECT_ROOT / "spkmix.py", load_template()["spk"], 200)
    assert shipped.speaker_ids == (0, 1, 2, 3, 4)
    bad = tmp_path / "mix.py"
    bad.write_text("import os\nspk_mix_map = {0: os.getcwd()}\n")
    with pytest.raises(InferenceError, match="plain literal"):
        load_spk_mix(bad)


# ----------------------------------------------------------------------------------- command line


def _run_cli(project: TinyProject, monkeypatch, *args: str) -> int:
    monkeypatch.chdir(project.root)
    return inference_main.main(["-m", str(project.model), "-c", str(project.config), "--no_progress", *args])


def test_cli_end_to_end(project, monkeypatch):
    raw = project.root / "raw"
    raw.mkdir(exist_ok=True)
    song, other = _voice(1.3, 22050), _voice(1.0, 48000, seed=4)
    sf.write(raw / "song.wav", song, 22050, subtype="PCM_16")
    folder = project.root / "batch" / "sub"
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "b.flac", other, 48000)
    (project.root / "mix.py").write_text(
        "spk_mix_map = {0: [[0.0, 1.0, 1.0, 0.0]], 1: [[0.0, 1.0, 0.0, 1.0]], 2: [[0.0, 1.0, 0.0, 0.0]]}\n")
    rc = _run_cli(project, monkeypatch, "-n", "song", str(project.root / "batch"), "-t", "0", "12",
                  "-s", "alto", "1", "-wf", "wav", "-cl", "0.5", "-lg", "0.1", "-lea", "0.5")
    assert rc == 0
    results = project.root / "results"
    expected = ["song_0key_alto_sovits_pm.wav", "song_0key_1_sovits_pm.wav",
                "sub/b.flac_12key_alto_sovits_pm.wav", "sub/b.flac_12key_1_sovits_pm.wav"]
    for name in expected:
        info = sf.info(results / name)
        assert info.samplerate == 44100
    assert sf.info(results / expected[0]).frames == 2 * len(song)
    assert sf.info(results / expected[2]).frames == math.ceil(len(other) * 44100 / 48000)
    rc = _run_cli(project, monkeypatch, "-n", "song", "-usm", "--spk_mix_file", "mix.py", "-wf", "ogg")
    assert rc == 0 and (results / "song_0key_spk_mix_sovits_pm.ogg").is_file()


def test_cli_bf16_precision_converts_close_to_fp32(project, monkeypatch):
    """--precision bf16 end to end on the CPU (the decoder held in bf16): same file length, output close to
    fp32's but not identical (reduced precision really ran)."""
    (project.root / "raw").mkdir(exist_ok=True)
    sf.write(project.root / "raw" / "p.wav", _voice(1.2, 44100, seed=7), 44100, subtype="PCM_16")
    results = project.root / "results"
    outputs = {}
    for precision in ("fp32", "bf16"):
        assert _run_cli(project, monkeypatch, "-n", "p.wav", "-s", "alto", "-wf", "wav", "--precision", precision) == 0
        outputs[precision], sr = sf.read(results / "p.wav_0key_alto_sovits_pm.wav", dtype="float32")
        assert sr == 44100
    ref, fast = outputs["fp32"].astype(np.float64), outputs["bf16"].astype(np.float64)
    assert fast.shape == ref.shape and np.abs(ref).max() > 0.01
    snr = 10 * np.log10((ref ** 2).sum() / ((fast - ref) ** 2).sum())
    assert 25 < snr < 90


def test_cli_errors_are_one_line(project, monkeypatch, capsys, tmp_path):
    (project.root / "raw").mkdir(exist_ok=True)
    sf.write(project.root / "raw" / "e.wav", np.zeros(4410, np.float32), 44100)
    assert _run_cli(project, monkeypatch, "-n", "e.wav", "-s", "tenor") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown speaker 'tenor'" in err
    other = json.loads(project.config.read_text())
    other["model"]["gin_channels"] = 12
    wrong = tmp_path / "other.json"
    wrong.write_text(json.dumps(other))
    monkeypatch.chdir(project.root)
    assert inference_main.main(["-m", str(project.model), "-c", str(wrong), "-n", "e.wav", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "emb_g.weight" in err and "config.json the model was trained with" in err
    assert _run_cli(project, monkeypatch, "-n", "e.wav", "--pretrain_dir", str(tmp_path / "nothing")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checkpoint_best_legacy_500.pt" in err
