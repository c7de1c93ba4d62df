"""F0 predictors: one interface, one registry.

    predictor = get_f0_predictor("rmvpe", hop_length=512, sampling_rate=44100, device="cpu", threshold=0.05)
    f0, uv = predictor.compute_f0_uv(wav_44k)   # float32 [T], T = len(wav) // hop_length

Names: pm, dio, harvest (signal processing), crepe, rmvpe, fcpe (networks). Every predictor's
voicing passes a silence gate (base.SilenceGate), so silence and a recording's noise floor are
unvoiced. Networks are loaded once per process per (weights file, device), so a batch job can
build a predictor per file at no cost.
"""
from modules.errors import SvcError
from modules.pitch.base import PREDICTOR_NAMES, F0Predictor, SilenceGate, get_f0_predictor, interpolate_f0

__all__ = ["F0Predictor", "SvcError", "PREDICTOR_NAMES", "SilenceGate", "get_f0_predictor",
           "interpolate_f0"]
