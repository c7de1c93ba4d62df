"""Samplers for the mel diffusion: ddim, pndm (PLMS), dpm-solver, dpm-solver++, unipc (bh2) and ancestral.

All of them follow the 4.1 inference choices, so equal weights, inputs and seed give equal mels:

- `ddim` and `pndm` walk the integer steps `range(0, k, speedup)` downwards and feed those integers
  to the denoiser; the previous step is `max(t - speedup, 0)`. pndm starts with one Heun-like step
  (two denoiser calls), then uses Adams-Bashforth combinations of up to four earlier predictions.
- `dpm-solver`, `dpm-solver++` and `unipc` treat the schedule restricted to its first k betas as a
  continuous VP process on t in [1/k, 1] (log alpha linearly interpolated between the discrete
  steps, which sit at t = (n+1)/k), take `k // speedup` uniform time steps from 1 to 1/k, and feed
  the denoiser the time `(t - 1/k) * k`, i.e. the discrete step index (fractional in between).
  dpm-solver(++) is multistep order 2, first step order 1, and order 1 again on the last step when
  there are fewer than 10 steps. unipc is the B(h) = e^h - 1 (bh2) predictor-corrector on data
  predictions, order 2, order 1 on the last step, no corrector after the last step.
- ancestral (speedup <= 1): every step, mean from the clamped x0 prediction plus posterior noise.

`denoise(x, t)` is any callable returning the predicted noise for x [B, 1, M, T] at steps t [B].
"""
from __future__ import annotations

from typing import Any, Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[], None] | None

METHODS = ("dpm-solver++", "dpm-solver", "pndm", "ddim", "unipc")


def _at(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to broadcast over a [B, ...] tensor of `ndim` dimensions."""
    return values.gather(-1, t).reshape(t.shape[0], *([1] * (ndim - 1)))


def _tick(progress: Progress) -> None:
    if progress is not None:
        progress()


# ----------------------------------------------------------------------------------- discrete-step samplers


def ddim(x: torch.Tensor, denoise: Denoiser, alphas_cumprod: torch.Tensor, k: int, speedup: int,
         progress: Progress = None) -> torch.Tensor:
    b = x.shape[0]
    for i in reversed(range(0, k, speedup)):
        t = torch.full((b,), i, device=x.device, dtype=torch.long)
        eps = denoise(x, t)
        _tick(progress)
        a_t = _at(alphas_cumprod, t, x.dim())
        a_prev = _at(alphas_cumprod, torch.clamp(t - speedup, min=0), x.dim())
        x = a_prev.sqrt() * (x / a_t.sqrt() + (((1 - a_prev) / a_prev).sqrt() - ((1 - a_t) / a_t).sqrt()) * eps)
    return x


def plms_step(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """One PLMS update: x at the integer steps t_prev [B] from x at steps t [B] and the noise estimate eps."""
    a_t = _at(alphas_cumprod, t, x.dim())
    a_prev = _at(alphas_cumprod, t_prev, x.dim())
    sq_t, sq_prev = a_t.sqrt(), a_prev.sqrt()
    delta = (a_prev - a_t) * (
        (1 / (sq_t * (sq_t + sq_prev))) * x
        - 1 / (sq_t * (((1 - a_prev) * a_t).sqrt() + ((1 - a_t) * a_prev).sqrt())) * eps
    )
    return x + delta


def plms(x: Any, k: int, speedup: int, denoise: Callable[[Any, int], Any], step: Callable[[Any, Any, int, int], Any],
         progress: Progress = None) -> Any:
    """The PLMS schedule over the steps `range(0, k, speedup)` downwards, for torch tensors or numpy arrays.

    `denoise(x, t)` is the noise estimate at integer step t, `step(x, eps, t, t_prev)` the update to
    t_prev = max(t - speedup, 0). The first step averages the estimates at t and at a trial update to
    t_prev (two denoiser calls); later steps combine the current and up to three earlier estimates
    with the Adams-Bashforth weights (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24.
    """
    history: list[Any] = []
    for t in reversed(range(0, k, speedup)):
        t_prev = max(t - speedup, 0)
        eps = denoise(x, t)
        if not history:
            eps_next = denoise(step(x, eps, t, t_prev), t_prev)
            _tick(progress)  # the first step costs two denoiser calls
            eps_prime = (eps + eps_next) / 2
        elif len(history) == 1:
            eps_prime = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            eps_prime = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        _tick(progress)
        x = step(x, eps_prime, t, t_prev)
        history = (history + [eps])[-3:]
    return x


def pndm(x: torch.Tensor, denoise: Denoiser, alphas_cumprod: torch.Tensor, k: int, speedup: int,
         progress: Progress = None) -> torch.Tensor:
    def steps(i: int) -> torch.Tensor:
        return torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)

    return plms(x, k, speedup, lambda x_t, t: denoise(x_t, steps(t)),
                lambda x_t, eps, t, t_prev: plms_step(x_t, eps, steps(t), steps(t_prev), alphas_cumprod), progress)


def ancestral(x: torch.Tensor, denoise: Denoiser, buffers: dict[str, torch.Tensor], k: int,
              progress: Progress = None) -> torch.Tensor:
    """Full DDPM sampling over steps k-1 .. 0, drawing fresh noise at every step but the last."""
    b = x.shape[0]
    for i in reversed(range(0, k)):
        t = torch.full((b,), i, device=x.device, dtype=torch.long)
        eps = denoise(x, t)
        _tick(progress)
        nd = x.dim()
        x0 = (_at(buffers["sqrt_recip_alphas_cumprod"], t, nd) * x
              - _at(buffers["sqrt_recipm1_alphas_cumprod"], t, nd) * eps).clamp_(-1.0, 1.0)
        mean = _at(buffers["posterior_mean_coef1"], t, nd) * x0 + _at(buffers["posterior_mean_coef2"], t, nd) * x
        log_var = _at(buffers["posterior_log_variance_clipped"], t, nd)
        noise = torch.randn(x.shape, device=x.device)
        nonzero = (1 - (t == 0).float()).reshape(b, *([1] * (nd - 1)))
        x = mean + nonzero * (0.5 * log_var).exp() * noise
    return x


# ----------------------------------------------------------------------------------- continuous-time solvers


class DiscreteVP:
    """The VP process of the first N betas on t in [1/N, 1], log alpha interpolated linearly."""

    def __init__(self, betas: torch.Tensor, clip_lambda: float = -5.1) -> None:
        log_alphas = 0.5 * torch.log(1 - betas.float()).cumsum(dim=0)
        # drop the noisiest steps whose log-SNR falls below the clip (never for the linear 4.1 schedule)
        lambdas = log_alphas - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))
        drop = int(torch.searchsorted(torch.flip(lambdas, [0]), torch.tensor(clip_lambda, device=lambdas.device)))
        if drop > 0:
            log_alphas = log_alphas[:-drop]
        self.log_alphas = log_alphas
        self.total_n = log_alphas.shape[0]
        self.times = torch.linspace(0.0, 1.0, self.total_n + 1, device=betas.device)[1:]

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        xp, yp = self.times, self.log_alphas
        t = t.reshape(-1)
        if xp.numel() == 1:
            return yp.expand(t.shape[0]).clone()
        idx = torch.clamp(torch.searchsorted(xp, t) - 1, 0, xp.numel() - 2)
        x0, x1, y0, y1 = xp[idx], xp[idx + 1], yp[idx], yp[idx + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's step input for continuous time t: the discrete index (t - 1/N) * N."""
        return (t - 1.0 / self.total_n) * self.total_n

    def time_steps(self, steps: int, device: torch.device) -> torch.Tensor:
        return torch.linspace(1.0, 1.0 / self.total_n, steps + 1).to(device)


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


class _Wrapped:
    """Noise or data prediction of the denoiser at continuous time t (a 1-element tensor)."""

    def __init__(self, denoise: Denoiser, vp: DiscreteVP, predict_x0: bool, progress: Progress) -> None:
        self.denoise, self.vp, self.predict_x0, self.progress = denoise, vp, predict_x0, progress

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_b = t.reshape(-1).expand(x.shape[0])
        eps = self.denoise(x, self.vp.model_time(t_b))
        _tick(self.progress)
        if not self.predict_x0:
            return eps
        alpha, sigma = self.vp.alpha(t_b), self.vp.sigma(t_b)
        return (x - _bcast(sigma, x.dim()) * eps) / _bcast(alpha, x.dim())


def _dpm_update(x: torch.Tensor, vp: DiscreteVP, models: list[torch.Tensor], times: list[torch.Tensor],
                t: torch.Tensor, order: int, plus: bool) -> torch.Tensor:
    """One multistep DPM-Solver(++) update of order 1 or 2 from times[-1] to t."""
    s = times[-1]
    lam_s, lam_t = vp.lam(s), vp.lam(t)
    h = lam_t - lam_s
    log_a_s, log_a_t = vp.log_alpha(s), vp.log_alpha(t)
    sig_s, sig_t = vp.sigma(s), vp.sigma(t)
    a_t = torch.exp(log_a_t)
    m0 = models[-1]
    if order == 1:
        if plus:
            phi = torch.expm1(-h)
            return sig_t / sig_s * x - a_t * phi * m0
        phi = torch.expm1(h)
        return torch.exp(log_a_t - log_a_s) * x - (sig_t * phi) * m0
    m1 = models[-2]
    h0 = lam_s - vp.lam(times[-2])
    r0 = h0 / h
    d1 = (1.0 / r0) * (m0 - m1)
    if plus:
        phi = torch.expm1(-h)
        return (sig_t / sig_s) * x - (a_t * phi) * m0 - 0.5 * (a_t * phi) * d1
    phi = torch.expm1(h)
    return torch.exp(log_a_t - log_a_s) * x - (sig_t * phi) * m0 - 0.5 * (sig_t * phi) * d1


def dpm_solver(x: torch.Tensor, denoise: Denoiser, betas: torch.Tensor, steps: int, plus: bool = True,
               order: int = 2, progress: Progress = None) -> torch.Tensor:
    vp = DiscreteVP(betas)
    model = _Wrapped(denoise, vp, predict_x0=plus, progress=progress)
    if steps < order:
        raise ValueError(f"dpm-solver needs at least {order} steps, got {steps} (lower the speedup)")
    ts = vp.time_steps(steps, x.device)
    times, models = [ts[0]], [model(x, ts[0])]
    for step in range(1, order):
        x = _dpm_update(x, vp, models, times, ts[step], step, plus)
        times.append(ts[step])
        models.append(model(x, ts[step]))
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if steps < 10 else order
        x = _dpm_update(x, vp, models, times, ts[step], step_order, plus)
        times = times[1:] + [ts[step]]
        if step < steps:
            models = models[1:] + [model(x, ts[step])]
    return x


def _unipc_update(x: torch.Tensor, vp: DiscreteVP, model: _Wrapped, models: list[torch.Tensor],
                  times: list[torch.Tensor], t: torch.Tensor, order: int,
                  use_corrector: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UniPC-bh2 on data predictions: predictor (order `order`), then optionally the corrector."""
    t = t.reshape(-1)
    s = times[-1]
    lam_s, lam_t = vp.lam(s), vp.lam(t)
    sig_s, sig_t = vp.sigma(s), vp.sigma(t)
    a_t = torch.exp(vp.log_alpha(t))
    h = lam_t - lam_s
    m0 = models[-1]
    rks: list[torch.Tensor] = []
    d1s: list[torch.Tensor] = []
    for i in range(1, order):
        rk = (vp.lam(times[-(i + 1)]) - lam_s) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - m0) / rk)
    rk_vec = torch.stack([r.reshape(()) for r in rks] + [torch.ones((), device=x.device)])
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = torch.expm1(hh)
    rows, rhs = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rk_vec, i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat = torch.stack(rows)
    b_vec = torch.cat(rhs)
    x_base = sig_t / sig_s * x - a_t * h_phi_1 * m0
    if d1s:
        d1_stack = torch.stack(d1s, dim=1)  # [B, K, ...]
        rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
        pred = torch.einsum("k,bk...->b...", rhos_p, d1_stack)
        x_t = x_base - a_t * b_h * pred
    else:
        d1_stack = None
        x_t = x_base
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r_mat, b_vec)
    model_t = model(x_t, t)
    corr = torch.einsum("k,bk...->b...", rhos_c[:-1], d1_stack) if d1_stack is not None else 0
    x_t = x_base - a_t * b_h * (corr + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


def unipc(x: torch.Tensor, denoise: Denoiser, betas: torch.Tensor, steps: int, order: int = 2,
          progress: Progress = None) -> torch.Tensor:
    vp = DiscreteVP(betas)
    model = _Wrapped(denoise, vp, predict_x0=True, progress=progress)
    if steps < order:
        raise ValueError(f"unipc needs at least {order} steps, got {steps} (lower the speedup)")
    ts = vp.time_steps(steps, x.device)
    times, models = [ts[0].reshape(-1)], [model(x, ts[0])]
    for step in range(1, order):
        x, m = _unipc_update(x, vp, model, models, times, ts[step], step, use_corrector=True)
        times.append(ts[step].reshape(-1))
        models.append(m if m is not None else model(x, ts[step]))
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step)
        x, m = _unipc_update(x, vp, model, models, times, ts[step], step_order, use_corrector=step < steps)
        times = times[1:] + [ts[step].reshape(-1)]
        if step < steps:
            models = models[1:] + [m if m is not None else model(x, ts[step])]
    return x


def denoiser_calls(method: str | None, k: int, speedup: int) -> int:
    """How many denoiser evaluations a run makes (for progress bars and cost estimates)."""
    if method is None or speedup <= 1:
        return k
    if method in ("ddim", "pndm"):
        n = len(range(0, k, speedup))
        return n + 1 if method == "pndm" and n > 0 else n
    return k // speedup
