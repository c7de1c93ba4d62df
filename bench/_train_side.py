"""One training-step measurement in a fresh process, for `python -m bench.train --original PATH`.

Run as a script (never imported):
`python bench/_train_side.py SIDE ROOT CONFIG INPUTS INIT_DIR DEVICE THREADS STEPS`.
SIDE is "ours" or "original"; ROOT is the project whose packages are imported (only that one: both
projects have top-level packages of the same names, see bench/_run_side.py).

- original: so-vits-svc 4.1's train.py refuses to run without CUDA and keeps its step inside a
  function, so the step is assembled here from the checkout's importable pieces: `utils`, `models`
  (SynthesizerTrn, MultiPeriodDiscriminator), `modules.losses`, `modules.mel_processing` and
  `modules.commons`, in the order its training loop runs them, fp32, plain (unfused) AdamW;
- ours: `modules.training.Trainer.train_step` at fp32.

Both sides start from the same weights: INIT_DIR holds a `G_0.pth` / `D_0.pth` pair, which the original
loads with `utils.load_checkpoint(path, net, None)` as its train.py loads pretrained files, and ours
resumes from (copied into its model folder). The two projects draw their initial weights in different
orders, so a shared seed alone would not give the same networks.

INPUTS is an .npz holding one collated batch (units, f0, spec, audio, speaker, lengths, uv, optionally
vol), the same file for both sides. The first step is a warm-up; the next STEPS are timed. Both sides seed
torch with `train.seed` before building the networks and again before the warm-up step. Prints one line
`RESULT {json}`: median and minimum seconds per step, peak memory in MB (RSS on the CPU, torch's max
allocated on CUDA), the warm-up step's discriminator and generator losses, and `weights`: per-tensor
digests of both networks as loaded (bench/_run_side.py `state_digests`), for the caller to check.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

BATCH_KEYS = ("units", "f0", "spec", "audio", "speaker", "lengths", "uv")


def _original(config: str, init_dir: str, device):
    """A step function built from a so-vits-svc 4.1 checkout's modules; returns (step, seed, nets)."""
    import torch
    import torch.nn.functional as F
    import utils  # the checkout's utils.py

    from models import MultiPeriodDiscriminator, SynthesizerTrn  # the checkout's models.py
    from modules import commons, losses, mel_processing  # the checkout's modules/ package

    hps = utils.get_hparams_from_file(config)
    data, train = hps.data, hps.train
    hop, segment = data.hop_length, train.segment_size
    torch.manual_seed(train.seed)
    net_g = SynthesizerTrn(data.filter_length // 2 + 1, segment // hop, **hps.model)
    net_d = MultiPeriodDiscriminator(hps.model.use_spectral_norm)
    utils.load_checkpoint(os.path.join(init_dir, "G_0.pth"), net_g, None)
    utils.load_checkpoint(os.path.join(init_dir, "D_0.pth"), net_d, None)
    net_g, net_d = net_g.to(device), net_d.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the checkout's train.py sets this when it is imported
    optim_g = torch.optim.AdamW(net_g.parameters(), train.learning_rate, betas=train.betas, eps=train.eps)
    optim_d = torch.optim.AdamW(net_d.parameters(), train.learning_rate, betas=train.betas, eps=train.eps)
    net_g.train()
    net_d.train()

    def step(batch: dict) -> tuple[float, float]:
        spec, audio = batch["spec"], batch["audio"]
        y_hat, ids_slice, z_mask, (_, z_p, m_p, logs_p, _, logs_q), pred_lf0, _, lf0 = net_g(
            batch["units"], batch["f0"], batch["uv"], spec, g=batch["speaker"], c_lengths=batch["lengths"],
            spec_lengths=batch["lengths"], vol=batch.get("vol"))
        mel = mel_processing.spec_to_mel_torch(spec, data.filter_length, data.n_mel_channels, data.sampling_rate,
                                               data.mel_fmin, data.mel_fmax)
        y_mel = commons.slice_segments(mel, ids_slice, segment // hop)
        y_hat_mel = mel_processing.mel_spectrogram_torch(y_hat.squeeze(1), data.filter_length, data.n_mel_channels,
                                                         data.sampling_rate, hop, data.win_length, data.mel_fmin,
                                                         data.mel_fmax)
        y = commons.slice_segments(audio, ids_slice * hop, segment)

        real, fake, _, _ = net_d(y, y_hat.detach())
        loss_disc, _, _ = losses.discriminator_loss(real, fake)
        optim_d.zero_grad()
        loss_disc.backward()
        commons.clip_grad_value_(net_d.parameters(), None)
        optim_d.step()

        _, fake, fmap_real, fmap_fake = net_d(y, y_hat)
        loss_mel = F.l1_loss(y_mel, y_hat_mel) * train.c_mel
        loss_kl = losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train.c_kl
        loss_fm = losses.feature_loss(fmap_real, fmap_fake)
        loss_gen, _ = losses.generator_loss(fake)
        total = loss_gen + loss_fm + loss_mel + loss_kl
        if torch.is_tensor(pred_lf0):  # without automatic f0 prediction the checkout returns None or 0 here
            total = total + F.mse_loss(pred_lf0, lf0)
        optim_g.zero_grad()
        total.backward()
        commons.clip_grad_value_(net_g.parameters(), None)
        optim_g.step()
        return loss_disc.detach().item(), total.detach().item()

    return step, train.seed, (net_g, net_d)


def _ours(config: str, init_dir: str, device):
    """Trainer.train_step at fp32 on a trainer resumed from INIT_DIR's pair (no tensorboard); returns
    (step, seed, nets)."""
    import shutil
    import tempfile

    from modules.config import load_config
    from modules.data import Batch
    from modules.distributed import DistContext
    from modules.training import Trainer, TrainOptions

    hps = load_config(config)
    model_dir = tempfile.mkdtemp(prefix="svc-bench-train-")  # holds the starting pair only: nothing is saved
    for name in ("G_0.pth", "D_0.pth"):
        shutil.copy(os.path.join(init_dir, name), model_dir)
    trainer = Trainer(hps, model_dir, DistContext(0, 0, 1, device),
                      TrainOptions(device=str(device), precision="fp32", tensorboard=False, progress=False))
    shutil.rmtree(model_dir)

    def step(batch: dict) -> tuple[float, float]:
        result = trainer.train_step(Batch(*(batch[k] for k in BATCH_KEYS), vol=batch.get("vol")))
        if result.skipped:
            raise RuntimeError(f"non-finite loss: {result.losses}")
        return result.losses["d/total"], result.losses["g/total"]

    return step, hps.train.seed, (trainer.net_g, trainer.net_d)


def main(argv: list[str]) -> int:
    side, root, config, inputs, init_dir, device_name, threads, steps = argv
    from _run_side import _import_root, state_digests  # this script's folder: first on the path until now

    _import_root(root)
    os.chdir(root)
    import numpy as np
    import torch

    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    device = torch.device(device_name)
    with np.load(inputs) as saved:
        batch = {k: torch.from_numpy(saved[k]).to(device) for k in saved.files}
    step, seed, nets = (_original if side == "original" else _ours)(config, init_dir, device)
    weights = {name: state_digests(net.state_dict()) for name, net in zip(("G_0.pth", "D_0.pth"), nets)}
    times: list[float] = []
    losses: tuple[float, float] = (float("nan"), float("nan"))
    torch.manual_seed(seed)
    for i in range(int(steps) + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        values = step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i == 0:
            losses = values
            if device.type == "cuda":  # not cuDNN's autotuning scratch buffers of the first step
                torch.cuda.reset_peak_memory_stats(device)
        else:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    print("RESULT " + json.dumps({
        "side": side, "device": str(device), "threads": torch.get_num_threads(),
        "s_per_step": round(statistics.median(times), 4), "min_s": round(min(times), 4), "peak_mb": round(peak_mb),
        "loss_d": round(losses[0], 5), "loss_g": round(losses[1], 5), "weights": weights}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
