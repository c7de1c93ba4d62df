"""GAN-VITS training losses (LSGAN adversarial, feature matching, KL, mel L1, lf0 MSE).

Every function computes in float32 even when called under autocast: the fp16 sums of squared
discriminator outputs overflow quickly, and the original computes its losses in full precision
too. Terms are summed over the sub-discriminators, not averaged, so the
loss scale (and therefore the meaning of `c_mel` / `c_kl`) matches so-vits-svc 4.1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from modules.frame_features import mel_spectrogram, spec_to_mel

FEATURE_WEIGHT = 2.0  # the feature-matching sum is doubled


def discriminator_loss(
    real_outputs: Sequence[torch.Tensor], fake_outputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[float], list[float]]:
    """LSGAN discriminator loss: sum over discriminators of mean((1-D(y))^2) + mean(D(y_hat)^2).

    Returns (total, per-discriminator real losses, per-discriminator fake losses); the lists are
    plain floats for logging only.
    """
    total = torch.zeros((), device=real_outputs[0].device)
    real_parts: list[float] = []
    fake_parts: list[float] = []
    for real, fake in zip(real_outputs, fake_outputs):
        real_loss, fake_loss = discriminator_terms(real, fake)
        total = total + real_loss + fake_loss
        real_parts.append(float(real_loss.detach()))
        fake_parts.append(float(fake_loss.detach()))
    return total, real_parts, fake_parts


def discriminator_terms(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One discriminator's LSGAN terms: (mean((1-D(y))^2), mean(D(y_hat)^2))."""
    return torch.mean((1.0 - real.float()) ** 2), torch.mean(fake.float() ** 2)


def generator_term(fake: torch.Tensor) -> torch.Tensor:
    """One discriminator's LSGAN generator term: mean((1-D(y_hat))^2)."""
    return torch.mean((1.0 - fake.float()) ** 2)


def generator_loss(fake_outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss: sum over discriminators of mean((1-D(y_hat))^2)."""
    parts = [generator_term(fake) for fake in fake_outputs]
    return torch.stack(parts).sum(), parts


def feature_loss(real_maps: Sequence[Sequence[torch.Tensor]], fake_maps: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Feature matching: 2 * sum of mean |f_real - f_fake| over every feature map of every discriminator.

    The real maps are detached here, so callers may pass maps computed with gradients.
    """
    terms = []
    for real_list, fake_list in zip(real_maps, fake_maps):
        terms.extend(feature_terms(real_list, fake_list))
    return FEATURE_WEIGHT * torch.stack(terms).sum()


def feature_terms(real_maps: Sequence[torch.Tensor], fake_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One discriminator's feature-matching terms, mean |f_real - f_fake| per map (real maps detached)."""
    return [torch.mean(torch.abs(real.detach().float() - fake.float())) for real, fake in zip(real_maps, fake_maps)]


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, z_mask: torch.Tensor
) -> torch.Tensor:
    """KL between the posterior sample mapped through the flow (z_p, logs_q) and the prior (m_p, logs_p).

    Per element: logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p)^2 * exp(-2 logs_p), masked and averaged
    over the valid (unpadded) elements.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def mel_l1_loss(
    spec_slice: torch.Tensor, audio_hat: torch.Tensor, sr: int, n_fft: int, hop: int, win: int,
    n_mels: int, fmin: float, fmax: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L1 between the mel of the real linear-spectrogram slice and the mel of the generated audio.

    spec_slice [B, n_fft//2+1, S] (the frames matching the generated segment), audio_hat [B, 1, S*hop].
    Returns (loss, real_mel, fake_mel); the mels are returned so logging need not recompute them.
    """
    real_mel = spec_to_mel(spec_slice.float(), sr, n_fft, n_mels, fmin, fmax)
    fake_mel = mel_spectrogram(audio_hat.squeeze(1).float(), sr, n_fft, hop, win, n_mels, fmin, fmax)
    frames = min(real_mel.size(-1), fake_mel.size(-1))
    real_mel, fake_mel = real_mel[..., :frames], fake_mel[..., :frames]
    return F.l1_loss(fake_mel, real_mel), real_mel, fake_mel


def lf0_loss(pred_lf0: torch.Tensor, lf0: torch.Tensor) -> torch.Tensor:
    """MSE of the predicted log-f0 (unmasked, weight 1, as the original)."""
    return F.mse_loss(pred_lf0.float(), lf0.float())
