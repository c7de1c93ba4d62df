"""ContentVec / HuBERT-base encoders read from a fairseq checkpoint (`vec768l12`, `vec256l9`).

Both use `pretrain/checkpoint_best_legacy_500.pt` (RVC's `hubert_base.pt` works under that name).
vec768l12 takes the output of transformer layer 12 as is; vec256l9 takes layer 9 and applies
`final_proj` (768 -> 256), as so-vits-svc 4.1 does. Frames: floor((N - 400) / 320) + 1 at 16 kHz.
"""
from __future__ import annotations

from pathlib import Path

from vencoder.fairseq_checkpoint import load_fairseq_checkpoint
from vencoder.hubert import HubertConfig, HubertModel
from vencoder.hubert_encoder import HubertUnitsEncoder

CONTENTVEC_SOURCE = (
    "the ContentVec project (github.com/auspicious3000/contentvec, the 'legacy' 500 checkpoint "
    "checkpoint_best_legacy_500.pt), or use RVC's hubert_base.pt renamed to checkpoint_best_legacy_500.pt"
)


def load_fairseq_hubert(path: Path) -> HubertModel:
    """Build our HubertModel from a fairseq HuBERT checkpoint (architecture from its config)."""
    ckpt = load_fairseq_checkpoint(path)
    cfg = HubertConfig.from_fairseq(ckpt.model_cfg, ckpt.task_cfg, source=str(path))
    model = HubertModel(cfg)
    model.load_fairseq_state(ckpt.model_state, source=str(path))
    return model


class ContentVec768L12(HubertUnitsEncoder):
    name = "vec768l12"
    weight_file = "checkpoint_best_legacy_500.pt"
    weight_source = CONTENTVEC_SOURCE
    output_layer = 12
    use_final_proj = False

    def _load_model(self, path: Path) -> HubertModel:
        return load_fairseq_hubert(path)


class ContentVec256L9(ContentVec768L12):
    name = "vec256l9"
    output_layer = 9
    use_final_proj = True
