"""The discriminator's passes in a GAN step, computed the cheap way with the same results.

- Generator step: the real audio runs through each sub-discriminator without gradients (its feature
  maps are only targets), the fake with gradients.
- Discriminator step: each sub-discriminator runs once on real and fake stacked along the batch.
- One sub-discriminator at a time (`discriminator_backward`, `adversarial_backward`): every loss term
  belongs to one sub-discriminator and the losses are plain sums over them, so back-propagating each
  member's terms right after its forward pass gives the gradients of one backward pass of the sum,
  while only one member's activations are alive at a time.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch
from torch import nn

from modules import losses
from modules.commons import release_weight_norm_cache

Backward = Callable[[torch.Tensor], None]


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


def discriminator_backward(net_d: nn.Module, y: torch.Tensor, y_hat: torch.Tensor, backward: Backward,
                           autocast: Callable[[], ContextManager]) -> tuple[torch.Tensor, list[float], list[float]]:
    """The discriminator step's LSGAN loss, back-propagated one member at a time (y_hat detached here).

    `backward(loss)` runs the backward pass (e.g. through a GradScaler). Returns what
    losses.discriminator_loss returns, the total detached: the same value, summed in the same order.
    Needs the `discriminators` list (see JointDiscriminator); a single backward pass of the summed
    loss is done otherwise.
    """
    subs = _sub_discriminators(net_d)
    y_hat = y_hat.detach()
    if subs is None:
        with autocast():
            real, fake, _, _ = net_d(y, y_hat)
        total, real_parts, fake_parts = losses.discriminator_loss(real, fake)
        backward(total)
        return total.detach(), real_parts, fake_parts
    n = y.size(0)
    both = torch.cat([y, y_hat.to(y.dtype)], dim=0)
    total = torch.zeros((), device=y.device)
    reals: list[torch.Tensor] = []
    fakes: list[torch.Tensor] = []
    for d in subs:
        with autocast():
            out, _ = d(both)
        real_loss, fake_loss = losses.discriminator_terms(out[:n], out[n:])
        del out
        backward(real_loss + fake_loss)
        release_weight_norm_cache(d)  # this member's computed weights are not needed again in this pass
        reals.append(real_loss.detach())
        fakes.append(fake_loss.detach())
        total = total + reals[-1] + fakes[-1]
    parts = torch.stack(reals + fakes).tolist()  # one device-to-host copy for all the logged parts
    return total, parts[:len(reals)], parts[len(reals):]


def adversarial_backward(net_d: nn.Module, y: torch.Tensor, y_hat: torch.Tensor, backward: Backward,
                         autocast: Callable[[], ContextManager]
                         ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The generator's adversarial and feature-matching losses, back-propagated as far as y_hat.

    The discriminator runs on a detached copy of y_hat, member by member; `backward(loss)` accumulates
    that copy's gradient. Returns (gradient for y_hat, loss_gen, loss_fm): the generator's backward pass
    then takes y_hat with that gradient together with its other losses, in one pass through the
    generator. The losses are detached and equal losses.generator_loss / losses.feature_loss.
    The discriminator's weights should be frozen (requires_grad False): nothing here needs their
    gradients.
    """
    leaf = y_hat.detach().requires_grad_(True)
    subs = _sub_discriminators(net_d)
    if subs is None:
        with autocast():
            fake, fmap_real, fmap_fake = discriminate_for_generator(net_d, y, leaf)
        loss_gen, _ = losses.generator_loss(fake)
        loss_fm = losses.feature_loss(fmap_real, fmap_fake)
        backward(loss_gen + loss_fm)
        return leaf.grad, loss_gen.detach(), loss_fm.detach()
    gen_parts: list[torch.Tensor] = []
    fm_terms: list[torch.Tensor] = []
    for d in subs:
        with autocast():
            with torch.no_grad():
                _, fmap_real = d(y)
            out, fmap_fake = d(leaf)
        gen = losses.generator_term(out)
        terms = losses.feature_terms(fmap_real, fmap_fake)
        del out, fmap_real, fmap_fake
        backward(gen + losses.FEATURE_WEIGHT * torch.stack(terms).sum())
        release_weight_norm_cache(d)
        gen_parts.append(gen.detach())
        fm_terms.extend(t.detach() for t in terms)
    return leaf.grad, torch.stack(gen_parts).sum(), losses.FEATURE_WEIGHT * torch.stack(fm_terms).sum()
