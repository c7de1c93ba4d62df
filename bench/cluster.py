"""Cost of the timbre-leak tools on one hour of 768-dim units (synthetic), and their quality against full k-means.

    python -m bench.cluster                  # 1 h = 180,000 frames, 10,000 centres, 2 threads
    python -m bench.cluster --device cuda    # the GPU path of cluster/train_cluster.py --gpu
    python -m bench.cluster --threads 1      # on a busy machine: OpenMP threads of faiss/torch contend badly

Units are synthetic but shaped like speech units: 400 "phone" prototypes in a 64-dim subspace,
frames scattered around them, plus full-rank noise (random Gaussian frames would be the worst case
for any k-means). Rows:
- fit: seconds for cluster/train_cluster.py's k-means of one speaker with 1 h of units;
- index: seconds for train_index.py's IVF index of the same units;
- inertia: ours vs scikit-learn's full KMeans (k-means++, n_init=1, what the original runs) on a
  subsample with the same frames per centre (full KMeans on the whole hour takes far too long here);
- -cr / -fr: added seconds per audio second at inference (44.1 kHz, hop 512: 86 frames/s), after the
  one-time load, which is listed separately.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FRAMES_PER_SECOND = 44100 / 512


def synthetic_units(n: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, dim)).astype(np.float32) / 8
    prototypes = rng.standard_normal((400, 64)).astype(np.float32)
    z = prototypes[rng.integers(0, 400, n)] + 0.5 * rng.standard_normal((n, 64)).astype(np.float32)
    return (z @ basis + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=180_000, help="unit frames of the speaker (180,000 = 1 h at 50 Hz)")
    p.add_argument("--dim", type=int, default=768, help="unit width (768 for vec768l12)")
    p.add_argument("--clusters", type=int, default=10_000, help="k-means centres (default 10000)")
    p.add_argument("--compare_frames", type=int, default=9_000,
                   help="subsample size for the comparison with full KMeans (same frames per centre)")
    p.add_argument("--audio_seconds", type=float, default=30.0, help="audio length for the inference cost")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for faiss and torch (default 2)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU k-means path")
    args = p.parse_args(argv)

    import faiss
    import numpy as np
    import torch
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from cluster.files import SpeakerCentres, save_index_file, save_kmeans_file
    from cluster.kmeans import fit_centres, inertia
    from cluster.mixing import UnitMixer
    from cluster.training import build_feature_index

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    width = 62

    class _Rows(list):
        """Prints each row when it is measured, so a slow run shows its progress."""

        def append(self, row: tuple[str, str, str]) -> None:
            super().append(row)
            print(f"{row[0]:<{width}}  {row[1]:>8}  {row[2]}", flush=True)

    print(f"{'measure':<{width}}  {'value':>8}  unit")
    print(f"{'-' * width}  {'-' * 8}  ----", flush=True)
    rows = _Rows()
    units = synthetic_units(args.frames, args.dim)
    hours = args.frames / 50 / 3600

    report = fit_centres(units, args.clusters, seed=0, device=args.device, progress=False)
    rows.append((f"fit {args.clusters} centres on {hours:.2f} h ({args.frames}x{args.dim}), {args.device}",
                 f"{report.seconds:.1f}", "s"))
    start = time.perf_counter()
    index = build_feature_index(units, seed=0)
    rows.append((f"build IVF{index.nlist},Flat index of {hours:.2f} h", f"{time.perf_counter() - start:.1f}", "s"))

    ratio = args.clusters / args.frames
    sub = units[np.random.default_rng(1).permutation(len(units))[: args.compare_frames]]
    k_sub = max(2, int(round(ratio * len(sub))))
    ours = fit_centres(sub, k_sub, seed=0, device=args.device, progress=False)
    start = time.perf_counter()
    with threadpool_limits(args.threads):
        full = KMeans(k_sub, n_init=1, random_state=0).fit(sub)
    full_seconds = time.perf_counter() - start
    ours_inertia = inertia(sub, ours.centres)
    rows.append((f"subsample {len(sub)} frames -> {k_sub} centres: ours", f"{ours.seconds:.1f}", "s"))
    rows.append((f"subsample {len(sub)} frames -> {k_sub} centres: sklearn full KMeans", f"{full_seconds:.1f}", "s"))
    rows.append(("inertia ours / full KMeans (subsample)", f"{ours_inertia / full.inertia_:.4f}", "ratio"))

    n_frames = int(round(args.audio_seconds * FRAMES_PER_SECOND))
    query = torch.from_numpy(synthetic_units(n_frames, args.dim, seed=2).T.copy())[None]
    with tempfile.TemporaryDirectory() as tmp:
        km_path, fr_path = Path(tmp) / "kmeans_10000.pt", Path(tmp) / "feature_and_index.pkl"
        save_kmeans_file({"spk": SpeakerCentres(report.centres)}, km_path)
        save_index_file({0: index}, fr_path)
        for label, path, retrieval in (("-cr 0.5 (k-means)", km_path, False), ("-fr -cr 0.5 (index)", fr_path, True)):
            start = time.perf_counter()
            mixer = UnitMixer(path, 0.5, retrieval, {"spk": 0})
            mixer(query[..., :10], "spk")  # builds the per-speaker search structure once
            once = time.perf_counter() - start
            start = time.perf_counter()
            mixer(query, "spk")
            per_second = (time.perf_counter() - start) / args.audio_seconds
            rows.append((f"{label}: one-time load", f"{once:.2f}", "s"))
            rows.append((f"{label}: added cost", f"{per_second * 1000:.1f}", "ms per audio s"))

    return 0


if __name__ == "__main__":
    sys.exit(main())
