"""Speaker embeddings for speaker similarity (SECS), on the voice encoder that ships in the resemblyzer wheel.

The network (a GE2E speaker-verification encoder) is three stacked LSTM layers of 256 units over
40-band power mel frames (16 kHz, 25 ms windows, 10 ms hop), then a 256x256 linear layer, ReLU and
L2 normalisation. An utterance is cut into 160-frame (1.6 s) partials, 1.3 per second, the last one
kept when it is at least 75% covered; the utterance embedding is the normalised mean of the partials'.

The package itself is never imported (it needs webrtcvad and a deprecated scipy module at import
time). Its preprocessing is done here: raise quiet audio to -30 dBFS, then shorten silences longer
than about 0.2 s, using WebRTC's voice activity detector (the `webrtcvad` module, from the
webrtcvad-wheels package) as the package does, so embeddings equal the package's. Without that
module an energy-based voice decision stands in, with a warning; on synthetic singing the embeddings
then differ from the package's by a cosine of 0.97-0.998 (WebRTC also drops some quiet notes).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from torch import nn

from modules.audio import resample
from modules.checkpoint import load_torch_file, load_weights
from modules.shipped_weights import package_file

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_MELS = 40
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND = 1.3
MIN_LAST_COVERAGE = 0.75
TARGET_DBFS = -30.0
# Silence shortening: 30 ms decisions, smoothed over 8 and widened by 6 on each run (about 0.2 s kept).
VAD_WINDOW = 480
VAD_SMOOTHING = 8
VAD_MAX_SILENCE = 6
VAD_FLOOR_DB = -45.0  # a window is voice when its level is within this of the clip's loudest window
HIDDEN = 256
LAYERS = 3


class SpeakerEncoder(nn.Module):
    """LSTM speaker encoder: mel partials [B, 160, 40] -> unit-length embeddings [B, 256]."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.inference_mode()
    def embed_utterance(self, wav16: np.ndarray) -> np.ndarray:
        """Unit-length embedding [256] of preprocessed 16 kHz audio (see `preprocess`)."""
        with single_thread():
            return self._embed_utterance(wav16)

    def _embed_utterance(self, wav16: np.ndarray) -> np.ndarray:
        wav16 = np.asarray(wav16, dtype=np.float32)
        slices = partial_slices(len(wav16))
        needed = slices[-1][1] * HOP
        if needed >= len(wav16):
            wav16 = np.pad(wav16, (0, needed - len(wav16)))
        mel = mel_frames(wav16)
        batch = torch.from_numpy(np.stack([mel[a:b] for a, b in slices]))
        partials = self(batch).numpy()
        mean = partials.mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """Embedding of audio at any rate, preprocessed like the encoder's training data."""
        return self.embed_utterance(preprocess(audio, sr))

    def embed_speaker(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """Normalised mean of the clips' embeddings: one reference point for a speaker."""
        embeds = np.stack([self.embed(audio, sr) for audio, sr in clips])
        mean = embeds.mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: an LSTM is 160 small sequential matrix products per layer, which
    extra threads only slow down (measured on a busy 2-core machine: 0.06 s on one thread, 15 s on two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def mel_frames(wav16: np.ndarray) -> np.ndarray:
    """Power mel frames [T, 40] (not log): the front end the encoder was trained on."""
    import librosa

    mel = librosa.feature.melspectrogram(y=wav16, sr=SAMPLE_RATE, n_fft=WINDOW, hop_length=HOP, n_mels=N_MELS)
    return mel.astype(np.float32).T


def partial_slices(n_samples: int) -> list[tuple[int, int]]:
    """Mel-frame ranges of the 1.6 s partials covering `n_samples`; always at least one."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP))
    starts = range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    slices = [(s, s + PARTIAL_FRAMES) for s in starts]
    last_start = slices[-1][0] * HOP
    coverage = (n_samples - last_start) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_LAST_COVERAGE and len(slices) > 1:
        slices.pop()
    return slices


def preprocess(audio: np.ndarray, sr: int) -> np.ndarray:
    """16 kHz, quiet audio raised to -30 dBFS (loud audio left alone), long silences shortened."""
    wav = resample(np.asarray(audio, dtype=np.float32), sr, SAMPLE_RATE)
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    if rms > 0:
        gain_db = TARGET_DBFS - 20.0 * np.log10(rms)
        if gain_db > 0:
            wav = wav * np.float32(10.0 ** (gain_db / 20.0))
    return shorten_silences(wav)


def voice_windows(wav16: np.ndarray, n: int) -> np.ndarray:
    """Per 30 ms window: 1.0 where there is voice (WebRTC's aggressive mode, else an energy floor)."""
    try:
        import webrtcvad
    except ImportError:
        _warn_energy_vad()
        windows = wav16[: n * VAD_WINDOW].reshape(n, VAD_WINDOW).astype(np.float64)
        level = 10.0 * np.log10(np.mean(windows ** 2, axis=1) + 1e-12)
        return (level > level.max() + VAD_FLOOR_DB).astype(np.float64)
    pcm = np.round(np.clip(wav16[: n * VAD_WINDOW], -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
    vad = webrtcvad.Vad(3)
    step = VAD_WINDOW * 2  # bytes per window
    return np.array([vad.is_speech(pcm[i * step:(i + 1) * step], SAMPLE_RATE) for i in range(n)], dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _warn_energy_vad() -> None:
    logger.warning("webrtcvad is not installed (pip install webrtcvad-wheels): speaker similarity uses an "
                   "energy-based voice detector, so SECS differs slightly from resemblyzer's")


def shorten_silences(wav16: np.ndarray) -> np.ndarray:
    """Drop silent stretches beyond ~0.2 s; the clip is kept whole when nothing counts as voice."""
    n = len(wav16) // VAD_WINDOW
    if n == 0:
        return wav16
    voice = voice_windows(wav16, n)
    padded = np.concatenate([np.zeros((VAD_SMOOTHING - 1) // 2), voice, np.zeros(VAD_SMOOTHING // 2)])
    smoothed = np.convolve(padded, np.ones(VAD_SMOOTHING) / VAD_SMOOTHING, mode="valid")
    keep = np.round(smoothed).astype(bool)
    keep = scipy.ndimage.binary_dilation(keep, np.ones(VAD_MAX_SILENCE + 1, dtype=bool))
    if not keep.any():
        return wav16[: n * VAD_WINDOW]
    return wav16[: n * VAD_WINDOW][np.repeat(keep, VAD_WINDOW)]


def weights_path() -> Path:
    return package_file("resemblyzer", "pretrained.pt", "speaker similarity (SECS)")


@functools.lru_cache(maxsize=2)
def load_speaker_encoder(path: str | None = None) -> SpeakerEncoder:
    """The encoder on resemblyzer's shipped weights (or `path` in the same format), loaded once."""
    source = Path(path) if path else weights_path()
    ckpt = load_torch_file(source, "speaker encoder weights")
    state = ckpt.get("model_state") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        from modules.errors import CheckpointError

        raise CheckpointError(f"{source}: no 'model_state' dict (not a resemblyzer voice encoder file)")
    # The similarity scale and bias only shaped the training loss; embeddings do not use them.
    state = {k: v for k, v in state.items() if not k.startswith("similarity_")}
    model = SpeakerEncoder()
    load_weights(model, state, source=str(source))
    for p in model.parameters():
        p.requires_grad_(False)
    logger.debug("speaker encoder loaded from %s", source)
    return model.eval()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
