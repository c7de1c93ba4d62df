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
