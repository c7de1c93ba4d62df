"""F0 predictors: one interface, one registry.

    predictor = get_f0_predictor("rmvpe", hop_length=512, sampling_rate=44100, device="cpu", threshold=0.05)
    f0, uv = predictor.compute_f0_uv(wav_44k)   # float32 [T], T = len(wav) // hop_length

Model-based predictors are cached per (name, device, weights) for the whole process, so a batch
job loads each network once.
"""
from modules.pitch.base import F0Predictor, PREDICTOR_NAMES, get_f0_predictor, interpolate_f0

__all__ = ["F0Predictor", "PREDICTOR_NAMES", "get_f0_predictor", "interpolate_f0"]
