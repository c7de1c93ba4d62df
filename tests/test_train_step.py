"""Trainer.train_step against a straightforward reference step (one discriminator pass over all members,
one generator backward pass of the summed loss, plain torch ops): the same losses, gradient norms and
updated weights, with a small generator and a quarter-width discriminator."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules import lean_autograd, losses
from modules.commons import slice_segments
from modules.config import load_config
from modules.data import ClipDataset, collate_clips
from modules.training import Trainer, TrainOptions
from tests.support.train_data import make_preprocessed_dataset
from vdecoder import nsf_hifigan

STEPS = 2
NETS = ("net_g", "net_d")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("step_ds")
    config, train_list, _ = make_preprocessed_dataset(
        root, clips_per_speaker=2, seconds=1.5,
        model_overrides={"p_dropout": 0.1, "discriminator_width": 0.25},
        config_overrides={"train": {"learning_rate": 2e-3, "batch_size": 2}},
    )
    hps = load_config(config)
    batch = collate_clips([ClipDataset(train_list, hps)[i] for i in range(2)])
    return hps, batch


class _Opaque(nn.Module):
    """A discriminator that does not expose its members: the step's single-pass fallback."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        return self.inner(y, y_hat)


def _trainer(hps, model_dir, opaque: bool) -> Trainer:
    from models import MultiPeriodDiscriminator

    factory = (lambda h: _Opaque(MultiPeriodDiscriminator(False, 0.25))) if opaque else None
    return Trainer(hps, model_dir, options=TrainOptions(device="cpu", num_workers=0, tensorboard=False, progress=False),
                   discriminator_factory=factory)


def _norm(module: nn.Module) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None]))


def _reference_step(tr: Trainer, batch) -> dict[str, float]:
    """so-vits-svc 4.1's step as written: the discriminator's loss over all members back-propagated at once,
    the generator's discriminator pass with gradients for the real audio and the discriminator's weights
    too, one backward pass of the generator's total loss."""
    hps, net_g, net_d = tr.hps, tr.net_g, tr.net_d
    data, hop = hps.data, hps.data.hop_length
    net_g.train()
    net_d.train()
    y_hat, ids, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, _, lf0 = net_g(
        batch.units, batch.f0, batch.uv, batch.spec, g=batch.speaker, c_lengths=batch.lengths,
        spec_lengths=batch.lengths, vol=batch.vol)
    y = slice_segments(batch.audio, ids * hop, hps.train.segment_size)
    spec_slice = slice_segments(batch.spec, ids, hps.train.segment_size // hop)
    mel_l1, _, _ = losses.mel_l1_loss(spec_slice, y_hat, data.sampling_rate, data.filter_length, hop,
                                      data.win_length, data.n_mel_channels, data.mel_fmin, data.mel_fmax)
    members = getattr(net_d, "discriminators", None)
    if members is None:
        real, fake, _, _ = net_d(y, y_hat.detach())
    else:  # each member on [real; fake] stacked along the batch, as the trainer has always done
        outs = [d(torch.cat([y, y_hat.detach()]))[0] for d in members]
        real, fake = [o[:y.size(0)] for o in outs], [o[y.size(0):] for o in outs]
    loss_d = sum(torch.mean((1 - r) ** 2) + torch.mean(f ** 2) for r, f in zip(real, fake))
    tr.optim_d.zero_grad()
    loss_d.backward()
    norm_d = _norm(net_d)
    tr.optim_d.step()
    _, fake, fmap_real, fmap_fake = net_d(y, y_hat)
    loss_gen = sum(torch.mean((1 - f) ** 2) for f in fake)
    loss_fm = 2 * sum(torch.mean(torch.abs(r.detach() - f)) for rs, fs in zip(fmap_real, fmap_fake)
                      for r, f in zip(rs, fs))
    loss_mel = mel_l1 * hps.train.c_mel
    loss_kl = torch.sum((logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2 * logs_p)) * z_mask)
    loss_kl = loss_kl / torch.sum(z_mask) * hps.train.c_kl
    loss_lf0 = F.mse_loss(pred_lf0, lf0)
    total = loss_gen + loss_fm + loss_mel + loss_kl + loss_lf0
    tr.optim_g.zero_grad()
    total.backward()
    norm_g = _norm(net_g)
    tr.optim_g.step()
    tr.optim_d.zero_grad()
    values = {"d/total": loss_d, "g/gen": loss_gen, "g/fm": loss_fm, "g/mel": loss_mel, "g/kl": loss_kl,
              "g/lf0": loss_lf0, "g/total": total}
    return {**{k: float(v.detach()) for k, v in values.items()}, "norm_d": norm_d, "norm_g": norm_g}


@pytest.mark.parametrize("opaque", [False, True], ids=["member_by_member", "single_pass_fallback"])
def test_train_step_matches_the_reference_step(setup, tmp_path, opaque):
    hps, batch = setup
    ours, ref = _trainer(hps, tmp_path / "ours", opaque), _trainer(hps, tmp_path / "ref", opaque)
    for a, b in zip(ours.net_g.state_dict().values(), ref.net_g.state_dict().values()):
        assert torch.equal(a, b)
    split = []
    f0_backward = ours._f0_backward
    ours._f0_backward = lambda *a: split.append(f0_backward(*a)) or split[-1]
    for step in range(STEPS):
        before = {net: {n: p.detach().clone() for n, p in getattr(ref, net).named_parameters()} for net in NETS}
        torch.manual_seed(100 + step)
        result = ours.train_step(batch, want_norms=True)
        torch.manual_seed(100 + step)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lean_autograd, "exporting", lambda: True)  # plain torch ops in the reference
            mp.setattr(nsf_hifigan, "wants_nwc", lambda x: False)  # and the plain [B, C, T] layout
            expected = _reference_step(ref, batch)
        assert not result.skipped
        got = dict(result.losses, norm_d=result.grad_norm_d, norm_g=result.grad_norm_g)
        for key, value in expected.items():
            assert math.isfinite(value) and got[key] == pytest.approx(value, rel=1e-5), (step, key)
        parts = result.extras["real_parts"] + result.extras["fake_parts"]
        assert len(parts) == 2 * 6 and sum(parts) == pytest.approx(expected["d/total"], rel=1e-5)  # 6 members
        for net in NETS:
            params = dict(getattr(ref, net).named_parameters())
            for name, p in getattr(ours, net).named_parameters():
                if step == 0:
                    # The first update, weight by weight: Adam's first step is lr * sign(gradient), so a wrong
                    # gradient moves most weights of its tensor by ~lr (2e-3) the wrong way, while 1e-5 is
                    # half a percent of lr. A weight whose gradient is pure rounding noise may take either
                    # sign, and which one depends on the CPU's convolution kernels (seen: 1 weight of 5120
                    # with oneDNN limited to AVX2), so one such weight in a thousand may differ.
                    off = ((p - params[name]).abs() > 1e-5 + 1e-5 * params[name].abs()).sum().item()
                    assert off <= p.numel() // 1000, f"{net}.{name}: {off} of {p.numel()} weights differ"
                    continue
                # Later updates: Adam (eps 1e-9) turns the rounding differences left by the first update into
                # visible ones for the odd weight whose gradient is nearly zero, so each tensor's update is
                # compared as a whole. The keys' bias is skipped: it shifts every score of a query row alike,
                # which the softmax ignores, so its gradient is pure rounding noise (~1e-9) that Adam scales
                # up to full-size steps.
                if name.endswith("conv_k.bias"):
                    continue
                ours_update, ref_update = p.detach() - before[net][name], params[name].detach() - before[net][name]
                assert float((ours_update - ref_update).norm()) <= 1e-3 * float(ref_update.norm()) + 1e-9, \
                    f"step {step}: {net}.{name}"
    assert len(split) == STEPS and all(torch.is_tensor(g) for g in split)  # the f0 decoder's early backward ran
    # the updates are real: two steps at lr 2e-3 moved every discriminator weight tensor
    fresh = _trainer(hps, tmp_path / "fresh", opaque)
    for (name, p), q in zip(ours.net_d.named_parameters(), fresh.net_d.parameters()):
        assert not torch.equal(p, q), name
