"""Timbre-leak control: per-speaker k-means models and faiss feature indexes of the training units.

- `cluster.files`: read/write `kmeans_10000.pt` and `feature_and_index.pkl` (so-vits-svc 4.1 formats)
  without running code from them.
- `cluster.kmeans`: fast seeded k-means (two-level faiss on the CPU, full k-means in torch on a GPU).
- `cluster.training`: build both files from a preprocessed dataset (cluster/train_cluster.py, train_index.py).
- `cluster.mixing`: `UnitMixer`, the `-cm/-cr/-fr` unit mixing at inference.
"""
