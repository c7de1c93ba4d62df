"""The speech-encoder interface shared by every encoder in the registry.

An encoder turns 16 kHz mono audio into content units `[1, D, T_u]` (50 frames/s for every
encoder of so-vits-svc 4.1). Callers hand over several clips at once through `encode_batch`;
each encoder decides how to batch them internally (the HuBERT family pads and masks so a batched
result equals the clip-by-clip one).
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

from modules.checkpoint import load_weights
from modules.cpu_linear import use_onednn_linears
from modules.errors import PretrainedFileMissing

logger = logging.getLogger(__name__)

ENCODER_SAMPLE_RATE = 16000
# Pretrained files live in the project's pretrain/ folder, wherever the command is run from.
DEFAULT_PRETRAIN_DIR = Path(__file__).resolve().parent.parent / "pretrain"


def default_pretrain_dir() -> Path:
    """Looked up at call time so tests and tools can point it elsewhere."""
    return DEFAULT_PRETRAIN_DIR


def as_mono_tensor(wav: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Accept [N], [1, N] or [C, N] (channels averaged, as the original does) and return float32 [N]."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() == 2:
        wav = wav.mean(dim=0)
    if wav.dim() != 1:
        raise ValueError(f"speech encoder input must be [N] or [C, N] audio, got shape {tuple(wav.shape)}")
    return wav


class _TableWidth:
    """`dim` of an encoder: the width the speech-encoder table gives its name, until the loaded weights
    set the real one (a file of another width is used as it is, with a warning)."""

    def __get__(self, obj: "SpeechEncoder | None", cls: type) -> int:
        if obj is not None and "dim" in obj.__dict__:
            return obj.__dict__["dim"]
        from vencoder import SPEECH_ENCODERS  # the package imports this module first

        spec = SPEECH_ENCODERS.get(cls.name)
        return spec.dim if spec is not None else 0

    def __set__(self, obj: "SpeechEncoder", width: int) -> None:
        obj.__dict__["dim"] = int(width)


class SpeechEncoder(ABC):
    """16 kHz mono float audio in, `[1, dim, T_u]` float32 units out (on the CPU).

    Subclasses set `name`, `dim` and the pretrained file they need, and implement `_encode_padded`
    or override `encode_batch`.
    """

    name: ClassVar[str] = ""
    dim = _TableWidth()
    sample_rate: ClassVar[int] = ENCODER_SAMPLE_RATE
    hop_size: ClassVar[int] = 320
    # Where to get the weight file, shown when it is missing.
    weight_file: ClassVar[str] = ""
    weight_source: ClassVar[str] = ""

    def __init__(self, device: str | torch.device | None = None, pretrain_dir: str | Path | None = None,
                 max_batch_seconds: float = 120.0) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pretrain_dir = Path(pretrain_dir) if pretrain_dir is not None else default_pretrain_dir()
        # Padded audio per forward pass; bounds the memory of one batch.
        self.max_batch_samples = int(max_batch_seconds * self.sample_rate)

    @classmethod
    def weight_path(cls, pretrain_dir: str | Path | None = None) -> Path:
        return Path(pretrain_dir if pretrain_dir is not None else default_pretrain_dir()) / cls.weight_file

    @classmethod
    def check_weights(cls, pretrain_dir: str | Path | None = None) -> Path:
        """The weight file's path; raises PretrainedFileMissing (with path and source) if it is absent."""
        path = cls.weight_path(pretrain_dir)
        if not path.is_file():
            raise PretrainedFileMissing(f"speech encoder '{cls.name}'", path, cls.weight_source)
        return path

    def adopt_width(self, width: int, source: str | Path) -> None:
        """Take the loaded weights' unit width, warning when it is not the table's."""
        usual = type(self).dim
        if width != usual:
            logger.warning("%s: %s gives %d-dim units, not the usual %d", source, self.name, width, usual)
        self.dim = width

    @abstractmethod
    def n_frames(self, n_samples: int) -> int:
        """Unit frames produced for an input of `n_samples` 16 kHz samples."""

    @abstractmethod
    def encode_batch(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encode several clips; returns one `[1, dim, T_u]` CPU float32 tensor per clip, in order."""

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Encode one clip: `[N]` (or `[C, N]`) 16 kHz audio -> `[1, dim, T_u]`."""
        return self.encode_batch([wav])[0]


def inference_network(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` on `device` in eval mode; on the CPU its linear layers run through oneDNN
    (modules.cpu_linear: the same weights, about twice BLAS's speed on AMD CPUs)."""
    module = module.to(device).eval()
    if device.type == "cpu":
        use_onednn_linears(module)
    return module


def load_weights_ignoring_extra(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
                                quiet_prefixes: tuple[str, ...] = ()) -> None:
    """Load every tensor the model has, strictly (CheckpointError names a missing or mis-shaped one); tensors
    the model does not use (pre-training heads) are dropped, with a warning unless under `quiet_prefixes`."""
    own = model.state_dict()
    extra = [k for k in state if k not in own and not k.startswith(quiet_prefixes)]
    if extra:
        logger.warning("%s: ignoring %d unexpected keys, e.g. %s", path, len(extra), ", ".join(extra[:4]))
    load_weights(model, {k: v for k, v in state.items() if k in own}, source=f"{path} ({what})", optional=())


def plan_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Group clip indices into batches of similar length whose padded size stays within the budget.

    Sorting by length keeps padding small; a clip longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        candidate = current + [index]
        padded = max(lengths[i] for i in candidate) * len(candidate)
        if current and padded > max_batch_samples:
            batches.append(current)
            candidate = [index]
        current = candidate
    if current:
        batches.append(current)
    return batches


class PaddedBatchEncoder(SpeechEncoder):
    """An encoder whose network takes zero-padded batches with their lengths: subclasses say how to read the
    weight file (`load_model`) and the unit width of what they read (`model_width`); the network provides
    `n_frames(n_samples)` and `extract(wav [B, N], lengths [B]) -> (features [B, T, C], frames [B])`."""

    def __init__(self, device: str | torch.device | None = None, pretrain_dir: str | Path | None = None,
                 max_batch_seconds: float = 120.0) -> None:
        super().__init__(device, pretrain_dir, max_batch_seconds)
        path = self.check_weights(self.pretrain_dir)
        self.model = inference_network(self.load_model(path), self.device)
        self.adopt_width(self.model_width(), path)

    @abstractmethod
    def load_model(self, path: Path) -> torch.nn.Module:
        """The network with the weights of `path`."""

    @abstractmethod
    def model_width(self) -> int:
        """The unit width of the loaded network."""

    def n_frames(self, n_samples: int) -> int:
        return self.model.n_frames(n_samples)

    @torch.inference_mode()
    def encode_batch(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return run_padded_batches(wavs, self.max_batch_samples, self.model.extract, self.device)


def run_padded_batches(wavs: Sequence[torch.Tensor], max_batch_samples: int,
                       extract: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                       device: torch.device) -> list[torch.Tensor]:
    """Zero-pad clips of similar length into batches, run `extract(wav [B, N], lengths [B]) ->
    (features [B, T, C], frames [B])`, and return one `[1, C, frames]` CPU tensor per clip, in order."""
    clips = [as_mono_tensor(w) for w in wavs]
    lengths = [int(c.numel()) for c in clips]
    results: list[torch.Tensor | None] = [None] * len(clips)
    for batch in plan_batches(lengths, max_batch_samples):
        padded = torch.zeros(len(batch), max(lengths[i] for i in batch))
        for row, i in enumerate(batch):
            padded[row, : lengths[i]] = clips[i]
        lens = torch.tensor([lengths[i] for i in batch])
        feats, frames = extract(padded.to(device), lens.to(device))
        feats = feats.float().cpu()
        for row, i in enumerate(batch):
            results[i] = feats[row, : int(frames[row])].transpose(0, 1).unsqueeze(0).contiguous()
    return [r for r in results if r is not None]
