"""Speech encoders exported to ONNX (MoeSS sub-models): `vec256l9-onnx`, `vec256l12-onnx`,
`vec768l9-onnx`, `vec768l12-onnx` and `hubertsoft-onnx`, run with onnxruntime.

The graph takes 16 kHz float32 audio shaped `[1, 1, N]` (a rank-2 `[1, N]` input is accepted too)
and returns units `[1, T, D]`; we hand back `[1, D, T]` like every other encoder. Input and output
names are read from the graph, so any export naming works. The CUDA provider is used when the
device is a CUDA device and onnxruntime offers it; otherwise the CPU provider.

The exported graphs have a fixed batch of one and no padding mask, so a padded batch would change
the units of the shorter clips: clips run one at a time through the one loaded session.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from modules.errors import CheckpointError
from vencoder.base import SpeechEncoder, as_mono_tensor

logger = logging.getLogger(__name__)

MOESS_SOURCE = ("the MoeSS sub-model releases (huggingface.co/NaruseMioShirakana/MoeSS-SUBModel), "
                "file {file}")


def onnx_providers(device: torch.device) -> list:
    """CUDA (on the device's GPU index) first when the device asks for CUDA and this onnxruntime build has
    it, CPU otherwise."""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    if device.type == "cuda":
        logger.warning("onnxruntime has no CUDA provider here; the ONNX speech encoder runs on the CPU")
    return ["CPUExecutionProvider"]


class OnnxSpeechEncoder(SpeechEncoder):
    """Runs a `[1, 1, N] -> [1, T, D]` ONNX speech encoder."""

    weight_file: ClassVar[str] = ""

    def __init__(self, device: str | torch.device | None = None, pretrain_dir: str | Path | None = None,
                 max_batch_seconds: float = 120.0) -> None:
        super().__init__(device, pretrain_dir, max_batch_seconds)
        path = self.check_weights(self.pretrain_dir)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise CheckpointError(f"speech encoder '{self.name}' needs onnxruntime ({e}); "
                                     "install it with pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=onnx_providers(self.device))
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
            raise CheckpointError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        graph_input = self.session.get_inputs()[0]
        graph_output = self.session.get_outputs()[0]
        self.input_name = graph_input.name
        self.output_name = graph_output.name
        self.input_rank = len(graph_input.shape) if graph_input.shape else 3
        if self.input_rank not in (2, 3):
            raise CheckpointError(f"{path}: input '{self.input_name}' has rank {self.input_rank}; "
                                        "a speech encoder graph takes [1, 1, N] or [1, N] audio")
        width = graph_output.shape[-1] if graph_output.shape else None
        if isinstance(width, int):  # a symbolic width is known only from the first output
            self.adopt_width(width, path)
        self.path = path

    def n_frames(self, n_samples: int) -> int:
        # The graph decides; the MoeSS exports keep the wav2vec 2.0 conv stack (400-sample window, hop 320).
        return max(0, (n_samples - 400) // 320 + 1)

    def _run(self, wav: torch.Tensor) -> torch.Tensor:
        audio = wav.numpy().astype(np.float32, copy=False)
        audio = audio.reshape((1, 1, -1) if self.input_rank == 3 else (1, -1))
        (units,) = self.session.run([self.output_name], {self.input_name: audio})
        units = np.asarray(units)
        if units.ndim == 2:
            units = units[None]
        if units.ndim != 3 or units.shape[0] != 1:
            raise CheckpointError(f"{self.path}: output '{self.output_name}' has shape {units.shape}; "
                                        "expected [1, T, D]")
        return torch.from_numpy(np.ascontiguousarray(units.transpose(0, 2, 1))).float()

    def encode_batch(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self._run(as_mono_tensor(w)) for w in wavs]


class ContentVec256L9Onnx(OnnxSpeechEncoder):
    name, weight_file = "vec256l9-onnx", "vec-256-layer-9.onnx"
    weight_source = MOESS_SOURCE.format(file=weight_file)


class ContentVec256L12Onnx(OnnxSpeechEncoder):
    name, weight_file = "vec256l12-onnx", "vec-256-layer-12.onnx"
    weight_source = MOESS_SOURCE.format(file=weight_file)


class ContentVec768L9Onnx(OnnxSpeechEncoder):
    name, weight_file = "vec768l9-onnx", "vec-768-layer-9.onnx"
    weight_source = MOESS_SOURCE.format(file=weight_file)


class ContentVec768L12Onnx(OnnxSpeechEncoder):
    name, weight_file = "vec768l12-onnx", "vec-768-layer-12.onnx"
    weight_source = MOESS_SOURCE.format(file=weight_file)


class HubertSoftOnnx(OnnxSpeechEncoder):
    name, weight_file = "hubertsoft-onnx", "hubert-soft.onnx"
    weight_source = MOESS_SOURCE.format(file=weight_file)
