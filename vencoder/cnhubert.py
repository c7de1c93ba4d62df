"""Chinese HuBERT large (`cnhubertlarge`) from TencentGameMate's fairseq checkpoint.

`pretrain/chinese-hubert-large-fairseq-ckpt.pt` is a fairseq HuBERT-large checkpoint: 24 pre-LN
layers 1024 wide, a conv extractor with a layer norm after every conv, read through the same safe
fairseq reader as ContentVec. The units are the output of the whole stack including the encoder's
final layer norm (what fairseq gives when no output layer is named). so-vits-svc 4.1 feeds the raw
waveform to the model without the task's waveform normalisation, and models were trained on those
units, so the waveform is not normalised here either. Frames: floor((N - 400) / 320) + 1.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from vencoder.contentvec import load_fairseq_hubert
from vencoder.hubert import HubertModel
from vencoder.hubert_encoder import HubertUnitsEncoder

CNHUBERT_SOURCE = ("huggingface.co/TencentGameMate/chinese-hubert-large "
                   "(the fairseq file chinese-hubert-large-fairseq-ckpt.pt)")


class CNHubertLarge(HubertUnitsEncoder):
    name = "cnhubertlarge"
    weight_file = "chinese-hubert-large-fairseq-ckpt.pt"
    weight_source = CNHUBERT_SOURCE
    output_layer = None
    use_final_proj = False

    def _load_model(self, path: Path) -> HubertModel:
        model = load_fairseq_hubert(path)
        model.cfg = dataclasses.replace(model.cfg, normalize=False)
        return model
