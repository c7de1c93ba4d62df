"""The so-vits-svc 4.1 synthesizer (SynthesizerTrn) and its multi-period discriminator.

State-dict names and shapes equal the original's for every config switch, so community
`G_*.pth` / `D_*.pth` files load with `strict=True` (see tests/test_models.py, which checks them
against the reference key lists).

Data flow at inference: units c -> `pre` + uv/volume embeddings -> enc_p (relative-position
Transformer with a coarse-f0 embedding) -> prior (m_p, logs_p) -> sample z_p -> flow reversed -> z
-> NSF-HiFiGAN decoder driven by f0 -> audio. Training also runs the posterior encoder enc_q on the
linear spectrogram and the flow forward, and the optional f0 decoder.

The stages are exposed separately (`embed_speaker`, `encode_prior`, `flow`, `dec.excitation`,
`dec.synthesize`) for the chunked inference engine.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modules import attentions
from modules.commons import (
    LRELU_SLOPE,
    get_padding,
    normalize_f0,
    rand_slice_segments_with_pitch,
    remove_all_weight_norm,
    sequence_mask,
    weight_norm,
)
from modules.config import DISCRIMINATOR_WIDTHS
from modules.frame_features import f0_to_coarse
from modules.nets import WN, ResidualCouplingBlock, TransformerCouplingBlock
from vdecoder.nsf_hifigan import Generator, GeneratorConfig

logger = logging.getLogger(__name__)

VOCODER_ACTIVATIONS = {"nsf-hifigan": "leaky_relu", "nsf-snake-hifigan": "snake"}
DEFAULT_SEED = 52468


class TextEncoder(nn.Module):
    """enc_p: adds the coarse-f0 embedding, runs the relative-position encoder, projects to (m_p, logs_p)."""

    def __init__(
        self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
        kernel_size: int, p_dropout: float,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)
        self.f0_emb = nn.Embedding(256, hidden_channels)
        self.enc_ = attentions.Encoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)

    def stats(self, x: torch.Tensor, x_mask: torch.Tensor, f0_coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean and log-std [B, inter, T] (no random draw)."""
        x = x + self.f0_emb(f0_coarse).transpose(1, 2)
        x = self.enc_(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, f0_coarse: torch.Tensor, noise_scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m, logs = self.stats(x, x_mask, f0_coarse)
        z = (m + torch.randn_like(m) * torch.exp(logs) * noise_scale) * x_mask
        return z, m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """enc_q: linear spectrogram -> latent z (training only; `compress_model` drops it)."""

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
        n_layers: int, gin_channels: int = 0, use_depthwise_conv: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels,
                      use_depthwise_conv=use_depthwise_conv)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.pre(x) * x_mask
        x = self.enc(x, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class F0Decoder(nn.Module):
    """Predicts normalised log-f0 from the (detached) unit features, the speaker and the input f0 contour."""

    def __init__(
        self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
        kernel_size: int, p_dropout: float, spk_channels: int = 0,
    ) -> None:
        super().__init__()
        self.prenet = nn.Conv1d(hidden_channels, hidden_channels, 3, padding=1)
        self.decoder = attentions.FFT(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden_channels, out_channels, 1)
        self.f0_prenet = nn.Conv1d(1, hidden_channels, 3, padding=1)
        self.cond = nn.Conv1d(spk_channels, hidden_channels, 1)

    def forward(
        self, x: torch.Tensor, norm_f0: torch.Tensor, x_mask: torch.Tensor, spk_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = torch.detach(x)
        if spk_emb is not None:
            x = x + self.cond(spk_emb)
        x = x + self.f0_prenet(norm_f0)
        x = self.prenet(x) * x_mask
        x = self.decoder(x * x_mask, x_mask)
        return self.proj(x) * x_mask


def f0_to_lf0(f0: torch.Tensor) -> torch.Tensor:
    """f0 [B, T] Hz -> the f0 decoder's log scale [B, 1, T]."""
    return 2595.0 * torch.log10(1.0 + f0.unsqueeze(1) / 700.0) / 500


def lf0_to_f0(lf0: torch.Tensor) -> torch.Tensor:
    """Inverse of f0_to_lf0: [B, 1, T] -> [B, T] Hz."""
    return (700 * (torch.pow(10, lf0 * 500 / 2595) - 1)).squeeze(1)


class SynthesizerTrn(nn.Module):
    """so-vits-svc 4.1 generator. See the module docstring and the shared interface notes in README."""

    def __init__(
        self, spec_channels: int, segment_size: int, inter_channels: int, hidden_channels: int,
        filter_channels: int, n_heads: int, n_layers: int, kernel_size: int, p_dropout: float, resblock: str,
        resblock_kernel_sizes: list[int], resblock_dilation_sizes: list[list[int]], upsample_rates: list[int],
        upsample_initial_channel: int, upsample_kernel_sizes: list[int], gin_channels: int, ssl_dim: int,
        n_speakers: int, sampling_rate: int = 44100, vol_embedding: bool = False,
        vocoder_name: str = "nsf-hifigan", use_depthwise_conv: bool = False,
        use_automatic_f0_prediction: bool = True, flow_share_parameter: bool = False, n_flow_layer: int = 4,
        n_layers_trans_flow: int = 3, use_transformer_flow: bool = False, mask_unvoiced_f0: bool = False,
        **ignored: Any,
    ) -> None:
        super().__init__()
        self.spec_channels = spec_channels
        self.segment_size = segment_size
        self.inter_channels = inter_channels
        self.hidden_channels = hidden_channels
        self.gin_channels = gin_channels
        self.ssl_dim = ssl_dim
        self.n_speakers = n_speakers
        self.sampling_rate = sampling_rate
        self.vol_embedding = vol_embedding
        self.use_automatic_f0_prediction = use_automatic_f0_prediction
        self.mask_unvoiced_f0 = mask_unvoiced_f0
        self.hop_length = math.prod(upsample_rates)

        if vocoder_name not in VOCODER_ACTIVATIONS:
            logger.warning("unknown vocoder_name %r; using nsf-hifigan, as the original does", vocoder_name)
            vocoder_name = "nsf-hifigan"
        self.vocoder_name = vocoder_name

        self.emb_g = nn.Embedding(n_speakers, gin_channels)
        if vol_embedding:
            self.emb_vol = nn.Linear(1, hidden_channels)
        self.pre = nn.Conv1d(ssl_dim, hidden_channels, kernel_size=5, padding=2)
        self.enc_p = TextEncoder(inter_channels, hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.dec = Generator(GeneratorConfig(
            in_channels=inter_channels, upsample_rates=list(upsample_rates),
            upsample_kernel_sizes=list(upsample_kernel_sizes), upsample_initial_channel=upsample_initial_channel,
            resblock=str(resblock), resblock_kernel_sizes=list(resblock_kernel_sizes),
            resblock_dilation_sizes=[list(d) for d in resblock_dilation_sizes], sampling_rate=sampling_rate,
            gin_channels=gin_channels, activation=VOCODER_ACTIVATIONS[vocoder_name],
        ))
        # enc_q is always 16 WN layers (the config's n_layers_q is unused in the original).
        self.enc_q = PosteriorEncoder(spec_channels, inter_channels, hidden_channels, 5, 1, 16,
                                      gin_channels=gin_channels, use_depthwise_conv=use_depthwise_conv)
        if use_transformer_flow:
            self.flow: nn.Module = TransformerCouplingBlock(
                inter_channels, hidden_channels, filter_channels, n_heads, n_layers_trans_flow, 5, p_dropout,
                n_flows=n_flow_layer, gin_channels=gin_channels, share_parameter=flow_share_parameter,
            )
        else:
            self.flow = ResidualCouplingBlock(
                inter_channels, hidden_channels, 5, 1, n_flow_layer, gin_channels=gin_channels,
                share_parameter=flow_share_parameter, use_depthwise_conv=use_depthwise_conv,
            )
        if use_automatic_f0_prediction:
            self.f0_decoder = F0Decoder(1, hidden_channels, filter_channels, n_heads, n_layers, kernel_size,
                                        p_dropout, spk_channels=gin_channels)
        self.emb_uv = nn.Embedding(2, hidden_channels)

    @classmethod
    def from_hparams(cls, hps: Any) -> "SynthesizerTrn":
        """Build from a loaded config (modules.config.load_config): data + train + model sections."""
        model = hps.model.to_dict() if hasattr(hps.model, "to_dict") else dict(hps.model)
        return cls(
            hps.data.filter_length // 2 + 1,
            hps.train.segment_size // hps.data.hop_length,
            sampling_rate=hps.data.sampling_rate,
            **{k: v for k, v in model.items() if k != "sampling_rate"},
        )

    # ------------------------------------------------------------------ stages

    def embed_speaker(self, g: torch.Tensor) -> torch.Tensor:
        """Speaker ids [B] / [B, 1] (integer) -> [B, gin, 1]; a float [B, gin, 1 or T] embedding passes through."""
        if g.is_floating_point():
            if g.dim() != 3 or g.size(1) != self.gin_channels:
                raise ValueError(f"a float speaker embedding must be [B, {self.gin_channels}, 1 or T], got {list(g.shape)}")
            return g
        if g.dim() == 2 and g.size(1) == 1:
            g = g[:, 0]
        if g.dim() != 1:
            raise ValueError(f"speaker ids must be [B] or [B, 1], got {list(g.shape)}")
        return self.emb_g(g).unsqueeze(-1)

    def source_f0(self, f0: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """The F0 [B, T] that drives the decoder's harmonic source.

        The original feeds the interpolated contour, so the sine keeps sounding through pauses and consonants
        and the decoder has to learn to cancel it. With `mask_unvoiced_f0` unvoiced frames get F0 0, which the
        source turns into noise only: silence is then easy to produce (a model trained from scratch stops
        buzzing through pauses within a few hundred steps). Off by default, so 4.1 models sound as before.
        """
        return f0 * uv.to(f0.dtype) if self.mask_unvoiced_f0 else f0

    def _front(self, c: torch.Tensor, uv: torch.Tensor, x_mask: torch.Tensor, vol: torch.Tensor | None) -> torch.Tensor:
        x = self.pre(c) * x_mask + self.emb_uv(uv.long()).transpose(1, 2)
        if vol is not None and self.vol_embedding:
            x = x + self.emb_vol(vol[:, :, None]).transpose(1, 2)
        return x

    def encode_prior(
        self, c: torch.Tensor, f0: torch.Tensor, uv: torch.Tensor, g_emb: torch.Tensor,
        vol: torch.Tensor | None = None, predict_f0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Units c [B, ssl, T], f0 [B, T], uv [B, T], speaker embedding -> (m_p, logs_p, f0_used, x_mask).

        No random draw here (in eval mode), so the caller draws the prior noise in the original's order.
        """
        lengths = torch.full((c.size(0),), c.size(-1), device=c.device)
        x_mask = sequence_mask(lengths, c.size(2)).unsqueeze(1).to(c.dtype)
        x = self._front(c, uv, x_mask, vol)
        if predict_f0 and self.use_automatic_f0_prediction:
            lf0 = f0_to_lf0(f0)
            norm_lf0 = normalize_f0(lf0, x_mask, uv, random_scale=False)
            pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g_emb)
            f0 = lf0_to_f0(pred_lf0)
        elif predict_f0:
            logger.warning("predict_f0 requested but this model has no f0 decoder; using the given f0")
        m_p, logs_p = self.enc_p.stats(x, x_mask, f0_to_coarse(f0))
        return m_p, logs_p, f0, x_mask

    # ------------------------------------------------------------------ training / inference

    def forward(
        self, c: torch.Tensor, f0: torch.Tensor, uv: torch.Tensor, spec: torch.Tensor, g: torch.Tensor,
        c_lengths: torch.Tensor, spec_lengths: torch.Tensor, vol: torch.Tensor | None = None,
    ):
        """Training pass; returns (y_hat, ids_slice, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q),
        pred_lf0, norm_lf0, lf0), the last three None without automatic f0 prediction."""
        g = self.embed_speaker(g)
        x_mask = sequence_mask(c_lengths, c.size(2)).unsqueeze(1).to(c.dtype)
        x = self._front(c, uv, x_mask, vol)
        pred_lf0 = norm_lf0 = lf0 = None
        if self.use_automatic_f0_prediction:
            lf0 = f0_to_lf0(f0)
            norm_lf0 = normalize_f0(lf0, x_mask, uv)
            pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g)
        _, m_p, logs_p, _ = self.enc_p(x, x_mask, f0_to_coarse(f0))
        z, m_q, logs_q, spec_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, spec_mask, g=g)
        z_slice, pitch_slice, ids_slice = rand_slice_segments_with_pitch(
            z, self.source_f0(f0, uv), spec_lengths, self.segment_size)
        o = self.dec(z_slice, pitch_slice, g=g)
        return o, ids_slice, spec_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0

    @torch.no_grad()
    def infer(
        self, c: torch.Tensor, f0: torch.Tensor, uv: torch.Tensor, g: torch.Tensor | None = None,
        noise_scale: float = 0.35, seed: int | None = DEFAULT_SEED, predict_f0: bool = False,
        vol: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert units to audio [B, 1, T*hop]; returns (audio, f0 used).

        Reseeds the global torch generator with `seed` (None: don't) and draws, in order: prior
        noise, initial phases, excitation noise, unused source noise -- the original's order.
        """
        if seed is not None:
            torch.manual_seed(seed)
        if g is None:
            g = torch.zeros(c.size(0), dtype=torch.long, device=c.device)
        g_emb = self.embed_speaker(g)
        m_p, logs_p, f0, x_mask = self.encode_prior(c, f0, uv, g_emb, vol=vol, predict_f0=predict_f0)
        z_p = (m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale) * x_mask
        z = self.flow(z_p, x_mask, g=g_emb, reverse=True)
        audio = self.dec(z * x_mask, self.source_f0(f0, uv), g=g_emb)
        return audio, f0

    def remove_weight_norm(self) -> int:
        """Fold every weight norm into plain weights (inference only); returns the number folded."""
        return remove_all_weight_norm(self)


# ---------------------------------------------------------------------------------------- discriminator


def _norm(use_spectral_norm: bool):
    return torch.nn.utils.spectral_norm if use_spectral_norm else weight_norm


def _scaled(channels: int, width: float) -> int:
    """A discriminator channel count at `width` (only widths whose counts divide the conv groups)."""
    if width not in DISCRIMINATOR_WIDTHS:
        raise ValueError(f"discriminator width {width}: use one of {DISCRIMINATOR_WIDTHS}")
    return int(channels * width)


def _conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor, fmap: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A discriminator's body: leaky-ReLU convs, then the output conv; every output joins the feature maps."""
    for conv in convs:
        # In place: a convolution keeps its input, not its output, so the activation is the only copy.
        x = F.leaky_relu(conv(x), LRELU_SLOPE, inplace=True)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorP(nn.Module):
    """Period discriminator: folds the wave into [T/p, p] and runs (k, 1) 2-D convs."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False,
                 width: float = 1.0) -> None:
        super().__init__()
        self.period = period
        norm = _norm(use_spectral_norm)
        pad = (get_padding(kernel_size, 1), 0)
        chans = [1] + [_scaled(c, width) for c in (32, 128, 512, 1024)]
        self.convs = nn.ModuleList(
            [norm(nn.Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (stride, 1), padding=pad)) for i in range(4)]
            + [norm(nn.Conv2d(chans[4], chans[4], (kernel_size, 1), 1, padding=pad))]
        )
        self.conv_post = norm(nn.Conv2d(chans[4], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fmap = []
        b, c, t = x.shape
        if t % self.period != 0:
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _conv_stack(self.convs, self.conv_post, x, fmap)


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw wave with grouped strided 1-D convs."""

    def __init__(self, use_spectral_norm: bool = False, width: float = 1.0) -> None:
        super().__init__()
        norm = _norm(use_spectral_norm)
        c16, c64, c256, c1024 = (_scaled(c, width) for c in (16, 64, 256, 1024))
        self.convs = nn.ModuleList([
            norm(nn.Conv1d(1, c16, 15, 1, padding=7)),
            norm(nn.Conv1d(c16, c64, 41, 4, groups=4, padding=20)),
            norm(nn.Conv1d(c64, c256, 41, 4, groups=16, padding=20)),
            norm(nn.Conv1d(c256, c1024, 41, 4, groups=64, padding=20)),
            norm(nn.Conv1d(c1024, c1024, 41, 4, groups=256, padding=20)),
            norm(nn.Conv1d(c1024, c1024, 5, 1, padding=2)),
        ])
        self.conv_post = norm(nn.Conv1d(c1024, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _conv_stack(self.convs, self.conv_post, x, [])


class MultiPeriodDiscriminator(nn.Module):
    """One scale discriminator plus period discriminators for periods 2, 3, 5, 7, 11."""

    PERIODS = (2, 3, 5, 7, 11)

    def __init__(self, use_spectral_norm: bool = False, width: float = 1.0) -> None:
        """`width` scales every channel count (1.0: so-vits-svc 4.1's discriminator, which pretrained D_0.pth
        files fit; 0.25: a sixteenth of the weights, enough for small models and quick runs)."""
        super().__init__()
        self.discriminators = nn.ModuleList(
            [DiscriminatorS(use_spectral_norm, width)]
            + [DiscriminatorP(p, use_spectral_norm=use_spectral_norm, width=width) for p in self.PERIODS]
        )

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        """Real y and generated y_hat [B, 1, L] -> (y_d_rs, y_d_gs, fmap_rs, fmap_gs), one entry per discriminator."""
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for d in self.discriminators:
            y_d_r, fmap_r = d(y)
            y_d_g, fmap_g = d(y_hat)
            y_d_rs.append(y_d_r)
            y_d_gs.append(y_d_g)
            fmap_rs.append(fmap_r)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs
