"""Small fake pretrained files for the speech encoders beyond ContentVec / HuBERT-Soft, each in its
published on-disk layout with seeded random weights.

- `write_onnx_encoder`: a tiny conv + linear speech encoder exported to ONNX ([1, 1, N] -> [1, T, D]).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn


class _TinyOnnxEncoder(nn.Module):
    """A 400-sample window with hop 320 (the wav2vec 2.0 conv stack's frame grid), then a linear layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 16, 400, 320)
        self.proj = nn.Linear(16, dim)

    def forward(self, source: torch.Tensor) -> torch.Tensor:  # [1, 1, N] -> [1, T, D]
        return self.proj(torch.tanh(self.conv(source)).transpose(1, 2))


def tiny_onnx_module(dim: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _TinyOnnxEncoder(dim).eval()


def write_onnx_encoder(path: str | Path, dim: int, seed: int = 0, input_name: str = "source",
                       output_name: str = "embed") -> Path:
    """Export the tiny encoder with a dynamic sample axis (the TorchScript exporter: no onnxscript needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = tiny_onnx_module(dim, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 1, 16000),), str(path), input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: {2: "n"}, output_name: {1: "t"}},
                          dynamo=False)
    return path


def write_fairseq_hubert_large(path: str | Path, *, layers: int = 3, dim: int = 32, ffn: int = 64, heads: int = 4,
                               conv_dim: int = 24, conv_pos: int = 16, groups: int = 4, final_dim: int = 16,
                               seed: int = 0) -> Path:
    """A fairseq HuBERT-large checkpoint (layer-norm extractor, pre-LN layers, task normalize on) at small widths."""
    from tests.support.h2_checkpoints import _fake_modules, fairseq_hubert_state, fairseq_model_cfg

    state = fairseq_hubert_state(layers, dim, ffn, conv_dim, conv_pos, groups, final_dim, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    del state["feature_extractor.conv_layers.0.2.weight"], state["feature_extractor.conv_layers.0.2.bias"]
    for i in range(7):
        # layer_norm mode: each conv block is (conv, dropout, (transpose, LayerNorm, transpose), gelu)
        state[f"feature_extractor.conv_layers.{i}.2.1.weight"] = 1 + 0.1 * torch.randn(conv_dim, generator=g)
        state[f"feature_extractor.conv_layers.{i}.2.1.bias"] = 0.1 * torch.randn(conv_dim, generator=g)
    model_cfg = fairseq_model_cfg(layers, dim, ffn, heads, conv_dim, conv_pos, groups, final_dim,
                                  layer_norm_first=True)
    model_cfg["extractor_mode"] = "layer_norm"
    task_cfg = {"_name": "hubert_pretraining", "labels": ["km"], "sample_rate": 16000, "normalize": True}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _fake_modules():
        from tests.support.h2_checkpoints import _FakeDictionary

        torch.save({"args": None, "cfg": {"_name": None, "model": model_cfg, "task": task_cfg}, "model": state,
                    "criterion": None, "optimizer_history": [], "task_state": {"dictionaries": [_FakeDictionary()]},
                    "extra_state": {"epoch": 1}}, path)
    return path
