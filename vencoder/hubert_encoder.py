"""Shared runner for the HuBERT-family encoders: batching, padding, layer choice and output layout."""
from __future__ import annotations

import logging
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from modules.errors import CheckpointError
from vencoder.base import SpeechEncoder, as_mono_tensor, inference_network, plan_batches
from vencoder.hubert import HubertModel

logger = logging.getLogger(__name__)


class HubertUnitsEncoder(SpeechEncoder):
    """Runs a `HubertModel` and returns `[1, D, T_u]` units per clip.

    Subclasses load the model (`_load_model`) and choose `output_layer` (1-based; None = all layers),
    whether `final_proj` is applied, and `edge_pad` (samples of zero padding added on each side).
    """

    output_layer: ClassVar[int | None] = None
    use_final_proj: ClassVar[bool] = False
    edge_pad: ClassVar[int] = 0

    def __init__(self, device: str | torch.device | None = None, pretrain_dir=None,
                 max_batch_seconds: float = 120.0) -> None:
        super().__init__(device, pretrain_dir, max_batch_seconds)
        path = self.check_weights(self.pretrain_dir)
        self.model: HubertModel = inference_network(self._load_model(path), self.device)
        out_dim = self.model.cfg.projected_dim if self.use_final_proj else self.model.cfg.encoder_embed_dim
        self.adopt_width(out_dim, path)
        if self.output_layer is not None and self.output_layer > self.model.cfg.encoder_layers:
            raise CheckpointError(
                f"{path}: {self.name} takes layer {self.output_layer}, but the model has only "
                f"{self.model.cfg.encoder_layers} layers"
            )

    def _load_model(self, path) -> HubertModel:
        raise NotImplementedError

    def n_frames(self, n_samples: int) -> int:
        return self.model.n_frames(n_samples + 2 * self.edge_pad)

    @torch.inference_mode()
    def encode_batch(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        clips = [as_mono_tensor(w) for w in wavs]
        if self.edge_pad:
            clips = [F.pad(c, (self.edge_pad, self.edge_pad)) for c in clips]
        lengths = [int(c.numel()) for c in clips]
        results: list[torch.Tensor | None] = [None] * len(clips)
        for batch in plan_batches(lengths, self.max_batch_samples):
            longest = max(lengths[i] for i in batch)
            padded = torch.zeros(len(batch), longest)
            for row, i in enumerate(batch):
                padded[row, : lengths[i]] = clips[i]
            lens = torch.tensor([lengths[i] for i in batch])
            feats, frames = self.model.extract(padded.to(self.device), lens.to(self.device),
                                               self.output_layer, self.use_final_proj)
            feats = feats.float().cpu()
            for row, i in enumerate(batch):
                results[i] = feats[row, : int(frames[row])].transpose(0, 1).unsqueeze(0).contiguous()
        return [r for r in results if r is not None]
