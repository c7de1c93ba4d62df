"""Inference on onnxruntime: the exported MoeSS graph in place of the PyTorch synthesizer.

`OnnxSvcEngine` is an `SvcEngine` whose synthesis step runs a `<Name>_SoVits.onnx` (modules.onnx_export)
in onnxruntime; slicing, forced clipping and crossfades, padding, F0, units, loudness envelope and
speaker mixing are the torch engine's own code. The prior noise is the torch path's (seed 52468 before
each piece), so the outputs differ only by the harmonic source's random start phases and noise, which
the graph draws itself (the MoeSS interface has no input for them).

The graph runs on each piece whole (no windowed synthesis), so memory grows with the piece length;
use -cl for very long unbroken passages.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.config import HParams, load_config
from modules.errors import InferenceError
from modules.inference import DEFAULT_SEED, PieceFeatures, SvcEngine
from modules.onnx_export import AUDIO_OUTPUT, PHASE_INPUT, SOURCE_HARMONICS, SOURCE_NOISE_INPUT, speaker_order
from modules.speaker_mix import SpeakerMix

logger = logging.getLogger(__name__)


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception types (plain Exception subclasses) for unreadable or invalid files."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


class OnnxSvcEngine(SvcEngine):
    """SvcEngine with an onnxruntime session as the synthesizer (CPU).

    Speaker conditions are weights over speaker ids ([n_speakers, 1] for one speaker, [n_speakers, T]
    for a mix); the graph gets a speaker id (single-speaker graph) or per-frame weights over the
    config's speakers (speaker-mix graph).
    """

    def __init__(self, session: Any, hps: HParams, encoder: Any = None, pretrain_dir: str | os.PathLike | None = None,
                 encoder_window_seconds: float = 60.0, source: str = "model.onnx") -> None:
        # The torch engine's state minus the torch model; synthesis never touches self.model.
        self._take_config(hps, encoder, pretrain_dir, encoder_window_seconds)
        self.model = None
        self.session = session
        self.source = source
        self.device = torch.device("cpu")
        self.chunk_frames = 0
        self.dtype = torch.float32
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_names = set(inputs)
        missing = {"c", "f0", "mel2ph", "uv", "noise", "sid"} - self.input_names
        if missing:
            raise InferenceError(f"{source}: not a so-vits MoeSS graph (inputs {sorted(missing)} missing)")
        if self.vol_embedding != ("vol" in self.input_names):
            raise InferenceError(f"{source}: the graph {'has' if 'vol' in self.input_names else 'lacks'} a vol input "
                                 f"but the config's vol_embedding is {self.vol_embedding}; export it from this config")
        width = inputs["c"].shape[2]
        if isinstance(width, int) and width != hps.model.ssl_dim:
            raise InferenceError(f"{source}: the graph takes {width}-dim units, the config's ssl_dim is {hps.model.ssl_dim}")
        self.mix_graph = inputs["sid"].type == "tensor(float)"
        self.graph_ids = [sid for _, sid in speaker_order(hps)] if self.mix_graph else None
        self.inter_channels = hps.model.inter_channels

    @classmethod
    def load_onnx(cls, onnx_path: str | os.PathLike, config_path: str | os.PathLike, encoder: Any = None,
                  pretrain_dir: str | os.PathLike | None = None, threads: int = 0,
                  encoder_window_seconds: float = 60.0) -> OnnxSvcEngine:
        """An engine for an exported graph and the config it was exported from; threads 0 = onnxruntime's choice."""
        import onnxruntime as ort

        if not Path(onnx_path).is_file():
            raise InferenceError(f"{onnx_path}: ONNX model not found; export one with onnx_export.py")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except (RuntimeError, *_ort_errors()) as e:
            raise InferenceError(f"{onnx_path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        return cls(session, load_config(config_path), encoder=encoder, pretrain_dir=pretrain_dir,
                   encoder_window_seconds=encoder_window_seconds, source=str(onnx_path))

    # ----- speakers ---------------------------------------------------------------------------------------

    def speaker_condition(self, spk_id: int) -> torch.Tensor:
        weights = torch.zeros(self.n_speakers, 1)
        weights[spk_id, 0] = 1.0
        return weights

    def mix_condition(self, mix: SpeakerMix, times: np.ndarray) -> torch.Tensor:
        weights = torch.zeros(self.n_speakers, len(times))
        weights[list(mix.speaker_ids)] = torch.from_numpy(mix.weights(times)).float()
        return weights

    def _sid_input(self, weights: torch.Tensor, n_frames: int) -> np.ndarray:
        used = torch.nonzero(weights.abs().sum(dim=1) > 0).flatten().tolist()
        if not self.mix_graph:
            if len(used) != 1:
                raise InferenceError(f"{self.source}: a single-speaker graph cannot mix speakers; export the model "
                                     "from a config whose spk map names two or more speakers")
            return np.array(used, dtype=np.int64)
        outside = sorted(set(used) - set(self.graph_ids))
        if outside:
            raise InferenceError(f"{self.source}: speaker ids {outside} are not in the graph (config spk ids "
                                 f"{self.graph_ids})")
        columns = weights[self.graph_ids].expand(-1, n_frames) if weights.shape[1] == 1 else weights[self.graph_ids]
        return np.ascontiguousarray(columns.t().numpy(), dtype=np.float32)

    # ----- synthesis --------------------------------------------------------------------------------------

    def synthesize(
        self, feats: PieceFeatures, g: torch.Tensor, noise_scale: float = 0.4, seed: int | None = DEFAULT_SEED,
        predict_f0: bool = False, progress: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio [1, 1, T*hop], f0 [1, T]) of one piece from the graph; g as from speaker_condition."""
        if predict_f0:
            raise InferenceError("automatic f0 prediction (-a) is not part of the ONNX graph; use the torch backend")
        if seed is not None:
            torch.manual_seed(seed)
        n_frames = feats.f0.shape[-1]
        noise = torch.randn(1, self.inter_channels, n_frames) * noise_scale  # the torch path's prior draw
        feed = {
            "c": np.ascontiguousarray(feats.units[0].t().unsqueeze(0).float().cpu().numpy()),
            "f0": feats.f0.float().cpu().numpy(),
            "mel2ph": np.arange(1, n_frames + 1, dtype=np.int64)[None],  # units are already one per frame
            "uv": feats.uv.float().cpu().numpy(),
            "noise": noise.numpy(),
            "sid": self._sid_input(g, n_frames),
        }
        if "vol" in self.input_names:
            feed["vol"] = feats.vol.float().cpu().numpy()
        if PHASE_INPUT in self.input_names:  # a verification graph: draw the source as the torch path does
            feed[PHASE_INPUT] = torch.rand(1, SOURCE_HARMONICS).numpy()
            feed[SOURCE_NOISE_INPUT] = torch.randn(1, n_frames * self.hop_length, SOURCE_HARMONICS).numpy()
        audio = self.session.run([AUDIO_OUTPUT], feed)[0]
        if progress is not None:
            progress(n_frames)
        return torch.from_numpy(audio), feats.f0


def default_onnx_path(model_path: str | os.PathLike) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}_SoVits.onnx")


def load_onnx_engine(model_path: str | os.PathLike, config_path: str | os.PathLike,
                     onnx_path: str | os.PathLike | None = None, **kwargs: Any) -> OnnxSvcEngine:
    """The onnx engine for a checkpoint: `onnx_path` as given, or the graph next to the checkpoint,
    exported first when it is missing or older than the checkpoint or the config."""
    if onnx_path is None:
        onnx_path = default_onnx_path(model_path)
        inputs = [Path(model_path), Path(config_path)]
        stale = not onnx_path.is_file() or any(p.is_file() and p.stat().st_mtime > onnx_path.stat().st_mtime
                                               for p in inputs)
        if stale:
            from modules.onnx_export import export_model

            logger.warning("exporting %s to %s for the onnx backend (once)", model_path, onnx_path)
            export_model(model_path, config_path, onnx_path)
    return OnnxSvcEngine.load_onnx(onnx_path, config_path, **kwargs)


__all__ = ["OnnxSvcEngine", "default_onnx_path", "load_onnx_engine"]
