"""Unit2Mel: units, F0, volume (and speaker) -> 128-bin log mel by Gaussian diffusion.

State-dict layout equals the 4.1 `model_*.pt['model']` key for key: `unit_embed`, `f0_embed`,
`volume_embed`, optional `spk_embed` (n_spk > 1) and `aug_shift_embed` (use_pitch_aug), then
`decoder.*`: the schedule buffers (betas ... posterior_mean_coef2, each [timesteps]), `spec_min` /
`spec_max` ([1, 1, 1], -12 and 2) and `denoise_fn.*` (the WaveNet).

Inference modes:
- shallow diffusion (`gt_spec` given): start from the so-vits mel noised to step k-1 and denoise
  k steps; k must not exceed k_step_max;
- only diffusion (`gt_spec` None): start from pure noise at k_step_max (needs k_step_max equal to
  timesteps, i.e. a model trained on all steps).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion import samplers
from diffusion.wavenet import WaveNet
from modules.errors import CheckpointError, InferenceError

logger = logging.getLogger(__name__)

SPEC_MIN, SPEC_MAX = -12.0, 2.0
MAX_BETA = 0.02

_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2")


def _schedule(timesteps: int, max_beta: float = MAX_BETA) -> dict[str, np.ndarray]:
    """The linear beta schedule 1e-4 .. max_beta and its derived constants, in float64."""
    betas = np.linspace(1e-4, max_beta, timesteps)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


class GaussianDiffusion(nn.Module):
    def __init__(self, denoise_fn: WaveNet, out_dims: int = 128, timesteps: int = 1000, k_step: int = 1000,
                 max_beta: float = MAX_BETA, spec_min: float = SPEC_MIN, spec_max: float = SPEC_MAX) -> None:
        super().__init__()
        self.denoise_fn = denoise_fn
        self.out_dims = out_dims
        self.num_timesteps = int(timesteps)
        self.k_step = k_step if 0 < k_step < timesteps else timesteps
        for name, value in _schedule(timesteps, max_beta).items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))
        self.register_buffer("spec_min", torch.full((1, 1, 1), float(spec_min)))
        self.register_buffer("spec_max", torch.full((1, 1, 1), float(spec_max)))
        self.window = 0  # frames per denoiser window at inference (0 = whole mel at once)

    # ----- normalisation --------------------------------------------------------------------------------

    def norm_spec(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.spec_min) / (self.spec_max - self.spec_min) * 2 - 1

    def denorm_spec(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2 * (self.spec_max - self.spec_min) + self.spec_min

    # ----- training -------------------------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn_like(x_start)
        nd = x_start.dim()
        return (samplers._at(self.sqrt_alphas_cumprod, t, nd) * x_start
                + samplers._at(self.sqrt_one_minus_alphas_cumprod, t, nd) * noise)

    def loss(self, cond: torch.Tensor, gt_spec: torch.Tensor) -> torch.Tensor:
        """L2 noise-prediction loss at t ~ U[0, k_step); cond [B, H, T], gt_spec [B, T, M]."""
        x_start = self.norm_spec(gt_spec).transpose(1, 2)[:, None]
        t = torch.randint(0, self.k_step, (x_start.shape[0],), device=x_start.device).long()
        noise = torch.randn_like(x_start)
        predicted = self.denoise_fn(self.q_sample(x_start, t, noise), t, cond)
        return F.mse_loss(noise, predicted)

    # ----- inference ------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, gt_spec: torch.Tensor | None = None, k_step: int | None = None,
               method: str | None = "dpm-solver++", speedup: int = 10,
               progress: Callable[[], None] | None = None) -> torch.Tensor:
        """Mel [B, T, M] from cond [B, H, T]; shallow from gt_spec [B, T, M] when given."""
        b, n = cond.shape[0], cond.shape[2]
        if gt_spec is None:
            k = self.k_step
            x = torch.randn((b, 1, self.out_dims, n), device=cond.device)
        else:
            k = int(k_step if k_step is not None else self.k_step)
            if k <= 0:
                return gt_spec
            start = self.norm_spec(gt_spec).transpose(1, 2)[:, None]
            x = self.q_sample(start, torch.tensor([k - 1], device=cond.device).long())
        window = self.window

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoise_fn.forward_windowed(x_t, t, cond, window)

        if method is not None and speedup > 1:
            if method in ("dpm-solver", "dpm-solver++"):
                x = samplers.dpm_solver(x, denoise, self.betas[:k], k // speedup, plus=method == "dpm-solver++",
                                        progress=progress)
            elif method == "pndm":
                x = samplers.pndm(x, denoise, self.alphas_cumprod, k, speedup, progress)
            elif method == "ddim":
                x = samplers.ddim(x, denoise, self.alphas_cumprod, k, speedup, progress)
            elif method == "unipc":
                x = samplers.unipc(x, denoise, self.betas[:k], k // speedup, progress=progress)
            else:
                raise InferenceError(f"unknown diffusion method '{method}'; use one of {', '.join(samplers.METHODS)}")
        else:
            x = samplers.ancestral(x, denoise, dict(self.named_buffers()), k, progress)
        return self.denorm_spec(x.squeeze(1).transpose(1, 2))


class Unit2Mel(nn.Module):
    def __init__(self, input_channel: int, n_spk: int, use_pitch_aug: bool = False, out_dims: int = 128,
                 n_layers: int = 20, n_chans: int = 384, n_hidden: int = 256, timesteps: int = 1000,
                 k_step_max: int = 1000) -> None:
        super().__init__()
        self.unit_embed = nn.Linear(input_channel, n_hidden)
        self.f0_embed = nn.Linear(1, n_hidden)
        self.volume_embed = nn.Linear(1, n_hidden)
        self.n_spk = n_spk
        if n_spk is not None and n_spk > 1:
            self.spk_embed = nn.Embedding(n_spk, n_hidden)
        self.aug_shift_embed = nn.Linear(1, n_hidden, bias=False) if use_pitch_aug else None
        self.timesteps = int(timesteps) if timesteps else 1000
        # 0, or anything not below timesteps, means the model is trained on (and can start from) every step
        self.k_step_max = int(k_step_max) if k_step_max and 0 < k_step_max < self.timesteps else self.timesteps
        self.n_hidden = n_hidden
        self.decoder = GaussianDiffusion(WaveNet(out_dims, n_layers, n_chans, n_hidden), out_dims=out_dims,
                                         timesteps=self.timesteps, k_step=self.k_step_max)

    @classmethod
    def from_config(cls, args: Any, out_dims: int = 128) -> "Unit2Mel":
        return cls(int(args.data.encoder_out_channels), int(args.model.n_spk), bool(args.model.use_pitch_aug),
                   out_dims, int(args.model.n_layers), int(args.model.n_chans), int(args.model.n_hidden),
                   int(args.model.timesteps), int(args.model.k_step_max))

    def condition(self, units: torch.Tensor, f0: torch.Tensor, volume: torch.Tensor,
                  spk_id: torch.Tensor | None = None, aug_shift: torch.Tensor | None = None,
                  spk_mix: torch.Tensor | None = None) -> torch.Tensor:
        """cond [B, H, T] from units [B, T, D], f0 [B, T, 1] (Hz), volume [B, T, 1], spk_id [B, 1] (0-based).

        `spk_mix` [B, T, n_spk], per-frame weights over the speaker ids, replaces spk_id (speaker mixing).
        """
        x = self.unit_embed(units) + self.f0_embed((1 + f0 / 700).log()) + self.volume_embed(volume)
        if self.n_spk is not None and self.n_spk > 1:
            if spk_mix is not None:
                x = x + torch.matmul(spk_mix, self.spk_embed.weight)
            else:
                if spk_id is None:
                    spk_id = torch.zeros((units.shape[0], 1), dtype=torch.long, device=units.device)
                x = x + self.spk_embed(spk_id)
        if self.aug_shift_embed is not None and aug_shift is not None:
            x = x + self.aug_shift_embed(aug_shift / 5)
        return x.transpose(1, 2)

    def forward(self, units: torch.Tensor, f0: torch.Tensor, volume: torch.Tensor,
                spk_id: torch.Tensor | None = None, aug_shift: torch.Tensor | None = None,
                gt_spec: torch.Tensor | None = None, infer: bool = True, infer_speedup: int = 10,
                method: str | None = "dpm-solver++", k_step: int = 300,
                progress: Callable[[], None] | None = None) -> torch.Tensor:
        """Training (`infer=False`): the loss. Inference: mel [B, T, M]."""
        if not infer:
            return self.decoder.loss(self.condition(units, f0, volume, spk_id, aug_shift), gt_spec)
        self.check_k_step(k_step, shallow=gt_spec is not None)
        cond = self.condition(units, f0, volume, spk_id, aug_shift)
        return self.decoder.sample(cond, gt_spec, k_step, method, infer_speedup, progress)

    def check_k_step(self, k_step: int, shallow: bool) -> None:
        if shallow and k_step > self.k_step_max:
            raise InferenceError(f"k_step {k_step} is larger than this diffusion model's k_step_max "
                                 f"{self.k_step_max}; use -ks {self.k_step_max} or less")
        if not shallow and self.k_step_max != self.timesteps:
            raise InferenceError(f"this diffusion model was trained with k_step_max {self.k_step_max} < timesteps "
                                 f"{self.timesteps}: it can only refine (shallow diffusion), not run -od alone")


def load_unit2mel(model_path: str | os.PathLike, args: Any, out_dims: int = 128,
                  device: str | torch.device = "cpu") -> Unit2Mel:
    """Build from the diffusion config and load `model_*.pt` strictly: every key and shape must match."""
    from modules.checkpoint import safe_load

    path = Path(model_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: diffusion model not found; pass a model_*.pt with -dm")
    ckpt = safe_load(path)
    state = ckpt.get("model") if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a diffusion checkpoint (no 'model' state dict)")
    model = Unit2Mel.from_config(args, out_dims)
    check_state(model, state, path)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.to(device).eval()


def check_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    hint = "pass the config.yaml the model was trained with (-dc)"
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{path}: no tensor '{key}' that the diffusion config builds; {hint}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: '{key}' is {list(state[key].shape)} in the file but "
                                  f"{list(value.shape)} from the config; {hint}")
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"{path}: tensors the config does not build (e.g. '{extra[0]}'); {hint}")
