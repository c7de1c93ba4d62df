"""ONNX export for MoeSS (interface, JSON, onnxruntime == PyTorch) and the onnxruntime inference backend."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import inference_main
import onnx_export
from modules.config import load_config
from modules.errors import InferenceError, UnsafeCheckpointError
from modules.inference import ConvertOptions, SvcEngine
from modules.onnx_export import (
    build_wrapper,
    describe_inputs,
    export_graph,
    interface_for,
    load_synthesizer,
    moess_config,
    verify_export,
    with_random_inputs,
)
from modules.onnx_inference import OnnxSvcEngine
from modules.synthetic_voices import synth_singing
from tests.support.tiny_models import SPEAKERS, random_generator, tiny_config_dict, write_generator, write_tiny_project

LIMIT = 1e-4  # largest |onnxruntime - torch| as a fraction of the peak


def _model_files(root: Path, overrides: dict, speakers: dict[str, int]) -> tuple[Path, Path]:
    cfg = tiny_config_dict(overrides)
    cfg["spk"] = dict(speakers)
    config = root / "config.json"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    model = write_generator(root / "G_1.pth", random_generator(load_config(config), seed=3), with_optimizer=False)
    return model, config


# Variants: (model overrides, speakers). "single": one speaker, transformer flow; "mix_vol": three
# speakers with volume embedding and the quick-start config's switches (depthwise convs, shared flow, the
# decoder's source muted on unvoiced frames, computed inside the graph from its uv input).
VARIANTS = {
    "single": ({"use_transformer_flow": True}, {"alto": 0}),
    "mix_vol": ({"vol_embedding": True, "use_depthwise_conv": True, "flow_share_parameter": True,
                 "mask_unvoiced_f0": True}, dict(SPEAKERS)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request, tmp_path_factory):
    overrides, speakers = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(f"onnx_{request.param}")
    model_path, config_path = _model_files(root, overrides, speakers)
    model, hps = load_synthesizer(model_path, config_path)
    wrapper = build_wrapper(model, hps)
    path = root / "x_SoVits.onnx"
    export_graph(wrapper, path, frames=64)  # a short trace keeps the test fast; the CLI traces 200 frames
    return request.param, wrapper, hps, path, model_path, config_path


def test_graph_interface_matches_the_reference_table(exported):
    variant, _, hps, path, _, _ = exported
    io = describe_inputs(path)
    ssl, inter, n_spk = int(hps.model.ssl_dim), int(hps.model.inter_channels), len(hps.spk)
    names = list(io)
    if variant == "single":
        assert names == ["c", "f0", "mel2ph", "uv", "noise", "sid", "audio"]
        assert io["sid"] == ("INT64", [1])
    else:
        assert names == ["c", "f0", "mel2ph", "uv", "noise", "sid", "vol", "audio"]
        assert io["sid"] == ("FLOAT", ["sid_dynamic_axes_1", n_spk])
        assert io["vol"] == ("FLOAT", [1, "vol_dynamic_axes_1"])
    assert io["c"] == ("FLOAT", ["c_dynamic_axes_1", "c_dynamic_axes_2", ssl])
    assert io["f0"] == ("FLOAT", [1, "f0_dynamic_axes_1"])
    assert io["mel2ph"] == ("INT64", [1, "mel2ph_dynamic_axes_1"])
    assert io["uv"] == ("FLOAT", [1, "uv_dynamic_axes_1"])
    assert io["noise"] == ("FLOAT", [1, inter, "noise_dynamic_axes_1"])
    kind, dims = io["audio"]
    assert kind == "FLOAT" and len(dims) == 3 and dims[1] == 1 and isinstance(dims[2], str)


def test_onnxruntime_equals_pytorch_at_other_lengths(exported):
    _, wrapper, _, path, _, _ = exported
    checks = verify_export(wrapper, path, lengths=(23, 97))
    assert [c.frames for c in checks] == [23, 97]  # below and above the 64-frame trace
    for c in checks:
        assert c.peak > 0.01  # the comparison is on real audio, not on silence
        assert c.relative_error <= LIMIT, c


def test_export_wrapper_equals_the_synthesizer(exported):
    """The module that is exported computes what SynthesizerTrn.infer computes (same seed, same draws)."""
    _, wrapper, hps, _, model_path, config_path = exported
    reference, _ = load_synthesizer(model_path, config_path)  # untouched attention modules
    iface = interface_for(reference, len(hps.spk) if wrapper.mix else 0)
    frames, ns = 24, 0.4
    feed = iface.inputs(frames, units=frames, seed=5)
    feed["mel2ph"] = np.arange(1, frames + 1, dtype=np.int64)[None]  # one unit per frame, as infer takes them
    c = torch.from_numpy(feed["c"]).transpose(1, 2)
    f0, uv = torch.from_numpy(feed["f0"]), torch.from_numpy(feed["uv"])
    vol = torch.from_numpy(feed["vol"]) if "vol" in feed else None
    if wrapper.mix:
        weights = torch.from_numpy(feed["sid"])  # [T, S]
        g = (weights @ reference.emb_g.weight[list(hps.spk.values())]).t().unsqueeze(0)
    else:
        g = torch.from_numpy(feed["sid"])
    expected, _ = reference.infer(c, f0, uv, g=g, noise_scale=ns, seed=11, vol=vol)
    torch.manual_seed(11)  # infer's draws, in its order: prior noise, start phases, source noise
    feed["noise"] = (torch.randn(1, iface.inter_channels, frames) * ns).numpy()
    wrapper.fixed_draws = (torch.rand(1, 9), torch.randn(1, frames * wrapper.hop, 9))
    try:
        with torch.no_grad():
            got = wrapper(*(torch.from_numpy(feed[n]) for n in iface.input_names))
    finally:
        wrapper.fixed_draws = None
    assert got.shape == expected.shape == (1, 1, frames * wrapper.hop)
    assert float((got - expected).abs().max()) <= LIMIT * float(expected.abs().max())


def test_onnx_engine_refuses_what_its_graph_cannot_do(exported):
    import onnxruntime as ort

    from modules.config import HParams
    from modules.speaker_mix import MixSegment, SpeakerMix

    variant, _, hps, path, _, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    engine = OnnxSvcEngine(session, hps, encoder=object())
    if variant == "single":  # one speaker id in, so no mixing
        mix = SpeakerMix((0, 1), ((MixSegment(0.0, 1.0, 0.5, 0.5),), (MixSegment(0.0, 1.0, 0.5, 0.5),)))
        g = engine.mix_condition(mix, np.linspace(0, 1, 5))
        with pytest.raises(InferenceError, match="single-speaker graph cannot mix"):
            engine._sid_input(g, 5)
        assert engine._sid_input(engine.speaker_condition(0), 5).tolist() == [0]
    else:  # per-frame weights over the config's speakers, in spk-map order
        sid = engine._sid_input(engine.speaker_condition(int(hps.spk["bass"])), 4)
        assert sid.shape == (4, len(hps.spk)) and np.all(sid[:, list(hps.spk).index("bass")] == 1.0)
        assert np.all(sid.sum(axis=1) == 1.0)
    other = hps.to_dict()
    other["model"]["vol_embedding"] = variant == "single"
    with pytest.raises(InferenceError, match="vol input"):
        OnnxSvcEngine(session, HParams(**other), encoder=object())


def test_moess_json_fields_and_hubert_quirk():
    cfg = load_config_dict({"gin_channels": 8, "vol_embedding": True}, {"b": 1, "a": 0})
    assert moess_config(cfg, "demo") == {
        "Folder": "demo", "Name": "demo", "Type": "SoVits", "Rate": 44100, "Hop": 512, "Hubert": "vec-8-layer-9",
        "SoVits4": True, "SoVits3": False, "CharaMix": True, "Volume": True, "HiddenSize": 8,
        "Characters": ["b", "a"], "Cluster": "",
    }
    assert moess_config(load_config_dict({"gin_channels": 768}, {"x": 0}), "n")["Hubert"] == "vec-768-layer-12"
    one = moess_config(load_config_dict({"gin_channels": 1024}, {"x": 0}), "n")
    assert (one["Hubert"], one["CharaMix"], one["Volume"]) == ("vec-1024-layer-9", False, False)


def load_config_dict(model: dict, spk: dict):
    from modules.config import HParams

    cfg = tiny_config_dict(model)
    cfg["spk"] = spk
    return HParams(**cfg)


# ----------------------------------------------------------------------------------- CLI and backend


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """The inference tests' tiny project (three speakers, no volume) and a work folder."""
    root = tmp_path_factory.mktemp("onnx_cli")
    project = write_tiny_project(root / "project")
    work = root / "work"
    work.mkdir()
    return project, work


def test_cli_writes_the_moess_layout_and_passes_its_check(cli_export, monkeypatch, capsys):
    project, work = cli_export
    monkeypatch.chdir(work)
    _write_feature_index_file(work / "feature_and_index.pkl", {0: 80, 1: 80})
    assert onnx_export.main(["-n", "demo", "-m", str(project.model), "-c", str(project.config), "-o", "out",
                             "--index", "feature_and_index.pkl", "--check"]) == 0
    out = capsys.readouterr().out
    assert "check passed" in out and out.count("check T=") == 2
    graph = work / "out" / "demo" / "demo_SoVits.onnx"
    meta = json.loads((work / "out" / "demo.json").read_text(encoding="utf-8"))
    assert meta["Characters"] == list(SPEAKERS) and meta["CharaMix"] is True and meta["Volume"] is False
    assert meta["Rate"] == 44100 and meta["Hop"] == 512 and meta["HiddenSize"] == 8
    assert meta["Folder"] == meta["Name"] == "demo"
    assert sorted(p.name for p in (work / "out" / "demo").glob("Index-*.index")) == ["Index-0.index", "Index-1.index"]
    assert describe_inputs(graph)["sid"] == ("FLOAT", ["sid_dynamic_axes_1", len(SPEAKERS)])


def test_cli_reports_a_missing_model_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert onnx_export.main(["-n", "nothing"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoints/nothing/" in err and "not found" in err


class _FramingEncoder:
    """A cheap deterministic stand-in speech encoder: 20 ms frames through a fixed random projection."""

    hop_size = 320

    def __init__(self, dim: int) -> None:
        self.proj = torch.randn(self.hop_size, dim, generator=torch.Generator().manual_seed(0))

    def encode(self, wav16: torch.Tensor) -> torch.Tensor:
        n = wav16.shape[-1] // self.hop_size
        frames = wav16[: n * self.hop_size].float().view(n, self.hop_size)
        return (frames @ self.proj).t().unsqueeze(0)  # [1, D, T_u]


def test_onnx_engine_equals_the_torch_engine_with_the_same_draws(cli_export, tmp_path):
    """With the source's random nodes turned into inputs (fed from the torch generator in the torch
    engine's order), the onnxruntime backend gives the torch backend's audio: same slicing, padding,
    crossfades and output length."""
    import onnx
    import onnxruntime as ort

    project, work = cli_export
    graph = work / "out" / "demo" / "demo_SoVits.onnx"
    if not graph.is_file():
        pytest.skip("needs the CLI export test's file")
    session = ort.InferenceSession(with_random_inputs(onnx.load(str(graph))).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    hps = load_config(project.config)
    encoder = _FramingEncoder(int(hps.model.ssl_dim))
    onnx_engine = OnnxSvcEngine(session, hps, encoder=encoder)
    torch_engine = SvcEngine.load(project.model, project.config, device="cpu", encoder=encoder)
    voice = synth_singing("alto", 0.9, sr=44100, seed=2).audio
    voice = np.concatenate([voice, np.zeros(13000, np.float32), voice[:20000]])
    options = ConvertOptions(speaker="bass", transpose=2, clip_seconds=0.5, linear_gradient=0.1, pad_seconds=0.1)
    expected = torch_engine.convert(voice, 44100, options)
    got = onnx_engine.convert(voice, 44100, options)
    assert got.shape == expected.shape == (len(voice),)
    assert np.max(np.abs(expected)) > 0.01
    assert np.max(np.abs(got - expected)) <= LIMIT * np.max(np.abs(expected))


def test_inference_main_onnx_backend_exports_once_and_writes_the_same_file_layout(cli_export, tmp_path):
    """Without --onnx_model the graph is exported next to the checkpoint on first use."""
    project, _ = cli_export
    src = tmp_path / "in.wav"
    sf.write(src, synth_singing("alto", 0.6, sr=44100, seed=4).audio, 44100)
    graph = project.model.with_name("G_1_SoVits.onnx")
    assert not graph.exists()
    code = inference_main.main(["-m", str(project.model), "-c", str(project.config), "-n", str(src), "-s", "alto",
                                "--backend", "onnx", "--results_dir", str(tmp_path / "r"),
                                "--pretrain_dir", str(project.root / "pretrain"), "--no_progress", "-wf", "wav"])
    assert code == 0 and graph.is_file()
    (result,) = list((tmp_path / "r").iterdir())
    out, sr = sf.read(result)
    assert sr == 44100 and len(out) == sf.info(src).frames and np.all(np.isfinite(out)) and np.max(np.abs(out)) > 0.01


# ----------------------------------------------------------------------------------- feature indexes


def _write_feature_index_file(path: Path, speakers: dict[int, int], dim: int = 16) -> dict[int, np.ndarray]:
    """A feature_and_index.pkl as train_index.py writes it: pickle of {speaker id: trained IVF-Flat index}."""
    import pickle

    import faiss

    rng = np.random.default_rng(0)
    vectors = {}
    indexes = {}
    for speaker_id, rows in speakers.items():
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        index = faiss.index_factory(dim, f"IVF{max(1, rows // 39)},Flat")
        index.train(x)
        index.add(x)
        indexes[speaker_id] = index
        vectors[speaker_id] = x
    path.write_bytes(pickle.dumps(indexes))
    return vectors


def test_feature_indexes_are_written_per_speaker_for_moess(tmp_path):
    import faiss

    from modules.onnx_index import export_feature_indexes

    vectors = _write_feature_index_file(tmp_path / "feature_and_index.pkl", {0: 120, 2: 90})
    written = export_feature_indexes(tmp_path / "feature_and_index.pkl", tmp_path / "demo")
    assert [p.name for p in written] == ["Index-0.index", "Index-2.index"]
    for speaker_id, path in zip((0, 2), written):
        index = faiss.read_index(str(path))
        assert index.ntotal == len(vectors[speaker_id])
        stored = index.reconstruct_n(0, index.ntotal)
        # IVF keeps vectors per list: compare as sets of rows
        order = lambda a: a[np.lexsort(a.T[::-1])]
        np.testing.assert_array_equal(order(stored), order(vectors[speaker_id]))


def test_feature_index_file_with_foreign_code_is_refused(tmp_path):
    import pickle

    from modules.onnx_index import export_feature_indexes

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "feature_and_index.pkl"
    bad.write_bytes(pickle.dumps({0: Evil()}))
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        export_feature_indexes(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
