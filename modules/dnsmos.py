"""DNSMOS P.835 (SIG, BAK, OVRL) and P.808 quality estimates, on the ONNX models in the speechmos wheel.

DNSMOS predicts listener opinion scores (1 bad .. 5 excellent) of 16 kHz speech: SIG the voice
itself, BAK how unobtrusive the background is, OVRL the whole. The P.835 network reads raw samples
of 9.01 s windows; the P.808 network reads a dB-scaled 120-band mel spectrogram of the same window.
Clips shorter than a window are repeated to fill it; longer clips are scored in windows one second
apart and averaged. The P.835 raw outputs are mapped to the MOS scale by fixed quadratic polynomials
published with the models.

The package itself is not imported (it pulls in `requests` and rejects samples outside [-1, 1]);
the shipped model files are run here with onnxruntime, giving the package's numbers.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modules.audio import resample
from modules.errors import CheckpointError
from modules.shipped_weights import package_file

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 9.01
WINDOW = int(WINDOW_SECONDS * SAMPLE_RATE)
STEP = SAMPLE_RATE
# Quadratic calibration of the P.835 network's raw (sig, bak, ovrl) outputs to MOS, highest power first.
CALIBRATION = {
    "sig": (-0.08397278, 1.22083953, 0.0052439),
    "bak": (-0.13166888, 1.60915514, -0.39604546),
    "ovrl": (-0.06766283, 1.11546468, 0.04602535),
}


@dataclass
class DnsmosScores:
    sig: float
    bak: float
    ovrl: float
    p808: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Dnsmos:
    """The two DNSMOS networks as onnxruntime sessions (single-threaded: scoring is many small runs)."""

    def __init__(self, p835_path: str | Path, p808_path: str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.sessions = {}
        for name, path in (("p835", p835_path), ("p808", p808_path)):
            try:
                self.sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - onnxruntime's load errors derive from Exception only
                raise CheckpointError(f"{path}: not a readable DNSMOS ONNX model ({str(e).splitlines()[0]})") from None
        self.inputs = {name: s.get_inputs()[0].name for name, s in self.sessions.items()}

    def score(self, audio: np.ndarray, sr: int) -> DnsmosScores:
        """Scores of mono audio at any rate (resampled to 16 kHz; samples beyond +-1 are clipped)."""
        wav = np.clip(resample(np.asarray(audio, dtype=np.float32), sr, SAMPLE_RATE), -1.0, 1.0)
        if wav.size == 0:
            wav = np.zeros(1, dtype=np.float32)
        while len(wav) < WINDOW:
            wav = np.concatenate([wav, wav])
        n_windows = int(np.floor(len(wav) / SAMPLE_RATE) - WINDOW_SECONDS) + 1
        rows = []
        for i in range(max(n_windows, 1)):
            segment = wav[i * STEP: i * STEP + WINDOW]
            if len(segment) < WINDOW:
                continue
            raw = self.sessions["p835"].run(None, {self.inputs["p835"]: segment[None].astype(np.float32)})[0][0]
            p808 = self.sessions["p808"].run(None, {self.inputs["p808"]: p808_features(segment[:-160])[None]})[0]
            rows.append([np.polyval(CALIBRATION[k], float(raw[j])) for j, k in enumerate(("sig", "bak", "ovrl"))]
                        + [float(np.ravel(p808)[0])])
        sig, bak, ovrl, p808 = np.mean(np.array(rows, dtype=np.float64), axis=0)
        return DnsmosScores(float(sig), float(bak), float(ovrl), float(p808))


def p808_features(segment: np.ndarray) -> np.ndarray:
    """[frames, 120] mel power in dB relative to the window's peak, shifted and scaled as the model expects."""
    import librosa

    mel = librosa.feature.melspectrogram(y=segment, sr=SAMPLE_RATE, n_fft=321, hop_length=160, n_mels=120)
    return ((librosa.power_to_db(mel, ref=np.max) + 40.0) / 40.0).T.astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_dnsmos() -> Dnsmos:
    """DNSMOS on the speechmos package's shipped models, built once per process."""
    return Dnsmos(package_file("speechmos", "dnsmos_models/sig_bak_ovr.onnx", "DNSMOS"),
                  package_file("speechmos", "dnsmos_models/model_v8.onnx", "DNSMOS"))
