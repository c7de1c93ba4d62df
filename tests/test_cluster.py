"""Timbre-leak control: k-means fitting, the two file formats, safe loading, unit mixing and the CLIs."""
from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import inference_main
import train_index
from cluster import training
from cluster.files import load_index_file, load_kmeans_file, save_index_file, save_kmeans_file
from cluster.kmeans import allocate_centres, fit_centres, fit_centres_torch, inertia
from cluster.mixing import UnitMixer, resolve_cluster_path
from modules import inference_batch
from modules.errors import CheckpointError, InferenceError, UnsafeCheckpointError
from modules.inference import ConvertOptions, SvcEngine
from modules.inference_batch import BatchRequest
from modules.synthetic_voices import synth_singing
from tests.support.cluster_files import (
    malicious_index,
    malicious_kmeans,
    write_reference_index,
    write_reference_kmeans,
    write_unit_files,
)
from tests.support.tiny_models import SPEAKERS, UNIT_DIM, TinyProject, write_tiny_project

ROOT = Path(__file__).resolve().parent.parent


def _blobs(n_blobs: int, per_blob: int, dim: int, seed: int = 0, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_blobs, dim)).astype(np.float32) * 3
    x = np.repeat(means, per_blob, axis=0) + spread * rng.standard_normal((n_blobs * per_blob, dim)).astype(np.float32)
    return x[rng.permutation(len(x))].astype(np.float32), means


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> TinyProject:
    return write_tiny_project(tmp_path_factory.mktemp("clusterproj"))


@pytest.fixture(scope="module")
def engine(project) -> SvcEngine:
    return SvcEngine.load(project.model, project.config, device="cpu", pretrain_dir=project.root / "pretrain")


# ----------------------------------------------------------------------------------------- k-means


def test_allocate_centres_is_proportional_and_feasible():
    shares = allocate_centres(np.array([100, 0, 1, 49, 850]), 100)
    assert shares.sum() == 100 and shares[1] == 0 and shares[2] == 1
    assert list(shares[[0, 3, 4]]) == [10, 4, 85]  # quotas 10, 4.9, 85; cell 2 gets its minimum of 1
    tight = allocate_centres(np.array([3, 1, 2]), 6)
    assert list(tight) == [3, 1, 2]
    with pytest.raises(ValueError):
        allocate_centres(np.array([2, 2]), 5)


@pytest.mark.parametrize("device_path", ["two-level", "torch"])
def test_kmeans_finds_separated_blobs_and_is_seeded(device_path):
    x, means = _blobs(24, 60, 12)
    if device_path == "two-level":
        centres = fit_centres(x, 24, seed=3, progress=False).centres
        again = fit_centres(x, 24, seed=3, progress=False).centres
        np.testing.assert_array_equal(centres, again)
    else:
        centres = fit_centres_torch(x, 24, seed=3)
    assert centres.shape == (24, 12) and centres.dtype == np.float32
    # every true mean has a centre within the noise radius
    gap = np.sqrt(((means[:, None] - centres[None]) ** 2).sum(-1)).min(axis=1)
    assert gap.max() < 0.1
    assert inertia(x, centres) == pytest.approx(len(x) * 12 * 0.05 ** 2, rel=0.15)


def test_two_level_kmeans_inertia_close_to_full_kmeans():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1500, 6)) @ rng.standard_normal((6, 16))).astype(np.float32)  # no clean clusters
    ours = inertia(x, fit_centres(x, 75, seed=0, progress=False).centres)
    full = KMeans(75, n_init=1, random_state=0).fit(x)
    assert ours < 1.1 * full.inertia_


def test_fewer_frames_than_centres_makes_every_frame_a_centre():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(fit_centres(x, 10, progress=False).centres, x)


# ----------------------------------------------------------------------------------------- file formats


def _pickle_globals(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return b"".join(z.read(n) for n in z.namelist() if n.endswith("data.pkl")).decode("latin1")


def test_kmeans_file_round_trip_through_the_reference_layout(tmp_path):
    rng = np.random.default_rng(0)
    theirs = {"alto": rng.standard_normal((7, 5)).astype(np.float32), "bass": rng.standard_normal((3, 5)).astype(np.float32)}
    loaded = load_kmeans_file(write_reference_kmeans(tmp_path / "theirs.pt", theirs))
    assert sorted(loaded) == ["alto", "bass"] and loaded["alto"].n_threads == 6
    np.testing.assert_array_equal(loaded["bass"].centres, theirs["bass"])

    ours = tmp_path / "ours.pt"
    save_kmeans_file(loaded, ours)
    raw = torch.load(ours, weights_only=False)  # what the original (torch < 2.6) does
    assert set(raw) == {"alto", "bass"}
    assert set(raw["alto"]) == {"n_features_in_", "_n_threads", "cluster_centers_"}
    assert raw["alto"]["n_features_in_"] == 5 and type(raw["alto"]["n_features_in_"]) is int
    assert raw["alto"]["cluster_centers_"].dtype == np.float32
    np.testing.assert_array_equal(raw["alto"]["cluster_centers_"], theirs["alto"])
    text = _pickle_globals(ours)  # numpy 1.23 (the original's pin) cannot import numpy._core
    assert "numpy.core.multiarray" in text and "numpy._core" not in text

    # the original's inference rebuilds an sklearn KMeans from these fields; it must pick our nearest centre
    from sklearn.cluster import KMeans

    km = KMeans(raw["alto"]["n_features_in_"])
    km.__dict__.update(raw["alto"])
    frames = rng.standard_normal((40, 5)).astype(np.float32)
    mixer = UnitMixer(ours, 1.0, False, {"alto": 0, "bass": 1})
    np.testing.assert_array_equal(mixer.target_units(frames, "alto"), theirs["alto"][km.predict(frames)])


def test_index_file_round_trip_through_the_reference_layout(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {0: rng.standard_normal((400, 6)).astype(np.float32), 2: rng.standard_normal((90, 6)).astype(np.float32)}
    loaded = load_index_file(write_reference_index(tmp_path / "theirs.pkl", vectors))
    assert sorted(loaded) == [0, 2]
    assert loaded[0].nlist == 10 and loaded[0].nprobe == 1 and loaded[2].nlist == 2
    np.testing.assert_array_equal(np.sort(loaded[0].reconstruct_n(0, 400), axis=0), np.sort(vectors[0], axis=0))

    with open(tmp_path / "protocol2.pkl", "wb") as f:  # older pickles write bytes through _codecs.encode
        pickle.dump({5: loaded[2]}, f, protocol=2)
    assert load_index_file(tmp_path / "protocol2.pkl")[5].ntotal == 90

    save_index_file(loaded, tmp_path / "ours.pkl")
    with open(tmp_path / "ours.pkl", "rb") as f:
        raw = pickle.load(f)  # what the original does
    assert sorted(raw) == [0, 2] and type(raw[0]).__name__ == "IndexIVFFlat"
    query = rng.standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_array_equal(raw[0].search(query, 3)[1], loaded[0].search(query, 3)[1])


@pytest.mark.parametrize("kind", ["kmeans", "index"])
def test_malicious_files_are_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "kmeans":
        path = malicious_kmeans(tmp_path / "kmeans_10000.pt", marker)
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            load_kmeans_file(path)
    else:
        path = malicious_index(tmp_path / "feature_and_index.pkl", marker)
        with pytest.raises(UnsafeCheckpointError, match=r"refused.*posix\.system|refused.*os\.system"):
            load_index_file(path)
    assert not marker.exists()
    # the helper really is malicious: unrestricted unpickling runs the command
    if kind == "index":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_corrupt_index_bytes_are_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pkl"
    import faiss

    index = faiss.IndexFlatL2(4)
    index.add(np.zeros((3, 4), np.float32))
    data = pickle.dumps({0: index}).replace(b"IndexFlat", b"IndexFlat", 1)
    blob = bytearray(data)
    cut = blob.index(b"this") + 40
    blob[cut: cut + 8] = b"\xff" * 8  # overwrite the start of the serialized index (its fourcc / header)
    bad.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError) as info:
        load_index_file(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


# ----------------------------------------------------------------------------------------- mixing


def test_resolve_cluster_path_follows_the_original_rules():
    assert resolve_cluster_path("x.pt", 0, False) == ""
    assert resolve_cluster_path("", 0.5, False) == "logs/44k/kmeans_10000.pt"
    assert resolve_cluster_path("", 0.5, True) == "logs/44k/feature_and_index.pkl"
    assert resolve_cluster_path("my.pkl", 0.3, True) == "my.pkl"


def test_ratio_one_moves_units_onto_the_training_units(tmp_path):
    rng = np.random.default_rng(4)
    train = rng.standard_normal((60, 6)).astype(np.float32)
    query = train[rng.integers(0, 60, 25)] + 0.01 * rng.standard_normal((25, 6)).astype(np.float32)
    units = torch.from_numpy(query.T.copy())[None]
    km = UnitMixer(write_reference_kmeans(tmp_path / "k.pt", {"alto": train}), 1.0, False, SPEAKERS)
    out = km(units, "alto")[0].T.numpy()
    nearest = ((query[:, None] - train[None]) ** 2).sum(-1).argmin(axis=1)
    np.testing.assert_array_equal(out, train[nearest])
    half = UnitMixer(tmp_path / "k.pt", 0.5, False, SPEAKERS)(units, 0)[0].T.numpy()  # id 0 is alto
    np.testing.assert_allclose(half, 0.5 * train[nearest] + 0.5 * query, atol=1e-6)

    fr = UnitMixer(write_reference_index(tmp_path / "f.pkl", {0: train}), 1.0, True, SPEAKERS)
    exact = torch.from_numpy(train[:10].T.copy())[None]  # a query equal to an indexed unit gets that unit
    np.testing.assert_allclose(fr(exact, "alto")[0].T.numpy(), train[:10], atol=1e-5)
    # weights (1/d^2)^2 over the 8 nearest of the probed list, as the original
    index = fr._indexes[0]
    d, ids = index.search(query, 8)
    w = np.where(ids >= 0, 1.0 / np.square(d.astype(np.float64)), 0.0)
    expected = (w[..., None] * train[np.maximum(ids, 0)]).sum(1) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(fr(units, "alto")[0].T.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_missing_speaker_and_wrong_width_name_both(tmp_path):
    km = UnitMixer(write_reference_kmeans(tmp_path / "k.pt", {"alto": np.zeros((3, 6), np.float32)}), 0.5, False,
                   SPEAKERS)
    with pytest.raises(InferenceError, match=r"speaker 'bass' .*not in the k-means model .*k\.pt \(it has alto\)"):
        km.check("bass", 6)
    with pytest.raises(InferenceError, match=r"k\.pt: speaker alto has 6-dim units but the model's ssl_dim is 16"):
        km.check("alto", 16)
    fr = UnitMixer(write_reference_index(tmp_path / "f.pkl", {1: np.ones((50, 6), np.float32)}), 0.5, True, SPEAKERS)
    with pytest.raises(InferenceError, match=r"speaker id 0 \(from -s alto\) is not in the feature index"):
        fr.check("alto", 6)
    with pytest.raises(InferenceError, match="not found"):
        UnitMixer(tmp_path / "none.pt", 0.5, False, SPEAKERS)


def _captured_units(engine: SvcEngine, monkeypatch, audio: np.ndarray, mixer) -> tuple[np.ndarray, list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    original = engine.synthesize

    def spy(feats, *args, **kwargs):
        seen.append(feats.units.clone())
        return original(feats, *args, **kwargs)

    monkeypatch.setattr(engine, "synthesize", spy)
    out = engine.convert(audio, 44100, ConvertOptions(speaker="bass", pad_seconds=0.1, unit_mixer=mixer))
    monkeypatch.undo()
    return out, seen


def test_engine_ratio_zero_is_identical_and_ratio_one_uses_centres(engine, monkeypatch, tmp_path):
    audio = synth_singing("alto", 0.7, sr=44100, seed=2).audio
    plain, plain_units = _captured_units(engine, monkeypatch, audio, None)
    centres = np.random.default_rng(5).standard_normal((12, UNIT_DIM)).astype(np.float32)
    path = write_reference_kmeans(tmp_path / "k.pt", {"bass": centres})
    zero, _ = _captured_units(engine, monkeypatch, audio, UnitMixer(path, 0.0, False, engine.speakers))
    np.testing.assert_array_equal(zero, plain)
    mixed, mixed_units = _captured_units(engine, monkeypatch, audio, UnitMixer(path, 1.0, False, engine.speakers))
    assert len(mixed_units) == len(plain_units) >= 1 and mixed.shape == plain.shape
    for before, after in zip(plain_units, mixed_units):
        frames = before[0].T.numpy()
        nearest = ((frames[:, None] - centres[None]) ** 2).sum(-1).argmin(axis=1)
        np.testing.assert_allclose(after[0].T.numpy(), centres[nearest], atol=1e-6)
    assert not np.array_equal(mixed, plain)


# ----------------------------------------------------------------------------------------- command lines


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(7)
    clips = {name: [rng.standard_normal((n, UNIT_DIM)).astype(np.float32) for n in (40, 35)]
             for name in ("alto", "bass", "soprano")}
    return write_unit_files(root / "dataset" / "44k", clips)


def test_training_scripts_and_inference_flags_end_to_end(project, monkeypatch, capsys, caplog):
    import cluster.train_cluster as train_cluster

    dataset = _dataset(project.root)
    monkeypatch.chdir(project.root)
    assert train_cluster.main(["--dataset", str(dataset), "--n_clusters", "20", "--no_progress"]) == 0
    kmeans = load_kmeans_file(project.root / "logs" / "44k" / "kmeans_10000.pt")
    assert sorted(kmeans) == ["alto", "bass", "soprano"] and kmeans["alto"].centres.shape == (20, UNIT_DIM)
    assert train_index.main(["--root_dir", str(dataset), "-c", str(project.config), "--no_progress"]) == 0
    indexes = load_index_file(project.root / "logs" / "44k" / "feature_and_index.pkl")
    assert sorted(indexes) == [0, 1, 2] and indexes[1].ntotal == 75 and indexes[1].nlist == 1

    raw = project.root / "raw"
    raw.mkdir(exist_ok=True)
    song = synth_singing("alto", 0.8, sr=44100, seed=3).audio
    sf.write(raw / "song.wav", song, 44100, subtype="PCM_16")
    base = ["-m", str(project.model), "-c", str(project.config), "-n", "song", "-s", "soprano", "-wf", "wav",
            "--no_progress"]
    results = project.root / "results"
    assert inference_main.main(base + ["-cr", "0.5"]) == 0
    km_out, _ = sf.read(results / "song_0key_soprano_0.5_sovits_pm.wav")
    assert inference_main.main(base + ["-fr", "-cr", "0.5"]) == 0  # same result name, as in the original
    assert inference_main.main(base) == 0
    plain, _ = sf.read(results / "song_0key_soprano_sovits_pm.wav")
    fr_out, _ = sf.read(results / "song_0key_soprano_0.5_sovits_pm.wav")
    assert km_out.shape == fr_out.shape == plain.shape == (len(song),)
    assert not np.allclose(km_out, plain) and not np.allclose(fr_out, plain) and not np.allclose(km_out, fr_out)

    # with a dynamic speaker mix the original skips cluster/retrieval: no mixer, a warning
    request = BatchRequest(project.model, project.config, ["song"], cluster_infer_ratio=0.5)
    engine = SvcEngine.load(project.model, project.config, device="cpu")
    with caplog.at_level("WARNING"):
        assert inference_batch.unit_mixer_for(request, engine, ["alto"], spk_mix=True) is None
    assert "ignored with -usm" in caplog.text
    assert isinstance(inference_batch.unit_mixer_for(request, engine, ["alto"], spk_mix=False), UnitMixer)

    # a crafted -cm file is refused in one line and its command never runs
    marker = project.root / "pwned"
    bad = malicious_index(project.root / "evil.pkl", marker)
    capsys.readouterr()
    assert inference_main.main(base + ["-fr", "-cr", "0.5", "-cm", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "refused" in err and "evil.pkl" in err and not marker.exists()
    request = BatchRequest(project.model, project.config, ["song"], cluster_infer_ratio=0.5,
                           cluster_model_path="logs/44k/feature_and_index.pkl")
    with pytest.raises(CheckpointError, match=r"feature_and_index\.pkl: not a k-means model file.*add -fr"):
        inference_batch.unit_mixer_for(request, engine, ["alto"], spk_mix=False)


def test_parallel_speakers_give_the_same_centres(tmp_path):
    dataset = _dataset(tmp_path)
    one = training.train_cluster_models(dataset, tmp_path / "one", n_clusters=15, progress=False)
    two = training.train_cluster_models(dataset, tmp_path / "two", n_clusters=15, num_processes=2, progress=False)
    a, b = load_kmeans_file(one), load_kmeans_file(two)
    for name in a:
        np.testing.assert_allclose(a[name].centres, b[name].centres, rtol=1e-5, atol=1e-5)


def test_train_cluster_runs_as_a_script(tmp_path, capsys):
    dataset = _dataset(tmp_path)
    done = subprocess.run([sys.executable, "cluster/train_cluster.py", "--dataset", str(dataset), "--output",
                           str(tmp_path / "out"), "--n_clusters", "8", "--no_progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_kmeans_file(tmp_path / "out" / "kmeans_10000.pt")["bass"].centres.shape == (8, UNIT_DIM)
    import cluster.train_cluster as train_cluster

    (tmp_path / "empty").mkdir()
    assert train_cluster.main(["--dataset", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no speaker folder" in err
