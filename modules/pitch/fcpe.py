"""`fcpe` F0 predictor: the FCPE network on `pretrain/fcpe.pt` when present, else torchfcpe's bundled weights.

Steps, as so-vits-svc 4.1 runs them: resample to the checkpoint's mel rate (16 kHz) with the original's
windowed-sinc resampler (modules.audio.resample_sinc, 128 zero crossings); log-mel with the
checkpoint's `mel` parameters (modules.frame_features.nsf_mel: reflect padding, centre=False, slaney mel,
log clamp 1e-5); frame count fixed to len(input) // mel_hop + 1 as the original does (one frame
repeated or frames dropped); network; local_argmax decoding with the threshold (unvoiced -> 0);
nearest resize to T = len(wav) // hop_length. The f0 range is the checkpoint's (not clamped to 50-1100).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from modules.audio import resample_sinc
from modules.errors import CheckpointError
from modules.frame_features import nsf_mel
from modules.pitch.base import F0Predictor, resize_nearest
from modules.pitch.fcpe_net import FCPENet, MelConfig, bundled_checkpoint, load_fcpe

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
USER_CHECKPOINT = PROJECT_ROOT / "pretrain" / "fcpe.pt"
# The original's mel front end resamples with torchaudio's Hann-windowed sinc, 128 zero crossings, rolloff 0.99.
RESAMPLE_ZERO_CROSSINGS = 128
RESAMPLE_ROLLOFF = 0.99


def default_checkpoint() -> Path:
    """`pretrain/fcpe.pt` of the project (so-vits-svc 4.1's file) if it exists, else the
    torchfcpe package's bundled file. Raises CheckpointError when neither exists."""
    if USER_CHECKPOINT.is_file():
        return USER_CHECKPOINT
    bundled = bundled_checkpoint()
    if bundled is None:
        raise CheckpointError(
            f"no FCPE weights: {USER_CHECKPOINT} does not exist and the torchfcpe package (which ships default "
            "weights) is not installed; place so-vits-svc's fcpe.pt there or `pip install --no-deps torchfcpe`")
    return bundled


def fcpe_mel(audio: np.ndarray, sr: int, mel: MelConfig) -> torch.Tensor:
    """Log-mel [1, frames, n_mels] of `audio` (at `sr`), frames = len(audio) // mel.hop + 1.

    The frame count uses the length at the *input* rate, exactly like the original: when that is
    more than the mel has, the last frame is repeated once; when fewer, the extra frames are dropped.
    """
    audio_m = resample_sinc(torch.from_numpy(np.asarray(audio, dtype=np.float32))[None], sr, mel.sr,
                            lowpass_filter_width=RESAMPLE_ZERO_CROSSINGS, rolloff=RESAMPLE_ROLLOFF)
    spec = nsf_mel(audio_m, sr=mel.sr, n_fft=mel.n_fft, hop=mel.hop, win=mel.win,
                   n_mels=mel.n_mels, fmin=mel.fmin, fmax=mel.fmax).transpose(1, 2)
    wanted = len(audio) // mel.hop + 1
    if wanted > spec.size(1):
        spec = torch.cat([spec, spec[:, -1:]], dim=1)
    return spec[:, :wanted]


class FCPEF0Predictor(F0Predictor):
    """FCPE. kwargs: model_path (a checkpoint in either layout; default pretrain/fcpe.pt, else torchfcpe's)."""

    def __init__(self, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                 threshold: float = 0.05, model_path: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(hop_length=hop_length, sampling_rate=sampling_rate, device=device, threshold=threshold,
                         **kwargs)
        self.model_path = Path(model_path) if model_path is not None else default_checkpoint()
        self.net: FCPENet
        self.net, self.mel = load_fcpe(self.model_path, self.device)

    def latent(self, mel: torch.Tensor) -> torch.Tensor:
        """Network activations [1, frames, bins] for a mel from fcpe_mel()."""
        with torch.inference_mode():
            return self.net(mel.to(self.device)).float()

    def frame_f0(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """f0 per mel frame (0 unvoiced) of `audio` at `sr`."""
        latent = self.latent(fcpe_mel(audio, sr, self.mel))
        with torch.inference_mode():
            return self.net.decode(latent, self.threshold)[0].cpu().numpy().astype(np.float64)

    def compute_raw_f0(self, wav: np.ndarray) -> np.ndarray:
        n_frames = self.n_frames(wav)
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        return resize_nearest(self.frame_f0(wav, self.sampling_rate), n_frames).astype(np.float32)
