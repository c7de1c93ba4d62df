"""The inference engine: load a G checkpoint and its config once, then convert any number of inputs.

    engine = SvcEngine.load("logs/44k/G_8000.pth", "logs/44k/config.json")
    audio = engine.convert(wav, sr, ConvertOptions(speaker="alto", transpose=2))   # at engine.sr

Per input: silence slicing (modules.slicer, `-sd`), optional forced clipping with overlap and
crossfade (`-cl`, `-lg`, `-lgr`), padding (`-p`), F0 from the registry (`-f0p`, `-ft`) times
2^(t/12), or the model's own F0 (`-a`), units from the speech-encoder registry, then the synthesizer.
The synthesizer's flow and decoder run in overlapping windows (modules.inference_chunked), so memory
stays bounded however long a slice is, and the output equals whole-piece synthesis.

Reproducibility: like the original, torch is seeded with 52468 before every piece, and the random
draws come in the original's order (prior noise, then the excitation's), so equal weights and inputs
give equal audio.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from models import DEFAULT_SEED
from modules.audio import load_audio, resample
from modules.checkpoint import load_weights, model_state, safe_load
from modules.config import HParams, load_config
from modules.conv_layout import store_channels_last
from modules.device import inference_dtype, resolve_device
from modules.errors import InferenceError
from modules.frame_features import repeat_expand_2d, volume
from modules.host_memory import release_freed_memory
from modules.inference_chunked import (
    ExcitationStream,
    ReceptiveField,
    cpu_window_frames,
    receptive_field,
    synthesize_chunked,
)
from modules.inference_plan import (
    OutputAssembler,
    Piece,
    as_chunks,
    frame_times,
    loudness_envelope,
    pad_or_trim,
    plan_pieces,
    to_output_samples,
)
from modules.pitch import get_f0_predictor
from modules.speaker_mix import SpeakerMix
from vencoder.base import ENCODER_SAMPLE_RATE

logger = logging.getLogger(__name__)



@dataclass
class ConvertOptions:
    """Per-conversion settings; names follow inference_main.py's flags."""

    speaker: str | int = 0  # -s: name from config.spk, or a numeric id
    transpose: int = 0  # -t: semitones
    clip_seconds: float = 0.0  # -cl: forced piece length, 0 = only silence slicing
    linear_gradient: float = 0.0  # -lg: overlap / crossfade seconds between forced pieces
    linear_gradient_retain: float = 0.75  # -lgr: fraction of the overlap that is blended
    pad_seconds: float = 0.5  # -p: silence added on both sides of each piece
    slice_db: float = -40.0  # -sd: silence threshold (dBFS)
    auto_predict_f0: bool = False  # -a
    f0_predictor: str = "pm"  # -f0p
    f0_threshold: float = 0.05  # -ft
    noise_scale: float = 0.4  # -ns
    loudness_envelope_adjustment: float = 1.0  # -lea: 1 = off, 0 = input's envelope
    spk_mix: SpeakerMix | None = None  # -usm: dynamic mix (overrides `speaker`)
    seed: int | None = DEFAULT_SEED  # None = do not reseed
    slicing: bool = True  # False: treat the whole input as one voiced chunk
    unit_mixer: Callable[[torch.Tensor, str | int], torch.Tensor] | None = None  # -cm/-cr/-fr (cluster.mixing)


@dataclass
class PieceFeatures:
    """Model inputs of one padded piece at the model's rate."""

    units: torch.Tensor  # [1, ssl_dim, T]
    f0: torch.Tensor  # [1, T] Hz, transposed, interpolated
    uv: torch.Tensor  # [1, T]
    vol: torch.Tensor | None  # [1, T]


@dataclass
class ConversionStats:
    pieces: int = 0
    voiced_pieces: int = 0
    frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_synthesizer(model_path: str | os.PathLike, config_path: str | os.PathLike
                     ) -> tuple[torch.nn.Module, HParams]:
    """The synthesizer of a G checkpoint for inference: built from its config, loaded strictly (only the
    training-only enc_q may be absent, and it is dropped after loading), weight norm folded, eval mode, no
    gradients."""
    from models import SynthesizerTrn

    hps = load_config(config_path)
    if not Path(model_path).is_file():
        raise InferenceError(f"{model_path}: model file not found; pass a G_*.pth checkpoint with -m")
    # Built without storage or random initialisation, then handed the file's tensors themselves: a normal
    # build would first hold a random copy of every weight (twice for weight-norm convolutions, 350 MB at
    # the default config) and the load a third. The placeholders are real (uninitialised) memory so that a
    # tensor the file may lack (the training-only enc_q) is still usable until it is dropped.
    with torch.device("meta"):
        model = SynthesizerTrn.from_hparams(hps)
    model = model.to_empty(device="cpu")
    load_weights(model, model_state(safe_load(model_path), model_path), source=str(model_path),
                 hint=f"pass the config.json the model was trained with (-c, now {config_path})", assign=True)
    return prepare_for_synthesis(model), hps


def prepare_for_synthesis(model: torch.nn.Module) -> torch.nn.Module:
    """A loaded SynthesizerTrn made ready for synthesis, in place: posterior encoder dropped (synthesis never
    runs it: 46 MB of weights at the default config), weight norm folded, eval mode, no gradients."""
    if hasattr(model, "enc_q"):
        del model.enc_q
    model.remove_weight_norm()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# Frames of excitation made at a time: 128 frames x 512 samples x 9 harmonics of float64 phase sums are
# 4.7 MB, against 34 MB for a whole 10 s piece (above glibc's mmap threshold, several at once).
EXCITATION_BLOCK_FRAMES = 128


class SvcEngine:
    """A loaded synthesizer (weight norm folded, eval mode) plus its speech encoder and settings."""

    def __init__(
        self, model: torch.nn.Module, hps: HParams, device: torch.device | str = "cpu", encoder: Any = None,
        chunk_frames: int = 1024, fast: bool = False, pretrain_dir: str | os.PathLike | None = None,
        encoder_window_seconds: float = 60.0, precision: str | None = None,
    ) -> None:
        """`precision` (modules.device.PRECISIONS) sets the synthesis dtype for the engine's life; None: "auto"
        if `fast`, else fp32. A bf16 engine on the CPU holds its decoder's filter path in bf16 (in `model`)."""
        self._take_config(hps, encoder, pretrain_dir, encoder_window_seconds)
        self.model = model.eval()
        self.device = torch.device(device)
        if self.device.type == "cpu" and hasattr(model, "dec"):
            store_channels_last(model.dec)  # the CPU decoder runs channels-last (modules.conv_layout)
        self.dtype: torch.dtype = inference_dtype(precision or ("auto" if fast else "fp32"), self.device)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and hasattr(model, "dec") \
                and not hasattr(model.dec, "snakes"):
            model.dec.cast_filter(self.dtype)  # its own bf16 path, lighter than autocast (nsf_hifigan)
        self.rf: ReceptiveField = receptive_field(model, hps.model)
        self.chunk_frames = cpu_window_frames(chunk_frames, self.device, hps.model, self.rf.decoder)

    def _take_config(self, hps: HParams, encoder: Any, pretrain_dir: str | os.PathLike | None,
                     encoder_window_seconds: float) -> None:
        """The settings every engine (torch or onnxruntime) reads from the model's config."""
        self.hps = hps
        self.sr = hps.data.sampling_rate
        self.hop_length = hps.data.hop_length
        self.speakers: dict[str, int] = dict(hps.spk)
        self.n_speakers = hps.model.n_speakers
        self.vol_embedding = hps.model.vol_embedding
        self.unit_mode = hps.data.unit_interpolate_mode
        self._encoder = encoder
        self.pretrain_dir = pretrain_dir
        self.encoder_window_seconds = encoder_window_seconds
        # optional step after synthesis (shallow diffusion or enhancer, modules.diffusion_infer.attach)
        self.post_process: Callable[..., np.ndarray] | None = None

    # ----- construction ---------------------------------------------------------------------------------

    @property
    def fast(self) -> bool:
        """Whether synthesis runs in reduced precision (bf16 or fp16)."""
        return self.dtype != torch.float32

    @classmethod
    def load(
        cls, model_path: str | os.PathLike, config_path: str | os.PathLike, device: str | None = None,
        encoder: Any = None, chunk_frames: int = 1024, fast: bool = False,
        pretrain_dir: str | os.PathLike | None = None, encoder_window_seconds: float = 60.0,
        precision: str | None = None,
    ) -> "SvcEngine":
        """Build the model from the config, load the checkpoint strictly (enc_q optional), fold weight norm."""
        model, hps = load_synthesizer(model_path, config_path)
        dev = resolve_device(device)
        model = model.to(dev)
        logger.info("loaded %s (%d speakers) on %s", model_path, len(hps.spk), dev)
        return cls(model, hps, dev, encoder=encoder, chunk_frames=chunk_frames, fast=fast, pretrain_dir=pretrain_dir,
                   encoder_window_seconds=encoder_window_seconds, precision=precision)

    @property
    def encoder(self) -> Any:
        """The speech encoder named by the config, built on first use (so tests may inject their own)."""
        if self._encoder is None:
            from vencoder import get_speech_encoder

            self._encoder = get_speech_encoder(self.hps.model.speech_encoder, device=self.device,
                                               pretrain_dir=self.pretrain_dir)
        return self._encoder

    # ----- speakers ---------------------------------------------------------------------------------------

    def resolve_speaker(self, speaker: str | int) -> int:
        """Speaker id from a name in config.spk or a numeric id below n_speakers."""
        if isinstance(speaker, str) and speaker in self.speakers:
            return int(self.speakers[speaker])
        try:
            spk_id = int(speaker)
        except (TypeError, ValueError):
            spk_id = None
        if spk_id is not None and 0 <= spk_id < self.n_speakers:
            return spk_id
        known = ", ".join(f"{n} ({i})" for n, i in sorted(self.speakers.items(), key=lambda kv: kv[1])) or "none"
        raise InferenceError(
            f"unknown speaker '{speaker}'; use a name from the config's spk map ({known}) "
            f"or an id below {self.n_speakers}"
        )

    def speaker_condition(self, spk_id: int) -> torch.Tensor:
        """[1, gin, 1] embedding of one speaker."""
        g = torch.tensor([[spk_id]], dtype=torch.long, device=self.device)
        return self.model.embed_speaker(g)

    def mix_condition(self, mix: SpeakerMix, times: np.ndarray) -> torch.Tensor:
        """Time-varying speaker condition [1, gin, T] of a dynamic mix at output-time fractions `times`."""
        return mix.embedding(self.model.emb_g.weight, times)

    # ----- features ---------------------------------------------------------------------------------------

    def piece_features(
        self, wav: np.ndarray, transpose: float = 0.0, f0_predictor: str = "pm", f0_threshold: float = 0.05,
        predictor: Any = None,
    ) -> PieceFeatures:
        """Units, F0 (times 2^(t/12)), uv and volume of one padded piece at the model rate."""
        n_frames = len(wav) // self.hop_length
        if predictor is None:
            predictor = get_f0_predictor(f0_predictor, hop_length=self.hop_length, sampling_rate=self.sr,
                                         device=str(self.device), threshold=f0_threshold)
        f0, uv = predictor.compute_f0_uv(wav)
        f0 = np.asarray(f0, dtype=np.float32)[:n_frames] * float(2.0 ** (transpose / 12.0))
        uv = np.asarray(uv, dtype=np.float32)[:n_frames]
        wav16 = resample(wav, self.sr, ENCODER_SAMPLE_RATE)
        units = self.encode_units(wav16)  # [D, T_u]
        if units.shape[-1] == 0:  # a piece shorter than the encoder's first window
            units = units.new_zeros(units.shape[0], 1)
        units = repeat_expand_2d(units.float().cpu(), n_frames, mode=self.unit_mode)
        vol = volume(torch.from_numpy(np.ascontiguousarray(wav)), hop=self.hop_length)[None] if self.vol_embedding else None
        dev = self.device
        return PieceFeatures(
            units[None].to(dev), torch.from_numpy(f0)[None].to(dev), torch.from_numpy(uv)[None].to(dev),
            None if vol is None else vol.to(dev),
        )

    def encode_units(self, wav16: np.ndarray, context_seconds: float = 2.0) -> torch.Tensor:
        """Units [D, T_u] of 16 kHz audio; pieces longer than `encoder_window_seconds` go in windows.

        A speech encoder's self-attention is quadratic in length (a 10-minute piece would need tens
        of GB), so long pieces are encoded in windows with `context_seconds` of extra audio on each
        side, keeping each window's centre frames. Unlike the synthesis chunking this is an
        approximation (attention sees 2 s of context instead of the whole piece); the original
        cannot encode such pieces at all.
        """
        hop = int(getattr(self.encoder, "hop_size", 320))
        window = int(self.encoder_window_seconds * ENCODER_SAMPLE_RATE) // hop * hop
        if window <= 0 or len(wav16) <= window + 2 * hop:
            return self.encoder.encode(torch.from_numpy(wav16))[0]
        context = int(context_seconds * ENCODER_SAMPLE_RATE) // hop * hop
        parts: list[torch.Tensor] = []
        for a in range(0, len(wav16), window):
            b = min(a + window, len(wav16))
            lo, hi = max(a - context, 0), min(b + context, len(wav16))
            units = self.encoder.encode(torch.from_numpy(wav16[lo:hi]))[0]
            first = (a - lo) // hop
            count = (b - a) // hop if b < len(wav16) else units.shape[-1] - first
            parts.append(units[:, first: first + count])
        return torch.cat(parts, dim=-1)

    # ----- synthesis --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.fast:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield
        else:
            yield

    @torch.inference_mode()
    def synthesize(
        self, feats: PieceFeatures, g: torch.Tensor, noise_scale: float = 0.4, seed: int | None = DEFAULT_SEED,
        predict_f0: bool = False, progress: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio [1, 1, T*hop], f0 used [1, T]) for one piece; g is [1, gin, 1] or [1, gin, T].

        Same random draws, in the same order, as SynthesizerTrn.infer: prior noise, then the
        excitation (phases, noise); flow and decoder then run window by window.
        """
        if seed is not None:
            torch.manual_seed(seed)
        model = self.model
        with self._autocast():
            m_p, logs_p, f0_used, x_mask = model.encode_prior(
                feats.units, feats.f0, feats.uv, g, vol=feats.vol, predict_f0=predict_f0
            )
        m_p, logs_p = m_p.float(), logs_p.float()
        z_p = (m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale) * x_mask
        f0_used = f0_used.float()
        source_f0 = model.source_f0(f0_used, feats.uv)
        if self.chunk_frames > 0:  # the same excitation in blocks: its float64 phase sums stay small
            excitation = ExcitationStream(model.dec.m_source, source_f0, self.hop_length,
                                          min(self.chunk_frames, EXCITATION_BLOCK_FRAMES))
        else:
            excitation = model.dec.excitation(source_f0)
        with self._autocast():
            audio = synthesize_chunked(model, z_p, x_mask, excitation, g, self.rf, self.hop_length,
                                       self.chunk_frames, progress)
        return audio.float(), f0_used

    # ----- whole inputs -----------------------------------------------------------------------------------

    def plan(self, audio: np.ndarray, sr: int, options: ConvertOptions) -> list[Piece]:
        """Slice at silences (native rate) and map to pieces in output samples."""
        ranges = None
        if options.slicing:
            from modules.slicer import slice_audio

            ranges = [tuple(seg) for seg in slice_audio(audio, sr, threshold_db=float(options.slice_db))]
        return plan_pieces(as_chunks(ranges, len(audio)), sr, self.sr, options.clip_seconds, options.linear_gradient)

    def convert(
        self, audio: np.ndarray, sr: int, options: ConvertOptions, predictor: Any = None, show_progress: bool = False,
        stats: ConversionStats | None = None,
    ) -> np.ndarray:
        """Convert mono `audio` at `sr`; returns float32 audio at the model's rate, ceil(len*sr_model/sr) long."""
        pieces = self.plan(audio, sr, options)
        model_audio = resample(np.asarray(audio, dtype=np.float32), sr, self.sr)
        total = to_output_samples(len(audio), sr, self.sr)
        if len(model_audio) != total:  # the resampler may round the length differently: fix the end
            model_audio = np.pad(model_audio, (0, max(0, total - len(model_audio))))[:total]
        pad = int(self.sr * options.pad_seconds)
        if predictor is None:
            predictor = get_f0_predictor(options.f0_predictor, hop_length=self.hop_length, sampling_rate=self.sr,
                                         device=str(self.device), threshold=options.f0_threshold)
        mix = options.spk_mix if options.spk_mix is not None and options.spk_mix.enabled else None
        g_fixed = None if mix else self.speaker_condition(self.resolve_speaker(options.speaker))
        out = OutputAssembler(total, options.linear_gradient_retain)
        bar = _progress_bar(pieces, show_progress)
        for piece in bar:
            if piece.silent:
                out.add(piece, np.zeros(piece.length, dtype=np.float32))
                continue
            src = np.pad(model_audio[piece.start: piece.end], (pad, pad))
            result = self._convert_piece(src, piece, pad, options, predictor, mix, g_fixed, total)
            out.add(piece, pad_or_trim(result[pad: len(result) - pad] if pad else result, piece.length))
            if stats is not None:
                stats.voiced_pieces += 1
                stats.frames += len(src) // self.hop_length
        if stats is not None:
            stats.pieces += len(pieces)
        release_freed_memory()
        return out.audio

    def _convert_piece(
        self, src: np.ndarray, piece: Piece, pad: int, options: ConvertOptions, predictor: Any,
        mix: SpeakerMix | None, g_fixed: torch.Tensor | None, total: int,
    ) -> np.ndarray:
        n_frames = len(src) // self.hop_length
        if n_frames == 0:
            return np.zeros(len(src), dtype=np.float32)
        feats = self.piece_features(src, options.transpose, predictor=predictor)
        if options.unit_mixer is not None and mix is None:  # as the original: no cluster/retrieval with a speaker mix
            feats.units = options.unit_mixer(feats.units, options.speaker)
        if mix is not None:
            times = frame_times(piece.start, n_frames, self.hop_length, pad, total)
            g = self.mix_condition(mix, times)
        else:
            g = g_fixed
        audio, f0_used = self.synthesize(feats, g, options.noise_scale, options.seed, options.auto_predict_f0)
        result = audio[0, 0].cpu().numpy()
        if self.post_process is not None:
            spk_id = None if mix is not None else self.resolve_speaker(options.speaker)
            result = self.post_process(result, feats, f0_used, spk_id)
        return loudness_envelope(src, result, self.sr, options.loudness_envelope_adjustment)

    def convert_file(
        self, path: str | os.PathLike, options: ConvertOptions, show_progress: bool = False,
    ) -> np.ndarray:
        """Read any audio file at its own rate and convert it."""
        audio, sr = load_audio(path)
        return self.convert(audio, sr, options, show_progress=show_progress)


def _progress_bar(pieces: list[Piece], show: bool):
    if not show:
        return pieces
    from tqdm import tqdm

    return tqdm(pieces, desc="slices", unit="slice", leave=False, position=1)


__all__ = [
    "ConvertOptions", "ConversionStats", "InferenceError", "PieceFeatures", "SvcEngine",
]
