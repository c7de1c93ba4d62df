"""The so-vits-svc 4.1 GAN training loop: CPU / one GPU / DistributedDataParallel, fp16 or bf16 autocast.

File compatibility with so-vits-svc 4.1: checkpoints are `G_<step>.pth` /
`D_<step>.pth` with `iteration` = epoch and `learning_rate` = the configured initial rate, and a
run resumes from the newest pair with step = (number in the D file name) + 1 and epoch =
max(iteration, 1). Pretrained `G_0.pth` / `D_0.pth` in the model folder are therefore picked up
automatically; tensors whose shape differs (e.g. `emb_g` for another speaker count) keep their
fresh initialisation and are listed in a warning by `modules.checkpoint.load_checkpoint`.

Additions, each for robustness or speed, none changing the files:
- a DistributedSampler (seeded reshuffle per epoch; ranks see disjoint data);
- a non-finite loss skips the step (agreed across ranks) and `max_nan_steps` in a row stop the run
  with a `TrainingError`; checkpoints are never written from non-finite weights;
- Ctrl-C (or SIGTERM) finishes the current step, saves `G_/D_<last step>` and returns;
- the generator step runs the discriminator with its weights frozen (the original computed
  discriminator weight gradients there only to throw them away): same losses and updates, less
  time and memory;
- grad norms are computed only on logging steps (the original clipped with `None`, i.e. never);
- less kept alive at once, with the same losses and updates (gradients equal up to float rounding):
  the discriminator step back-propagates one discriminator member at a time (not under DDP); the
  generator step back-propagates its adversarial and feature losses through the frozen discriminator,
  member by member, as far as y_hat, then runs one backward pass through the generator; the f0
  decoder's loss is back-propagated right after the forward pass (its graph joins the rest only at the
  speaker embedding; not under DDP); the weight-norm copies are dropped between steps; the models'
  training ops keep less for the backward pass (modules.lean_autograd). Peak memory at the default
  config, batch 6: 5.6 -> 4.1-4.2 GB.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from modules import losses
from modules.atomic_write import atomic_path
from modules.checkpoint import (
    checkpoint_step,
    clean_checkpoints,
    latest_checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from modules.commons import release_weight_norm_cache, slice_segments
from modules.config import HParams, load_config
from modules.data import Batch, ClipDataset, default_num_workers, make_loader
from modules.device import cpu_has_fast_half, resolve_device
from modules.distributed import DistContext, cleanup_distributed, setup_distributed
from modules.errors import DatasetError, TrainingError
from modules.frame_features import mel_spectrogram, spec_to_mel
from modules.gan import JointDiscriminator, adversarial_backward, discriminator_backward
from modules.host_memory import TRAINING_TRIM_THRESHOLD, reuse_freed_memory
from modules.stop_signals import StopSignals

logger = logging.getLogger(__name__)

PRECISIONS = ("config", "fp32", "fp16", "bf16")


# --------------------------------------------------------------------------------------------- set-up


def copy_config(src: str | os.PathLike, model_dir: Path) -> Path:
    """Copy the config byte for byte into the model folder (as the original), atomically."""
    src, dst = Path(src), model_dir / "config.json"
    if dst.exists() and dst.resolve() == src.resolve():
        return dst
    data = src.read_bytes()
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)
    return dst


def setup_logging(model_dir: Path, is_main: bool, rank: int) -> list[logging.Handler]:
    """Console logging for every rank (rank-tagged), plus `train.log` in the model folder on rank 0.

    Returns the handlers added, so in-process callers (tests) can remove them again.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
                            if not is_main else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    added: list[logging.Handler] = []
    if not any(getattr(h, "_svc_console", False) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        console.setLevel(logging.INFO if is_main else logging.WARNING)
        console._svc_console = True  # type: ignore[attr-defined]
        added.append(console)
    if is_main:
        log_path = (model_dir / "train.log").resolve()
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_path for h in root.handlers):
            model_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_path, encoding="utf-8")
            handler.setFormatter(fmt)
            added.append(handler)
    for handler in added:
        root.addHandler(handler)
    return added


# --------------------------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether gradients are loss-scaled (fp16 only)."""

    dtype: torch.dtype | None
    scaled: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    @classmethod
    def resolve(cls, hps: HParams, override: str = "config") -> "Precision":
        """`train.fp16_run` switches autocast on; `train.half_type` 'bf16' picks bfloat16, anything else fp16."""
        if override not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, got {override!r}")
        if override == "config":
            if not hps.train.fp16_run:
                return cls(None, False)
            override = "bf16" if hps.train.half_type == "bf16" else "fp16"
        if override == "fp32":
            return cls(None, False)
        if override == "bf16":
            return cls(torch.bfloat16, False)  # bf16 has fp32's range: no loss scaling needed
        return cls(torch.float16, True)


# --------------------------------------------------------------------------------------------- checkpoints


def _optimizer_matches_params(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every loaded optimizer moment has its parameter's shape (a pretrained file for another
    speaker count or model size would otherwise crash, or worse, at the first step)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                value = state.get(key)
                if value is not None and value.shape != p.shape:
                    return False
    return True


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _worker_message(error: Exception) -> str:
    """The original one-line message of an error a DataLoader worker raised (torch wraps it in its traceback)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if ": " in line and line.split(": ", 1)[0].endswith("Error"):
            return line.split(": ", 1)[1]
    return lines[-1] if lines else str(error)


# --------------------------------------------------------------------------------------------- logging helpers


def mel_image(mel: np.ndarray) -> np.ndarray:
    """[n_mels, T] -> HWC uint8 image for tensorboard (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 2.5))
    im = ax.imshow(mel, aspect="auto", origin="lower", interpolation="none")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("frames")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


# --------------------------------------------------------------------------------------------- trainer


@dataclass
class TrainOptions:
    """Run options beyond the config (command-line flags of train.py)."""

    device: str = "auto"
    precision: str = "config"  # "config" follows train.fp16_run / train.half_type
    max_steps: int | None = None  # stop (and save) once this many steps exist in total
    num_workers: int | None = None  # None: 0 with all_in_mem, else a few
    max_nan_steps: int = 10  # consecutive non-finite steps before giving up
    eval_items: int | None = None  # cap on validation clips per evaluation (None: all, as the original)
    tensorboard: bool = True
    progress: bool = True
    save_on_stop: bool = True  # save a checkpoint on Ctrl-C / max_steps


@dataclass
class StepResult:
    """Losses of one step as floats; `skipped` when a non-finite loss prevented the update."""

    step: int
    losses: dict[str, float]
    skipped: bool = False
    grad_norm_g: float | None = None
    grad_norm_d: float | None = None
    data_seconds: float = 0.0
    step_seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict, repr=False)


class Trainer:
    """Builds models, optimizers and loaders from a config, resumes, and runs epochs.

    `fit()` is the whole of train.py; `train_step(batch)` is usable alone (benchmarks, tests).
    `step_callback(trainer, result)` runs after every step (tests use it to interrupt).
    """

    def __init__(self, hps: HParams, model_dir: str | os.PathLike, ctx: DistContext | None = None,
                 options: TrainOptions | None = None,
                 step_callback: Callable[["Trainer", StepResult], None] | None = None,
                 discriminator_factory: Callable[[HParams], nn.Module] | None = None) -> None:
        from models import MultiPeriodDiscriminator, SynthesizerTrn

        self.hps = hps
        self.model_dir = Path(model_dir)
        self.options = options or TrainOptions()
        # without a distributed context (one process: tests, benchmarks) the options name the device
        self.ctx = ctx or DistContext(0, 0, 1, resolve_device(self.options.device))
        self.step_callback = step_callback
        self.device = self.ctx.device
        self.precision = Precision.resolve(hps, self.options.precision)
        self._stop_reason: str | None = None
        self.stop_signals = StopSignals()
        self.nan_streak = 0
        self.last_saved_step: int | None = None

        if self.device.type == "cpu":  # keep the heap memory a step frees for the next step (no re-faulting)
            reuse_freed_memory(TRAINING_TRIM_THRESHOLD)
        torch.manual_seed(hps.train.seed)  # identical initial weights on every rank
        self.net_g: nn.Module = SynthesizerTrn.from_hparams(hps).to(self.device)
        if discriminator_factory is None:
            self.net_d: nn.Module = MultiPeriodDiscriminator(hps.model.use_spectral_norm, hps.model.discriminator_width)
        else:  # tests use a narrower discriminator with the same interface
            self.net_d = discriminator_factory(hps)
        self.net_d = self.net_d.to(self.device)
        self.optim_g = self._make_optimizer(self.net_g)
        self.optim_d = self._make_optimizer(self.net_d)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        if self.device.type == "cpu" and self.precision.dtype is not None and not cpu_has_fast_half(self.precision.dtype):
            logger.warning("%s autocast on a CPU without native %s support is emulated and far slower than fp32 "
                           "(set train.fp16_run to false, or use --precision fp32)", self.precision.name,
                           self.precision.name)
        self.epoch, self.global_step = self._resume()
        self._rng = np.random.default_rng(hps.train.seed + self.ctx.rank)

        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_train: nn.Module = nn.parallel.DistributedDataParallel(self.net_g, device_ids=ids)
            self.d_train: nn.Module = nn.parallel.DistributedDataParallel(JointDiscriminator(self.net_d), device_ids=ids)
        else:
            self.g_train, self.d_train = self.net_g, JointDiscriminator(self.net_d)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # The speaker embedding the f0 decoder received in the last forward pass (see train_step).
        self._f0_speaker: torch.Tensor | None = None
        f0_decoder = getattr(self.net_g, "f0_decoder", None)
        if isinstance(f0_decoder, nn.Module):
            f0_decoder.register_forward_pre_hook(self._capture_f0_speaker, with_kwargs=True)

        self.writer = self.writer_eval = None
        if self.ctx.is_main and self.options.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.model_dir))
            self.writer_eval = SummaryWriter(log_dir=str(self.model_dir / "eval"))
        self.train_loader = self.train_sampler = None
        self.eval_dataset: ClipDataset | None = None

    # ------------------------------------------------------------------ construction helpers

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW as the original (weight_decay left at 0.01), using the fused kernel where torch has one:
        about 3x faster than the per-tensor loop on CPU, which matters for ~100M weights per step."""
        t = self.hps.train
        kwargs = dict(lr=float(t.learning_rate), betas=tuple(t.betas), eps=float(t.eps))
        try:
            opt = torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, ValueError) as e:
            logger.info("fused AdamW unavailable on %s (%s); using the default implementation", self.device, e)
            opt = torch.optim.AdamW(model.parameters(), **kwargs)
        for group in opt.param_groups:
            # The original's ExponentialLR adds initial_lr; keep it so the original can resume our files.
            group["initial_lr"] = float(t.learning_rate)
        return opt

    def _resume(self) -> tuple[int, int]:
        """Load the newest G/D pair; returns (epoch, global_step). A fresh run is (1, 0)."""
        g_path = self._latest(latest_checkpoint_path, "G_*.pth")
        d_path = self._latest(latest_checkpoint_path, "D_*.pth")
        if g_path is None and d_path is None:
            logger.info("no checkpoint in %s: training from scratch", self.model_dir)
            return 1, 0
        epoch, step = 1, 0
        if g_path is not None:
            fused = self.optim_g.param_groups[0].get("fused")
            _, _, _, iteration = load_checkpoint(str(g_path), self.net_g, self.optim_g)
            epoch = max(int(iteration), 1)
            step = checkpoint_step(g_path) + 1
            self._check_optimizer(self.optim_g, fused, g_path)
        if d_path is not None:
            fused = self.optim_d.param_groups[0].get("fused")
            load_checkpoint(str(d_path), self.net_d, self.optim_d)
            self._check_optimizer(self.optim_d, fused, d_path)
            step = checkpoint_step(d_path) + 1  # the original takes the step from the D file
        if g_path is None or d_path is None:
            logger.warning("only %s found in %s; the other network starts from scratch",
                           (g_path or d_path).name, self.model_dir)
        elif checkpoint_step(g_path) != checkpoint_step(d_path):
            logger.warning("newest checkpoints %s and %s are from different steps; continuing at step %d",
                           g_path.name, d_path.name, step)
        if not (all_finite(self.net_g) and all_finite(self.net_d)):
            raise TrainingError(f"{g_path or d_path}: checkpoint contains NaN or infinite weights; "
                                "delete it to resume from an older one")
        logger.info("resumed from %s / %s: epoch %d, step %d", g_path and g_path.name, d_path and d_path.name,
                    epoch, step)
        return epoch, step

    def _latest(self, finder: Callable[..., Any], pattern: str) -> Path | None:
        if not self.model_dir.is_dir():
            return None
        found = finder(str(self.model_dir), pattern)
        return Path(found) if found else None

    def _check_optimizer(self, optimizer: torch.optim.Optimizer, fused: bool | None, path: Path) -> None:
        """After loading: drop moments that do not fit, and restore our implementation choice
        (load_state_dict copies the file's `fused` flag, e.g. False from the original)."""
        if not _optimizer_matches_params(optimizer):
            logger.warning("%s: optimizer state does not fit this model (other speaker count or size); "
                           "starting the optimizer fresh", path)
            optimizer.state.clear()
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", self.hps.train.learning_rate)
            group["fused"] = fused
            if fused:
                group["foreach"] = None
                for p in group["params"]:  # the fused kernel wants float32 step counters on the param's device
                    state = optimizer.state.get(p)
                    if state and torch.is_tensor(state.get("step")):
                        state["step"] = state["step"].to(device=p.device, dtype=torch.float32)

    def build_loaders(self) -> None:
        """Training loader for this rank, and the validation set on rank 0."""
        all_in_mem = self.hps.train.all_in_mem
        workers = self.options.num_workers
        if workers is None:
            workers = default_num_workers(all_in_mem)
        train_set = ClipDataset(self.hps.data.training_files, self.hps, train=True, all_in_mem=all_in_mem)
        self.train_loader, self.train_sampler = make_loader(
            train_set, self.hps.train.batch_size, self.ctx.rank, self.ctx.world_size,
            seed=self.hps.train.seed, shuffle=True, num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        logger.info("%d training clips (%d per rank), batch %d, %d loader workers", len(train_set),
                    len(self.train_sampler), self.hps.train.batch_size, workers)
        if self.ctx.is_main:
            self.eval_dataset = ClipDataset(self.hps.data.validation_files, self.hps, train=False,
                                            all_in_mem=all_in_mem)

    # ------------------------------------------------------------------ schedule

    def learning_rate(self, epoch: int) -> float:
        """Warm-up (lr * epoch / warmup_epochs), then ExponentialLR per epoch: lr * lr_decay^(epoch-1)."""
        t = self.hps.train
        lr, warmup = float(t.learning_rate), int(t.get("warmup_epochs", 0))
        if warmup > 0 and epoch <= warmup:
            return lr / warmup * epoch
        return lr * float(t.lr_decay) ** (epoch - 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        lr = self.learning_rate(epoch)
        for opt in (self.optim_g, self.optim_d):
            for group in opt.param_groups:
                group["lr"] = lr

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def _any_rank(self, flag: bool) -> bool:
        """True if `flag` is true on any rank (so every rank skips the same steps and DDP stays in step)."""
        if not self.ctx.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def _grad_norm(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.nn.utils.get_total_norm(grads))

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _capture_f0_speaker(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        spk = kwargs.get("spk_emb")
        self._f0_speaker = spk if torch.is_grad_enabled() and torch.is_tensor(spk) and spk.requires_grad else None

    def _f0_backward(self, loss_lf0: torch.Tensor, speaker: torch.Tensor | None) -> torch.Tensor | None:
        """Back-propagate the f0 decoder's loss now, as far as its speaker-embedding input; returns that
        input's gradient (None: not split, the loss must join the main backward pass).

        The f0 decoder takes the units detached, so its loss reaches the rest of the generator only through
        the speaker embedding: its graph can be freed right after the forward pass instead of being kept
        through the discriminator step. Under DDP the generator keeps one backward pass per forward pass.
        """
        if self.ctx.distributed or speaker is None:
            return None
        params = [p for p in self.net_g.f0_decoder.parameters() if p.requires_grad]
        grads = torch.autograd.grad(self.scaler.scale(loss_lf0), params + [speaker], allow_unused=True)
        for p, grad in zip(params, grads):
            if grad is not None:
                p.grad = grad if p.grad is None else p.grad + grad
        return grads[-1]

    def train_step(self, batch: Batch, want_norms: bool = False) -> StepResult:
        """One discriminator and one generator update on `batch` (already on the device)."""
        hps = self.hps
        data, hop = hps.data, hps.data.hop_length
        seg_frames = hps.train.segment_size // hop
        start = time.perf_counter()
        self.g_train.train()
        self.d_train.train()

        with self._autocast():
            (y_hat, ids_slice, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0) = self.g_train(
                batch.units, batch.f0, batch.uv, batch.spec, g=batch.speaker, c_lengths=batch.lengths,
                spec_lengths=batch.lengths, vol=batch.vol,
            )
        f0_speaker, self._f0_speaker = self._f0_speaker, None
        self.optim_g.zero_grad(set_to_none=True)
        loss_lf0 = grad_f0_speaker = None
        if pred_lf0 is not None:
            loss_lf0 = losses.lf0_loss(pred_lf0, lf0)
            grad_f0_speaker = self._f0_backward(loss_lf0, f0_speaker)
            del pred_lf0
        y = slice_segments(batch.audio, ids_slice * hop, hps.train.segment_size)
        spec_slice = slice_segments(batch.spec, ids_slice, seg_frames)
        loss_mel_raw, y_mel, y_hat_mel = losses.mel_l1_loss(
            spec_slice, y_hat, int(data.sampling_rate), int(data.filter_length), hop, int(data.win_length),
            int(data.n_mel_channels), float(data.mel_fmin), data.mel_fmax,
        )

        # Discriminator update.
        self.optim_d.zero_grad(set_to_none=True)
        if self.ctx.distributed:  # DDP wants one backward pass per forward pass: all members at once
            with self._autocast():
                d_real, d_fake = self.d_train(y, y_hat.detach())
            loss_disc, real_parts, fake_parts = losses.discriminator_loss(d_real, d_fake)
            del d_real, d_fake
            values: dict[str, float] = {"d/total": float(loss_disc.detach())}
            if self._any_rank(not math.isfinite(values["d/total"])):
                return self._skip(batch, values, start)
            self._backward(loss_disc)
        else:  # one member at a time, only its activations alive (same gradients)
            loss_disc, real_parts, fake_parts = discriminator_backward(self.net_d, y, y_hat, self._backward,
                                                                       self._autocast)
            values = {"d/total": float(loss_disc)}
            if not math.isfinite(values["d/total"]):
                return self._skip(batch, values, start)
        grad_norm_d = self._grad_norm(self.net_d, self.optim_d) if want_norms else None
        self.scaler.step(self.optim_d)
        # Free the gradients now instead of at the next zero_grad: G's and D's are then never alive at the
        # same time, nor during the forward passes (about 0.4 GB less peak memory with the default model).
        self.optim_d.zero_grad(set_to_none=True)

        # Generator update. The adversarial and feature-matching losses are back-propagated through the
        # frozen discriminator (no weight gradients built for it) as far as y_hat first, one member at a
        # time; the generator's backward pass then takes y_hat with that gradient and the other losses.
        self.net_d.requires_grad_(False)
        try:
            grad_y_hat, loss_gen, loss_fm = adversarial_backward(self.net_d, y, y_hat, self._backward,
                                                                 self._autocast)
        finally:
            self.net_d.requires_grad_(True)
        loss_mel = loss_mel_raw * hps.train.c_mel
        loss_kl = losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * hps.train.c_kl
        rest = loss_mel + loss_kl  # the losses whose gradients start in the generator's own graph
        total = loss_gen + loss_fm + loss_mel.detach() + loss_kl.detach()
        parts = {"g/gen": loss_gen, "g/fm": loss_fm, "g/mel": loss_mel, "g/kl": loss_kl, "g/mel_l1": loss_mel_raw}
        tensors, grads = [y_hat], [grad_y_hat]
        if loss_lf0 is not None:
            parts["g/lf0"] = loss_lf0
            total = total + loss_lf0.detach()
            if grad_f0_speaker is None:
                rest = rest + loss_lf0
            else:  # already back-propagated as far as the speaker embedding
                tensors.append(f0_speaker)
                grads.append(grad_f0_speaker)
        parts["g/total"] = total
        # One device-to-host copy for all the logged losses: on a GPU each float() would wait for the
        # queue to drain separately.
        numbers = torch.stack([v.detach().float().reshape(()) for v in parts.values()]).tolist()
        values.update(zip(parts, numbers))
        if self._any_rank(not math.isfinite(values["g/total"])):
            return self._skip(batch, values, start)
        torch.autograd.backward([self.scaler.scale(rest)] + tensors, [None] + grads)
        del tensors, grads, grad_y_hat, grad_f0_speaker, f0_speaker
        grad_norm_g = self._grad_norm(self.net_g, self.optim_g) if want_norms else None
        self.scaler.step(self.optim_g)
        self.scaler.update()
        self.optim_g.zero_grad(set_to_none=True)
        for net in (self.net_g, self.net_d):  # the weight-norm copies would otherwise live until the next step
            release_weight_norm_cache(net)
        self.nan_streak = 0
        extras = {"y_mel": y_mel.detach(), "y_hat_mel": y_hat_mel.detach(), "real_parts": real_parts,
                  "fake_parts": fake_parts}
        return StepResult(self.global_step, values, False, grad_norm_g, grad_norm_d,
                          step_seconds=time.perf_counter() - start, extras=extras)

    def _skip(self, batch: Batch, values: dict[str, float], start: float) -> StepResult:
        """Drop this step's gradients; too many in a row means training has diverged."""
        self.optim_g.zero_grad(set_to_none=True)
        self.optim_d.zero_grad(set_to_none=True)
        self.nan_streak += 1
        bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v)) or "on another rank"
        logger.warning("step %d: non-finite loss (%s); update skipped (%d in a row; clips: %s)",
                       self.global_step, bad, self.nan_streak, ", ".join(Path(n).name for n in batch.names))
        if self.nan_streak >= self.options.max_nan_steps:
            last = f"G_{self.last_saved_step}.pth" if self.last_saved_step is not None else "none from this run"
            raise TrainingError(
                f"{self.nan_streak} consecutive steps had NaN/Inf losses (last at step {self.global_step}); "
                f"training has diverged and no checkpoint was written. Last good checkpoint: {last} in "
                f"{self.model_dir}. Try a lower learning rate, fp32 (fp16_run false) or check the data."
            )
        return StepResult(self.global_step, values, True, step_seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ evaluation, saving, logging

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Synthesise validation clips with `infer` (noise 0.35, fixed seed) and log audio, mels and mel L1.

        The global RNG is forked so that evaluation's fixed seed does not change the training noise.
        """
        if self.eval_dataset is None:
            return {}
        data, hop = self.hps.data, self.hps.data.hop_length
        sr = int(data.sampling_rate)
        self.net_g.eval()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        l1_values: list[float] = []
        count = len(self.eval_dataset)
        if self.options.eval_items is not None:
            count = min(count, self.options.eval_items)
        try:
            with torch.random.fork_rng(devices=devices):
                for i in range(count):
                    item = self.eval_dataset[i]
                    vol = item.vol[None].to(self.device) if item.vol is not None else None
                    audio, _ = self.net_g.infer(
                        item.units[None].to(self.device), item.f0[None].to(self.device), item.uv[None].to(self.device),
                        g=torch.tensor([[item.speaker]], device=self.device), vol=vol,
                    )
                    audio = audio.float().reshape(1, -1)
                    real_mel = spec_to_mel(item.spec.to(self.device), sr, int(data.filter_length),
                                           int(data.n_mel_channels), float(data.mel_fmin), data.mel_fmax)
                    fake_mel = mel_spectrogram(audio, sr, int(data.filter_length), hop, int(data.win_length),
                                               int(data.n_mel_channels), float(data.mel_fmin), data.mel_fmax)[0]
                    frames = min(real_mel.size(-1), fake_mel.size(-1))
                    l1_values.append(float((real_mel[:, :frames] - fake_mel[:, :frames]).abs().mean()))
                    if self.writer_eval is not None:
                        w = self.writer_eval
                        w.add_image(f"gen/mel_{i}", mel_image(fake_mel.cpu().numpy()), self.global_step, dataformats="HWC")
                        w.add_image(f"gt/mel_{i}", mel_image(real_mel.cpu().numpy()), self.global_step, dataformats="HWC")
                        w.add_audio(f"gen/audio_{i}", audio[0].clamp(-1, 1).cpu(), self.global_step, sample_rate=sr)
                        w.add_audio(f"gt/audio_{i}", item.audio[0], self.global_step, sample_rate=sr)
        finally:
            self.net_g.train()
        result = {"val/mel_l1": float(np.mean(l1_values))} if l1_values else {}
        if self.writer_eval is not None and result:
            self.writer_eval.add_scalar("loss/val/mel_l1", result["val/mel_l1"], self.global_step)
            self.writer_eval.flush()
        if result:
            logger.info("eval at step %d: mel L1 %.4f over %d clips", self.global_step, result["val/mel_l1"], count)
        return result

    def save(self, step: int) -> tuple[Path, Path]:
        """Write G_<step>.pth and D_<step>.pth (iteration = epoch) and prune old ones."""
        if not (all_finite(self.net_g) and all_finite(self.net_d)):
            raise TrainingError(f"step {step}: weights contain NaN or infinite values; refusing to write a "
                                f"broken checkpoint to {self.model_dir}")
        lr0 = self.hps.train.learning_rate
        g_path, d_path = self.model_dir / f"G_{step}.pth", self.model_dir / f"D_{step}.pth"
        save_checkpoint(self.net_g, self.optim_g, lr0, self.epoch, str(g_path))
        save_checkpoint(self.net_d, self.optim_d, lr0, self.epoch, str(d_path))
        self.last_saved_step = step
        keep = self.hps.train.keep_ckpts
        if keep > 0:
            clean_checkpoints(str(self.model_dir), keep)
        logger.info("saved %s and %s (epoch %d)", g_path.name, d_path.name, self.epoch)
        return g_path, d_path

    def log_step(self, result: StepResult, batch: Batch) -> None:
        """Scalars (losses, grad norms, lr, timing) and mel images, as the original's log_interval block."""
        lr = self.optim_g.param_groups[0]["lr"]
        text = ", ".join(f"{k} {v:.3f}" for k, v in result.losses.items())
        logger.info("epoch %d step %d: %s, lr %.3g", self.epoch, result.step, text, lr)
        if self.writer is None:
            return
        w = self.writer
        for key, value in result.losses.items():
            w.add_scalar(f"loss/{key}", value, result.step)
        w.add_scalar("learning_rate", lr, result.step)
        if result.grad_norm_g is not None:
            w.add_scalar("grad_norm_g", result.grad_norm_g, result.step)
        if result.grad_norm_d is not None:
            w.add_scalar("grad_norm_d", result.grad_norm_d, result.step)
        w.add_scalar("perf/step_seconds", result.step_seconds, result.step)
        w.add_scalar("perf/data_wait_seconds", result.data_seconds, result.step)
        if self.scaler.is_enabled():
            w.add_scalar("loss_scale", float(self.scaler.get_scale()), result.step)
        if "y_mel" in result.extras:
            w.add_image("slice/mel_org", mel_image(result.extras["y_mel"][0].float().cpu().numpy()), result.step,
                        dataformats="HWC")
            w.add_image("slice/mel_gen", mel_image(result.extras["y_hat_mel"][0].float().cpu().numpy()), result.step,
                        dataformats="HWC")
            data = self.hps.data
            length = int(batch.lengths[0])
            full = spec_to_mel(batch.spec[0, :, :length].float(), int(data.sampling_rate), int(data.filter_length),
                               int(data.n_mel_channels), float(data.mel_fmin), data.mel_fmax)
            w.add_image("all/mel", mel_image(full.cpu().numpy()), result.step, dataformats="HWC")
        w.flush()

    # ------------------------------------------------------------------ the loop

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current step, save and return from fit() (what Ctrl-C does)."""
        self._stop_reason = reason

    def _batches(self) -> Iterator[tuple[Batch, float]]:
        """This rank's batches for the current epoch, moved to the device, with the time spent waiting."""
        iterator = iter(self.train_loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DatasetError as e:  # raised in a loader worker: keep its own message, not the worker traceback
                raise DatasetError(_worker_message(e)) from None
            yield batch.to(self.device), time.perf_counter() - t0

    def fit(self) -> int:
        """Train until `train.epochs`, `max_steps` or a stop request; returns the next step number."""
        if self.train_loader is None:
            self.build_loaders()
        hps, opts = self.hps, self.options
        log_interval, eval_interval = hps.train.log_interval, hps.train.eval_interval
        epochs = hps.train.epochs
        logger.info("training on %s, %s, %d process(es), starting at epoch %d step %d",
                    self.device, self.precision.name, self.ctx.world_size, self.epoch, self.global_step)
        from tqdm import tqdm

        if opts.max_steps is not None and self.global_step >= opts.max_steps:
            logger.info("already at step %d, max_steps is %d: nothing to do", self.global_step, opts.max_steps)
            self.close()
            return self.global_step
        # One bar for the whole run: global step against the last step (max_steps, else all epochs), with ETA.
        last_step = opts.max_steps if opts.max_steps is not None else epochs * len(self.train_loader)
        bar = tqdm(total=last_step, initial=self.global_step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not (self.ctx.is_main and opts.progress))
        with self.stop_signals.catching(), contextlib.closing(bar):
            for epoch in range(self.epoch, epochs + 1):
                self.set_epoch(epoch)
                self.train_sampler.set_epoch(epoch)
                for batch, wait in self._batches():
                    want_log = self.ctx.is_main and self.global_step % log_interval == 0
                    result = self.train_step(batch, want_norms=want_log)
                    result.data_seconds = wait
                    bar.update(1)
                    if not result.skipped:
                        bar.set_postfix(epoch=epoch, mel=f"{result.losses.get('g/mel_l1', 0):.3f}",
                                        d=f"{result.losses['d/total']:.2f}")
                    if want_log and not result.skipped:
                        self.log_step(result, batch)
                    if self.ctx.is_main and self.global_step % eval_interval == 0:
                        self.evaluate()
                        self.save(self.global_step)
                    self.global_step += 1
                    if self.step_callback is not None:
                        self.step_callback(self, result)
                    if opts.max_steps is not None and self.global_step >= opts.max_steps:
                        self.request_stop(f"reached max_steps {opts.max_steps}")
                    if self.stop_signals.received is not None and self._stop_reason is None:
                        self.request_stop(self.stop_signals.received.name)
                    if self._any_rank(self._stop_reason is not None):
                        self._stop_reason = self._stop_reason or "another rank stopped"
                        break
                if self._stop_reason is not None:
                    break
        if self._stop_reason is not None:
            logger.info("stopping at step %d: %s", self.global_step, self._stop_reason)
            last = self.global_step - 1
            if opts.save_on_stop and self.ctx.is_main and last >= 0 and self.last_saved_step != last:
                self.save(last)
        self.close()
        saved = f"saved step {self.last_saved_step} in {self.model_dir}" if self.last_saved_step is not None \
            else "nothing saved yet"
        self.stop_signals.raise_if_stopped(f"training at step {self.global_step}", saved)
        return self.global_step

    def close(self) -> None:
        for w in (self.writer, self.writer_eval):
            if w is not None:
                w.close()


def run_training(config_path: str | os.PathLike, model_name_or_dir: str | os.PathLike,
                 options: TrainOptions | None = None, logs_root: str | os.PathLike = "logs",
                 discriminator_factory: Callable[[HParams], nn.Module] | None = None) -> int:
    """train.py's body: set up (DDP when under torchrun), copy the config, train. Returns the next step."""
    options = options or TrainOptions()
    ctx = setup_distributed(options.device)
    model_dir = Path(model_name_or_dir)
    if len(model_dir.parts) == 1 and not model_dir.is_absolute():
        model_dir = Path(logs_root) / model_dir  # `-m 44k` means logs/44k, as the original
    handlers = setup_logging(model_dir, ctx.is_main, ctx.rank)
    try:
        hps = load_config(config_path)
        if ctx.is_main:
            copy_config(config_path, model_dir)
        trainer = Trainer(hps, model_dir, ctx, options, discriminator_factory=discriminator_factory)
        return trainer.fit()
    finally:
        cleanup_distributed()
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
