"""Shallow diffusion (-shd), only diffusion (-od) and the NSF-HiFiGAN enhancer (-eh) for the engine.

    stage = DiffusionStage.load("logs/44k/diffusion/model_0.pt", "logs/44k/diffusion/config.yaml")
    engine.post_process = stage.post_processor(DiffusionOptions(shallow=True, k_step=50), engine)

Per piece, after the so-vits synthesis:
- shallow: mel of the so-vits audio (the vocoder's own mel) -> noised to step k-1 -> k denoising
  steps (`k // speedup` solver steps) -> the standalone NSF-HiFiGAN with the F0 actually used.
  Volume is the synthesizer's input volume when the model has vol_embedding, else that of the so-vits
  output; with -se the units are re-encoded from the so-vits output.
- enhancer (ignored with -shd, as the original): the vocoder re-synthesises the output's own mel,
  optionally at a rate shifted by `enhancer_adaptive_key` semitones; the length is kept exact.
- only diffusion: `DiffusionOnlyEngine` converts without any so-vits model: units, F0 and volume of
  the input, diffusion from pure noise at k_step_max, then the vocoder.

Memory stays bounded on long pieces: the denoiser runs in frame windows with its exact context
(`window_frames`), and the vocoder runs in overlapping windows with one continuous excitation.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion.unit2mel import Unit2Mel, load_unit2mel
from modules.audio import resample
from modules.config import HParams, load_diffusion_config
from modules.device import resolve_device
from modules.errors import ConfigError, InferenceError, PretrainedFileMissing
from modules.frame_features import repeat_expand_2d, volume
from modules.inference_chunked import ExcitationStream, cpu_window_frames, decoder_receptive_frames, windows
from modules.inference_plan import loudness_envelope
from vdecoder import NsfHifiGan
from vencoder.base import ENCODER_SAMPLE_RATE

logger = logging.getLogger(__name__)

VOCODER_SOURCE = "the openvpi NSF-HiFiGAN 44.1 kHz release (nsf_hifigan_20221211.zip)"
# Vocoder window: its activations (about 0.8 MB per frame at 44.1 kHz) dominate peak memory. Measured peak
# RSS for shallow diffusion, 10 s vs 60 s: 917 vs 1155 MB with 512-frame windows, 871 vs 883 MB with 256;
# the 17-frame context on each side then costs about 13% more vocoder compute.
VOCODER_FRAMES = 256
LOG10_FACTOR = 0.434294  # natural-log mel to log10 mel, for 'nsf-hifigan-log10' vocoders


@dataclass
class DiffusionOptions:
    """Inference flags of the diffusion step; None means "take it from the diffusion config"."""

    shallow: bool = False  # -shd
    only: bool = False  # -od
    k_step: int = 100  # -ks
    second_encoding: bool = False  # -se
    method: str | None = None  # --diffusion_method
    speedup: int | None = None  # --diffusion_speedup
    enhance: bool = False  # -eh
    enhancer_adaptive_key: float = 0.0  # -eak


def load_vocoder(folder: str | os.PathLike, device: torch.device | str = "cpu") -> Any:
    """The standalone NSF-HiFiGAN of `folder` (config.json + model), or a one-line project error."""
    folder = Path(folder)
    if not (folder / "model").is_file():
        raise PretrainedFileMissing("The NSF-HiFiGAN vocoder", folder / "model", VOCODER_SOURCE)
    vocoder = NsfHifiGan.load(folder, device=device)
    for p in vocoder.parameters():
        p.requires_grad_(False)
    return vocoder


@torch.no_grad()
def vocode(vocoder: Any, mel: torch.Tensor, f0: torch.Tensor, chunk_frames: int = 1024,
           log10: bool = False) -> torch.Tensor:
    """Audio [B, T*hop] of mel [B, T, M] and f0 [B, T]; long mels in windows, same result as whole."""
    if log10:
        mel = mel * LOG10_FACTOR
    gen = vocoder.model
    n = mel.shape[1]
    f0 = f0[:, :n].float()
    x = mel.transpose(1, 2)
    margin = decoder_receptive_frames(vocoder.h, snake=False)
    chunk_frames = cpu_window_frames(chunk_frames, mel.device, vocoder.h, margin, snake=False)
    if chunk_frames <= 0 or n <= chunk_frames:
        return gen(x, f0)[:, 0]
    hop = gen.upp
    excitation = ExcitationStream(gen.m_source, f0, hop, chunk_frames)
    parts = []
    for a, b in windows(n, chunk_frames):
        lo, hi = max(a - margin, 0), min(b + margin, n)
        audio = gen.synthesize(x[..., lo:hi], excitation.get(lo, hi))
        parts.append(audio[..., (a - lo) * hop: (b - lo) * hop])
    return torch.cat(parts, dim=-1)[:, 0]


class DiffusionStage:
    """A loaded Unit2Mel, its config and the vocoder it was trained for."""

    def __init__(self, model: Unit2Mel, args: HParams, vocoder: Any, device: torch.device,
                 window_frames: int = 1024, vocoder_frames: int = VOCODER_FRAMES) -> None:
        self.model = model
        self.vocoder_frames = vocoder_frames
        self.args = args
        self.vocoder = vocoder
        self.device = device
        self.window_frames = window_frames
        self.model.decoder.window = window_frames
        self.log10 = str(args.vocoder.type) == "nsf-hifigan-log10"

    @classmethod
    def load(cls, model_path: str | os.PathLike, config_path: str | os.PathLike, device: str | torch.device = "cpu",
             vocoder_dir: str | os.PathLike | None = None, window_frames: int = 1024) -> "DiffusionStage":
        if not Path(config_path).is_file():
            raise ConfigError(f"{config_path}: diffusion config not found; pass the model's config.yaml with -dc")
        args = load_diffusion_config(config_path)
        folder = Path(vocoder_dir) if vocoder_dir is not None else Path(str(args.vocoder.ckpt)).parent
        vocoder = load_vocoder(folder, device)
        if int(vocoder.mel.hop_size) != int(args.data.block_size) or \
                int(vocoder.mel.sampling_rate) != int(args.data.sampling_rate):
            raise ConfigError(f"{config_path}: data.sampling_rate/block_size ({args.data.sampling_rate}/"
                              f"{args.data.block_size}) differ from the vocoder's ({vocoder.mel.sampling_rate}/"
                              f"{vocoder.mel.hop_size})")
        model = load_unit2mel(model_path, args, out_dims=int(vocoder.mel.num_mels), device=device)
        for p in model.parameters():
            p.requires_grad_(False)
        logger.info("loaded diffusion model %s (k_step_max %d) on %s", model_path, model.k_step_max, device)
        return cls(model, args, vocoder, torch.device(device), window_frames)

    @property
    def sr(self) -> int:
        return int(self.args.data.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(self.args.data.block_size)

    def method_and_speedup(self, options: DiffusionOptions) -> tuple[str, int]:
        method = options.method or str(self.args.infer.method)
        speedup = int(options.speedup if options.speedup is not None else self.args.infer.speedup)
        return method, speedup

    @torch.no_grad()
    def mel(self, units: torch.Tensor, f0: torch.Tensor, vol: torch.Tensor, spk_id: int,
            options: DiffusionOptions, gt_mel: torch.Tensor | None = None) -> torch.Tensor:
        """Mel [1, T, M] from units [1, D, T], f0 [1, T] (Hz), vol [1, T]; shallow from gt_mel [1, T, M]."""
        method, speedup = self.method_and_speedup(options)
        dev = self.device
        spk = torch.tensor([[spk_id]], dtype=torch.long, device=dev)
        return self.model(units.transpose(1, 2).to(dev).float(), f0[..., None].to(dev).float(),
                          vol[..., None].to(dev).float(), spk_id=spk, gt_spec=gt_mel, infer=True,
                          infer_speedup=speedup, method=method, k_step=int(options.k_step))

    def to_audio(self, mel: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        return vocode(self.vocoder, mel, f0.to(mel.device), self.vocoder_frames, self.log10)

    def check_units(self, dim: int) -> None:
        want = int(self.args.data.encoder_out_channels)
        if dim != want:
            raise ConfigError(f"the diffusion model expects {want}-dim units (data.encoder_out_channels), but the "
                              f"speech encoder gives {dim}; train it on the same encoder as the so-vits model")


class Enhancer:
    """NSF-HiFiGAN re-synthesis of finished audio (-eh), with an optional adaptive key (-eak)."""

    def __init__(self, vocoder: Any, window_frames: int = VOCODER_FRAMES) -> None:
        self.vocoder = vocoder
        self.window_frames = window_frames

    @torch.no_grad()
    def enhance(self, audio: np.ndarray, sr: int, f0: np.ndarray, hop: int, adaptive_key: float = 0.0) -> np.ndarray:
        """Same length as `audio`. f0 [T] in Hz at `hop` samples per frame of `sr`."""
        v_sr, v_hop = int(self.vocoder.mel.sampling_rate), int(self.vocoder.mel.hop_size)
        factor = 2.0 ** (-adaptive_key / 12.0)
        # the audio is played at a rate where the vocoder sees it 'adaptive_key' semitones lower/higher
        work_sr = 100 * int(np.round(v_sr / factor / 100))
        real_factor = v_sr / work_sr
        x = audio if sr == work_sr else resample(audio, sr, work_sr)
        n_frames = len(x) // v_hop + 1
        f0 = np.asarray(f0, dtype=np.float64) * real_factor
        t_src = (hop / sr) * np.arange(len(f0)) / real_factor
        t_dst = (v_hop / v_sr) * np.arange(n_frames)
        f0_res = np.interp(t_dst, t_src, f0, left=f0[0], right=f0[-1])
        dev = next(self.vocoder.parameters()).device
        wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(dev)
        mel = self.vocoder.extract(wav)
        f0_t = torch.from_numpy(f0_res[: mel.shape[1]]).float()[None].to(dev)
        out = vocode(self.vocoder, mel, f0_t, self.window_frames)[0].cpu().numpy()
        if work_sr != sr:
            out = resample(out, work_sr, sr)
        if len(out) >= len(audio):
            return out[: len(audio)].astype(np.float32)
        return np.pad(out, (0, len(audio) - len(out))).astype(np.float32)


class PostProcessor:
    """The engine's hook: refines one synthesized piece (shallow diffusion or enhancer)."""

    def __init__(self, options: DiffusionOptions, engine: Any, stage: DiffusionStage | None = None,
                 enhancer: Enhancer | None = None) -> None:
        self.options = options
        self.engine = engine
        self.stage = stage
        self.enhancer = enhancer

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, feats: Any, f0_used: torch.Tensor, spk_id: int | None) -> np.ndarray:
        engine, opt = self.engine, self.options
        f0 = f0_used.float().reshape(1, -1)
        n = f0.shape[1]
        if opt.shallow and self.stage is not None:
            if spk_id is None:  # the original's diffusion speaker mix is broken too
                raise InferenceError("speaker mixing (-usm) is not supported with shallow diffusion")
            stage = self.stage
            wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(stage.device)
            gt_mel = stage.vocoder.extract(wav)[:, :n]
            vol = feats.vol if feats.vol is not None else volume(wav.cpu(), hop=engine.hop_length)
            units = feats.units
            if opt.second_encoding:
                wav16 = resample(np.asarray(audio, dtype=np.float32), engine.sr, ENCODER_SAMPLE_RATE)
                enc = engine.encode_units(wav16)
                if enc.shape[-1] == 0:
                    enc = enc.new_zeros(enc.shape[0], 1)
                units = repeat_expand_2d(enc.float().cpu(), n, mode=engine.unit_mode)[None]
            stage.check_units(units.shape[1])
            mel = stage.mel(units[..., :n], f0, vol.reshape(1, -1)[:, :n], spk_id, opt, gt_mel)
            out = stage.to_audio(mel, f0)[0].cpu().numpy()
            return _fit(out, len(audio))
        if opt.enhance and self.enhancer is not None:
            return self.enhancer.enhance(audio, engine.sr, f0[0].cpu().numpy(), engine.hop_length,
                                         opt.enhancer_adaptive_key)
        return audio


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def attach(engine: Any, options: DiffusionOptions, model_path: str | os.PathLike, config_path: str | os.PathLike,
           vocoder_dir: str | os.PathLike | None = None) -> None:
    """Install the diffusion / enhancer step on a loaded SvcEngine (no-op when neither is asked for)."""
    if options.shallow:
        if options.enhance:
            logger.info("shallow diffusion is on: the enhancer (-eh) is turned off, as in the original")
            options.enhance = False
        stage = DiffusionStage.load(model_path, config_path, engine.device, vocoder_dir)
        stage.model.check_k_step(int(options.k_step), shallow=True)
        if stage.sr != engine.sr or stage.hop_length != engine.hop_length:
            raise ConfigError(f"{config_path}: diffusion rate/hop {stage.sr}/{stage.hop_length} differ from the "
                              f"so-vits model's {engine.sr}/{engine.hop_length}")
        engine.post_process = PostProcessor(options, engine, stage=stage)
    elif options.enhance:
        folder = Path(vocoder_dir) if vocoder_dir is not None else Path("pretrain/nsf_hifigan")
        engine.post_process = PostProcessor(options, engine, enhancer=Enhancer(load_vocoder(folder, engine.device)))


class DiffusionOnlyEngine:
    """-od: convert with the diffusion model and vocoder alone (no so-vits checkpoint).

    Built on SvcEngine's slicing, padding, F0 and unit extraction; rate, hop, speakers, encoder and
    unit interpolation come from the diffusion config.
    """

    @staticmethod
    def load(model_path: str | os.PathLike, config_path: str | os.PathLike, options: DiffusionOptions,
             device: str | None = None, pretrain_dir: str | os.PathLike | None = None,
             vocoder_dir: str | os.PathLike | None = None, encoder: Any = None) -> Any:
        from modules.inference import SvcEngine

        dev = resolve_device(device)
        stage = DiffusionStage.load(model_path, config_path, dev, vocoder_dir)
        stage.model.check_k_step(stage.model.k_step_max, shallow=False)
        return _make_only_engine(SvcEngine, stage, options, dev, pretrain_dir, encoder)


def _make_only_engine(base: type, stage: DiffusionStage, options: DiffusionOptions, device: torch.device,
                      pretrain_dir: Any, encoder: Any) -> Any:
    class _OnlyDiffusion(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # no synthesizer: only the fields the shared steps read
            args = stage.args
            hps = HParams(  # the diffusion config in the so-vits config's terms
                model={"speech_encoder": args.data.encoder, "n_speakers": max(args.model.n_spk, 1),
                       "vol_embedding": True},  # the diffusion model always takes the input's volume
                data={**args.data.to_dict(), "sampling_rate": stage.sr, "hop_length": stage.hop_length,
                      "unit_interpolate_mode": args.data.unit_interpolate_mode},
                spk={str(k): int(v) for k, v in dict(args.spk).items()},
            )
            self._take_config(hps, encoder, pretrain_dir, 60.0)
            self.model = None
            self.device = device
            self.chunk_frames = stage.window_frames
            self.dtype = torch.float32
            self.post_process = None
            self.stage, self.options = stage, options

        def speaker_condition(self, spk_id: int) -> torch.Tensor:
            return torch.tensor([[spk_id]], dtype=torch.long)

        @torch.no_grad()
        def _convert_piece(self, src, piece, pad, options, predictor, mix, g_fixed, total):  # noqa: ANN001
            if mix is not None:
                raise InferenceError("speaker mixing (-usm) is not supported with diffusion")
            n = len(src) // self.hop_length
            if n == 0:
                return np.zeros(len(src), dtype=np.float32)
            if options.seed is not None:
                torch.manual_seed(options.seed)
            feats = self.piece_features(src, options.transpose, predictor=predictor)
            self.stage.check_units(feats.units.shape[1])
            mel = self.stage.mel(feats.units, feats.f0, feats.vol, int(g_fixed.reshape(-1)[0]), self.options)
            out = self.stage.to_audio(mel, feats.f0)[0].cpu().numpy()
            return loudness_envelope(src, _fit(out, len(src)), self.sr, options.loudness_envelope_adjustment)

    return _OnlyDiffusion()


__all__ = ["DiffusionOptions", "DiffusionStage", "DiffusionOnlyEngine", "Enhancer", "PostProcessor", "attach",
           "load_vocoder", "vocode"]
