"""The discriminator's passes in a GAN step, computed the cheap way with the same results.

- Generator step: the real audio runs through each sub-discriminator without gradients (its feature
  maps are only targets), the fake with gradients.
- Discriminator step: each sub-discriminator runs once on real and fake stacked along the batch.
"""
from __future__ import annotations

import torch
from torch import nn


def _sub_discriminators(net_d: nn.Module) -> list[nn.Module] | None:
    """The MultiPeriodDiscriminator's members (`discriminators.N` in the state dict), if it exposes them."""
    subs = getattr(net_d, "discriminators", None)
    return list(subs) if isinstance(subs, nn.ModuleList) else None


class JointDiscriminator(nn.Module):
    """Discriminator-step view of the MPD: each member runs once on [real; fake] stacked along the batch.

    Same outputs as the MPD's two separate calls (no batch-dependent layers), but half the kernel
    launches and weight-norm recomputations and larger, more efficient convolutions. This wrapper is
    what DDP wraps for the discriminator step; checkpoints still save the bare MPD.
    """

    def __init__(self, mpd: nn.Module) -> None:
        super().__init__()
        self.mpd = mpd

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        subs = _sub_discriminators(self.mpd)
        if subs is None:
            real, fake, _, _ = self.mpd(y, y_hat)
            return real, fake
        n = y.size(0)
        both = torch.cat([y, y_hat.to(y.dtype)], dim=0)
        real, fake = [], []
        for d in subs:
            out, _ = d(both)
            real.append(out[:n])
            fake.append(out[n:])
        return real, fake


def discriminate_for_generator(net_d: nn.Module, y: torch.Tensor, y_hat: torch.Tensor
                               ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """(D(y_hat), fmaps of y, fmaps of y_hat) for the generator loss.

    The real pass runs under no_grad: its feature maps are targets (detached by the loss anyway),
    so building and keeping their graph, as the original does, only costs memory and time.
    """
    subs = _sub_discriminators(net_d)
    if subs is None:
        _, fake, fmap_real, fmap_fake = net_d(y, y_hat)
        return fake, fmap_real, fmap_fake
    fake, fmap_real, fmap_fake = [], [], []
    for d in subs:
        with torch.no_grad():
            _, f_real = d(y)
        out, f_fake = d(y_hat)
        fake.append(out)
        fmap_real.append(f_real)
        fmap_fake.append(f_fake)
    return fake, fmap_real, fmap_fake
