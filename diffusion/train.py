"""The diffusion training loop behind train_diff.py.

Output folder `env.expdir` (default logs/44k/diffusion): config.yaml (the full config), model_<step>.pt
(`{'global_step', 'model'[, 'optimizer']}`), log_info.txt and tensorboard events under logs/.

As the original:
- resume from the largest N among model_<N>.pt anywhere under expdir (a pretrained model_0.pt
  included), loading with strict=False (missing/mismatched tensors keep their initialisation, logged),
  optimizer state if present; the step continues from the file's global_step;
- AdamW with lr = train.lr * gamma^max((step - 2) // decay_step, 0), StepLR per step;
- every interval_val steps: save model_<step>.pt, delete model_<step - interval_val>.pt unless that
  step is a multiple of interval_force_save (model_0.pt is never deleted), then validate.
Unlike the original, a NaN/Inf loss skips the step (the clips are named in the log) instead of
stopping; `max_nan_steps` in a row stop with an error and nothing is saved for them. Ctrl-C saves
model_<step>.pt and stops. Validation loss uses fixed noise, so successive values are comparable.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusion.data import DiffusionDataset, collate
from diffusion.unit2mel import Unit2Mel
from modules.atomic_write import save_torch
from modules.checkpoint import compare_state, safe_load
from modules.config import HParams, load_diffusion_config, save_diffusion_config
from modules.errors import TrainingError
from modules.stop_signals import StopSignals

logger = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^model_(\d+)\.pt$")
VALIDATION_SEED = 1234


@dataclass
class DiffTrainOptions:
    device: str | None = None  # None: the config's `device` (cuda -> cpu when absent) and env.gpu_id
    max_steps: int | None = None  # stop (saving) at this global step
    max_nan_steps: int = 10
    progress: bool = True
    val_audio: bool = True  # vocode validation clips for tensorboard (needs the vocoder folder)


def find_latest(expdir: Path) -> tuple[Path, int] | None:
    best: tuple[Path, int] | None = None
    for path in expdir.rglob("*.pt"):
        m = _MODEL_NAME.match(path.name)
        if m and (best is None or int(m.group(1)) > best[1]):
            best = (path, int(m.group(1)))
    return best


def _device(args: HParams, override: str | None) -> torch.device:
    name = override or str(args.get("device", "cuda"))
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            logger.warning("device '%s' requested but CUDA is not available: training on the CPU", name)
            return torch.device("cpu")
        if name == "cuda":
            name = f"cuda:{int(args.env.get('gpu_id', 0))}"
    return torch.device(name)


class DiffusionTrainer:
    def __init__(self, args: HParams, options: DiffTrainOptions | None = None) -> None:
        self.args = args
        self.options = options or DiffTrainOptions()
        self.device = _device(args, self.options.device)
        self.expdir = Path(str(args.env.expdir))
        self.model = Unit2Mel.from_config(args).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters())
        self.global_step = 0
        self.nan_streak = 0
        self._stop: str | None = None
        self.stop_signals = StopSignals()
        amp = str(args.train.get("amp_dtype", "fp32"))
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        if self.amp_dtype == torch.float16 and self.device.type == "cpu":
            logger.warning("train.amp_dtype fp16 is not supported on the CPU: training in fp32")
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.writer = None
        self.train_set: DiffusionDataset | None = None
        self.val_set: DiffusionDataset | None = None
        self._vocoder: Any = None

    # ----- setup -------------------------------------------------------------------------------------

    def resume(self) -> int:
        latest = find_latest(self.expdir)
        if latest is not None:
            path, _ = latest
            ckpt = safe_load(path, map_location=self.device)
            state = ckpt.get("model", {})
            report = compare_state(self.model, state)
            own = self.model.state_dict()
            usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
            self.model.load_state_dict(usable, strict=False)
            if report.reinitialized:
                logger.warning("%s: %d tensor(s) missing or of another shape keep their initialisation, e.g. %s",
                               path, len(report.reinitialized), report.reinitialized[0])
            self.global_step = int(ckpt.get("global_step", 0))
            if ckpt.get("optimizer") is not None:
                try:
                    self.optimizer.load_state_dict(ckpt["optimizer"])
                except (ValueError, KeyError) as e:
                    logger.warning("%s: optimizer state not used (%s)", path, e)
            logger.info("resumed from %s at step %d", path, self.global_step)
        train = self.args.train
        lr = float(train.lr) * float(train.gamma) ** max((self.global_step - 2) // int(train.decay_step), 0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["initial_lr"] = float(train.lr)
            group["weight_decay"] = float(train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=int(train.decay_step),
                                                         gamma=float(train.gamma),
                                                         last_epoch=max(self.global_step - 2, -1))
        return self.global_step

    def build_data(self) -> None:
        args = self.args
        cache = bool(args.train.get("cache_all_data", True))
        self.train_set = DiffusionDataset(args.data.training_files, args, whole=False, cache=cache)
        self.val_set = DiffusionDataset(args.data.validation_files, args, whole=True, cache=cache)
        if len(self.train_set) < int(args.train.batch_size):
            logger.warning("only %d training clips for batch size %d", len(self.train_set), args.train.batch_size)
        workers = 0 if cache else int(args.train.get("num_workers", 0))
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=int(args.train.batch_size), shuffle=True, drop_last=False,
            num_workers=workers, collate_fn=collate, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    # ----- steps -------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        b = self._to(batch)
        with self._autocast():
            return self.model(b["units"], b["f0"], b["volume"], b["spk_id"], b["aug_shift"], gt_spec=b["mel"],
                              infer=False)

    def train_step(self, batch: dict[str, Any]) -> float | None:
        """One optimisation step; None when the loss was NaN/Inf (step skipped)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            self.nan_streak += 1
            logger.warning("step %d: loss is %s, step skipped (clips: %s)", self.global_step, value,
                           ", ".join(batch["name"]))
            if self.nan_streak >= self.options.max_nan_steps:
                raise TrainingError(f"{self.nan_streak} consecutive steps had NaN/Inf losses (last clips: "
                                    f"{', '.join(batch['name'])}); check those clips' feature files or lower train.lr")
            return None
        self.nan_streak = 0
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value

    @torch.no_grad()
    def validation_loss(self, draws: int | None = None) -> float:
        """Mean noise-prediction loss over the validation clips, with fixed steps and noise."""
        assert self.val_set is not None
        self.model.eval()
        draws = draws or int(self.args.train.batch_size)
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(VALIDATION_SEED)
            for i in range(len(self.val_set)):
                b = self._to(collate([self.val_set[i]]))
                for _ in range(draws):
                    total += float(self.model(b["units"], b["f0"], b["volume"], b["spk_id"], gt_spec=b["mel"],
                                              infer=False))
                    count += 1
        return total / max(count, 1)

    def validate(self) -> float:
        loss = self.validation_loss()
        logger.info("step %d: validation loss %.5f", self.global_step, loss)
        w = self._tb()
        if w is not None:
            w.add_scalar("validation/loss", loss, self.global_step)
            self._log_examples(w)
        self._log_line(f"--- validation --- step {self.global_step}: loss {loss:.6f}")
        return loss

    @torch.no_grad()
    def _log_examples(self, writer: Any) -> None:
        from modules.training import mel_image

        vocoder = self._get_vocoder()
        model, args = self.model, self.args
        for i in range(min(len(self.val_set), 2)):
            b = self._to(collate([self.val_set[i]]))
            shallow = model.k_step_max != model.timesteps
            torch.manual_seed(VALIDATION_SEED)
            mel = model(b["units"], b["f0"], b["volume"], b["spk_id"], gt_spec=b["mel"] if shallow else None,
                        infer=True, infer_speedup=int(args.infer.speedup), method=str(args.infer.method),
                        k_step=model.k_step_max)
            name = b["name"][0]
            both = torch.cat([b["mel"][0], mel[0]], dim=0).transpose(0, 1).float().cpu().numpy()
            writer.add_image(f"spec/{name}", mel_image(both), self.global_step, dataformats="HWC")
            if vocoder is not None:
                from modules.diffusion_infer import vocode

                audio = vocode(vocoder, mel.float(), b["f0"][..., 0])
                writer.add_audio(f"{name}/pred", audio[0].cpu(), self.global_step,
                                 sample_rate=int(args.data.sampling_rate))

    def _get_vocoder(self) -> Any:
        if not self.options.val_audio:
            return None
        if self._vocoder is None:
            from modules.diffusion_infer import load_vocoder
            from modules.errors import SvcError

            try:
                self._vocoder = load_vocoder(Path(str(self.args.vocoder.ckpt)).parent, self.device)
            except SvcError as e:
                logger.warning("validation audio off: %s", e)
                self.options.val_audio = False
                return None
        return self._vocoder

    # ----- files -------------------------------------------------------------------------------------

    def _tb(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.expdir / "logs"))
        return self.writer

    def _log_line(self, text: str) -> None:
        with open(self.expdir / "log_info.txt", "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def save(self, step: int | None = None) -> Path:
        step = self.global_step if step is None else step
        ckpt: dict[str, Any] = {"global_step": step, "model": self.model.state_dict()}
        if self.args.train.get("save_opt", False):
            ckpt["optimizer"] = self.optimizer.state_dict()
        path = self.expdir / f"model_{step}.pt"
        save_torch(ckpt, path)
        logger.info("saved %s", path)
        return path

    def prune(self, step: int) -> None:
        old = step - int(self.args.train.interval_val)
        if old > 0 and old % int(self.args.train.interval_force_save) != 0:
            path = self.expdir / f"model_{old}.pt"
            if path.exists():
                path.unlink()

    # ----- loop --------------------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop = reason

    def fit(self) -> int:
        """Train until train.epochs, max_steps or Ctrl-C; returns the last global step."""
        from tqdm import tqdm

        args, opts = self.args, self.options
        if self.train_set is None:
            self.build_data()
        interval_val, interval_log = int(args.train.interval_val), int(args.train.interval_log)
        logger.info("training the diffusion model on %s (%s) from step %d", self.device,
                    args.train.get("amp_dtype", "fp32"), self.global_step)
        bar = tqdm(total=opts.max_steps, initial=self.global_step, unit="step", disable=not opts.progress,
                   desc="diffusion")
        last_saved, start_step = None, self.global_step
        with self.stop_signals.catching():
            for _epoch in range(int(args.train.epochs)):
                for batch in self.loader:
                    if opts.max_steps is not None and self.global_step >= opts.max_steps:
                        self._stop = self._stop or "max_steps"
                    if self.stop_signals.received is not None:
                        self._stop = self._stop or self.stop_signals.received.name
                    if self._stop is not None:
                        break
                    self.global_step += 1
                    t0 = time.perf_counter()
                    value = self.train_step(batch)
                    bar.update(1)
                    if value is not None and self.global_step % interval_log == 0:
                        lr = self.optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                        w = self._tb()
                        w.add_scalar("train/loss", value, self.global_step)
                        w.add_scalar("train/lr", lr, self.global_step)
                        self._log_line(f"step {self.global_step}: loss {value:.6f} lr {lr:.3e} "
                                       f"({time.perf_counter() - t0:.3f} s)")
                    if self.global_step % interval_val == 0:
                        self.save()
                        last_saved = self.global_step
                        self.prune(self.global_step)
                        self.validate()
                if self._stop is not None:
                    break
        bar.close()
        if self._stop is not None and last_saved != self.global_step and self.global_step > start_step:
            self.save()  # Ctrl-C or max_steps: keep the progress
        if self.writer is not None:
            self.writer.flush()
        self.stop_signals.raise_if_stopped(f"diffusion training at step {self.global_step}",
                                           f"model_{self.global_step}.pt in {self.expdir}")
        return self.global_step


def run_training(config_path: str | os.PathLike, options: DiffTrainOptions | None = None) -> int:
    args = load_diffusion_config(config_path)
    trainer = DiffusionTrainer(args, options)
    trainer.expdir.mkdir(parents=True, exist_ok=True)
    save_diffusion_config(args, trainer.expdir / "config.yaml")
    trainer.resume()
    trainer.build_data()
    return trainer.fit()
