"""ONNX export of the mel diffusion (Unit2Mel) for MoeSS / MoeVoiceStudio, and a host-side runner.

The export writes four graphs, `<name>_<part>.onnx`, with the interface of so-vits-svc 4.1's diffusion
exporter (opset 16, TorchScript exporter):

    encoder  hubert [1, T_units, D] f32, mel2ph [1, T] i64 (1-based unit index per frame, 0 = a zero
             unit), f0 [1, T] f32 (Hz), volume [1, T] f32, spk_mix [T, n_spk] f32 (multi-speaker
             models only: per-frame weights over the speaker ids 0 .. n_spk-1)
             -> mel_pred [1, H, T], the denoiser's condition
    denoise  noise [1, 1, M, T] f32, time [1] i64, condition [1, H, T] f32 -> noise_pred [1, 1, M, T]
    pred     noise, noise_pred, time [1] i64, time_prev [1] i64 -> noise_pred_o: one PLMS update, i.e.
             x at step time_prev from x at step time and the combined noise estimate
    after    x [1, 1, M, T] f32 -> mel_out [1, M, T], the denormalised natural-log mel

D is the model's unit width (data.encoder_out_channels), H its condition width (model.n_hidden) and
M the mel bins (128). The dynamic axes are hubert 1, mel2ph 1, f0 1, volume 1, spk_mix 0, noise 3,
condition 2, noise_pred 3 and x 3. A single-speaker model's encoder has no spk_mix input: the
TorchScript exporter drops inputs a graph does not use, so an empty spk_mix dummy disappears as well.

The host runs the sampler (`OnnxDiffusion`): encoder once, then PLMS over the steps
range(0, k, speedup) downwards with denoise and pred (diffusion.samplers.plms), then after. The
start is `noise`, standard normal in the normalised mel space, taken to be at step k.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffusion import samplers
from diffusion.unit2mel import GaussianDiffusion, Unit2Mel, load_unit2mel
from modules.config import HParams, load_diffusion_config
from modules.errors import CheckpointError, InferenceError
from modules.onnx_export import (
    EXPORT_FRAMES,
    OPSET,
    CheckResult,
    GraphInterface,
    check_graph,
    expand_units,
    export_module,
)

logger = logging.getLogger(__name__)

PARTS = ("encoder", "denoise", "pred", "after")
_ENCODER_INPUTS = ("hubert", "mel2ph", "f0", "volume", "spk_mix")
# part -> (input names, output names, dynamic axes)
GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, list[int]]]] = {
    "encoder": (_ENCODER_INPUTS, ("mel_pred",),
                {"hubert": [1], "mel2ph": [1], "f0": [1], "volume": [1], "spk_mix": [0]}),
    "denoise": (("noise", "time", "condition"), ("noise_pred",), {"noise": [3], "condition": [2]}),
    "pred": (("noise", "noise_pred", "time", "time_prev"), ("noise_pred_o",), {"noise": [3], "noise_pred": [3]}),
    "after": (("x",), ("mel_out",), {"x": [3]}),
}


def graph_io(part: str, mix: bool) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, list[int]]]:
    """Input names, output names and dynamic axes of one graph; spk_mix only in a multi-speaker encoder."""
    inputs, outputs, axes = GRAPHS[part]
    if part == "encoder" and not mix:
        inputs = inputs[:-1]
        axes = {k: v for k, v in axes.items() if k != "spk_mix"}
    return inputs, outputs, axes


def diffusion_paths(folder: str | os.PathLike, name: str) -> dict[str, Path]:
    """{part: folder/<name>_<part>.onnx} for the four graphs."""
    return {part: Path(folder) / f"{name}_{part}.onnx" for part in PARTS}


def is_mix(model: Unit2Mel) -> bool:
    return model.n_spk is not None and model.n_spk > 1


# ------------------------------------------------------------------------------------------- the graphs


class DiffusionEncoder(nn.Module):
    """Unit2Mel.condition behind MoeSS's encoder inputs: units expanded by mel2ph, mixed speakers."""

    def __init__(self, model: Unit2Mel) -> None:
        super().__init__()
        self.model = model
        self.mix = is_mix(model)

    def forward(self, hubert: torch.Tensor, mel2ph: torch.Tensor, f0: torch.Tensor, volume: torch.Tensor,
                spk_mix: torch.Tensor | None = None) -> torch.Tensor:
        mix = spk_mix.unsqueeze(0) if self.mix else None
        return self.model.condition(expand_units(hubert, mel2ph), f0.unsqueeze(-1), volume.unsqueeze(-1),
                                    spk_mix=mix)


class PlmsUpdate(nn.Module):
    """noise_pred_o = samplers.plms_step(noise, noise_pred, time, time_prev) on the model's schedule."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone())

    def forward(self, noise: torch.Tensor, noise_pred: torch.Tensor, time: torch.Tensor,
                time_prev: torch.Tensor) -> torch.Tensor:
        return samplers.plms_step(noise, noise_pred, time, time_prev, self.alphas_cumprod)


class AfterDiffusion(nn.Module):
    """x [1, 1, M, T] in the normalised space -> mel [1, M, T]. The natural-log mel: the original's
    x0.434294 branch for log10 vocoders is never enabled by its exporter, so there is none here."""

    def __init__(self, decoder: GaussianDiffusion) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder.denorm_spec(x.squeeze(1))


def feature_inputs(model: Unit2Mel, frames: int, units: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible encoder inputs (the so-vits export's test signal under the diffusion names); the mix
    weights of a multi-speaker model are random and sum to one per frame."""
    n_mix = int(model.n_spk) if is_mix(model) else 0
    feed = GraphInterface(model.unit_embed.in_features, 1, n_mix, vol=True).inputs(frames, units, seed)
    out = {"hubert": feed["c"], "mel2ph": feed["mel2ph"], "f0": feed["f0"], "volume": feed["vol"]}
    if n_mix:
        out["spk_mix"] = feed["sid"]
    return out


def _step(t: int) -> torch.Tensor:
    return torch.tensor([t], dtype=torch.long)


def export_diffusion(model: Unit2Mel, paths: Mapping[str, Path], frames: int = EXPORT_FRAMES) -> float:
    """Write the four graphs (each atomically); returns the total export time in seconds."""
    mix = is_mix(model)
    decoder = model.decoder
    features = {k: torch.from_numpy(v) for k, v in feature_inputs(model, frames).items()}
    encoder = DiffusionEncoder(model).eval()
    with torch.no_grad():
        cond = encoder(**features)
    x = torch.randn(1, 1, decoder.out_dims, frames, generator=torch.Generator().manual_seed(0))
    jobs = {
        "encoder": (encoder, tuple(features[n] for n in graph_io("encoder", mix)[0])),
        "denoise": (decoder.denoise_fn, (x, _step(decoder.k_step - 1), cond)),
        "pred": (PlmsUpdate(decoder.alphas_cumprod).eval(), (x, x * 0.5, _step(decoder.k_step - 1), _step(0))),
        "after": (AfterDiffusion(decoder).eval(), (x,)),
    }
    seconds = 0.0
    for part, (module, args) in jobs.items():
        inputs, outputs, axes = graph_io(part, mix)
        seconds += export_module(module, args, paths[part], inputs, outputs, axes)
    return seconds


# ------------------------------------------------------------------------------------------- host side


class OnnxDiffusion:
    """The four graphs in onnxruntime, driven as the MoeSS host drives them (PLMS on the host)."""

    def __init__(self, sessions: Mapping[str, Any]) -> None:
        self.sessions = dict(sessions)

    @classmethod
    def load(cls, paths: Mapping[str, Path], threads: int = 0, spinning: bool = True) -> "OnnxDiffusion":
        """Sessions on the CPU; `threads` 0 lets onnxruntime choose. Without `spinning` its idle threads
        sleep at once, which keeps them from slowing PyTorch work run in between."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return cls({part: ort.InferenceSession(str(paths[part]), options, providers=["CPUExecutionProvider"])
                    for part in PARTS})

    def _run(self, part: str, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.sessions[part].run(None, dict(feed))[0]

    def condition(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        names = {i.name for i in self.sessions["encoder"].get_inputs()}
        return self._run("encoder", {k: v for k, v in features.items() if k in names})

    def sample(self, cond: np.ndarray, noise: np.ndarray, k_step: int, speedup: int) -> np.ndarray:
        """x at step 0 from `noise` [1, 1, M, T] at step k_step."""
        def step(t: int) -> np.ndarray:
            return np.array([t], dtype=np.int64)

        def denoise(x: np.ndarray, t: int) -> np.ndarray:
            return self._run("denoise", {"noise": x, "time": step(t), "condition": cond})

        def update(x: np.ndarray, eps: np.ndarray, t: int, t_prev: int) -> np.ndarray:
            return self._run("pred", {"noise": x, "noise_pred": eps.astype(np.float32, copy=False),
                                      "time": step(t), "time_prev": step(t_prev)})

        return samplers.plms(noise.astype(np.float32), k_step, speedup, denoise, update)

    def mel(self, features: Mapping[str, np.ndarray], noise: np.ndarray, k_step: int, speedup: int) -> np.ndarray:
        """Mel [1, M, T]: encoder, PLMS loop, after."""
        x = self.sample(self.condition(features), noise, k_step, speedup)
        return self._run("after", {"x": x})


@torch.no_grad()
def torch_mel(model: Unit2Mel, features: Mapping[str, np.ndarray], noise: np.ndarray, k_step: int,
              speedup: int) -> np.ndarray:
    """Our PyTorch diffusion on the same inputs, as mel [1, M, T]: Unit2Mel.condition on the expanded
    units (a mix as the weighted sum of each speaker's condition, which equals the mixed embedding since
    the weights sum to one), then the pndm sampler from `noise` and the denormalisation, as
    GaussianDiffusion.sample runs them."""
    t = {k: torch.from_numpy(v) for k, v in features.items()}
    units = expand_units(t["hubert"], t["mel2ph"])
    f0, vol = t["f0"].unsqueeze(-1), t["volume"].unsqueeze(-1)
    if is_mix(model):
        weights = t["spk_mix"].t()  # [n_spk, T]
        cond = sum(weights[s] * model.condition(units, f0, vol, spk_id=torch.tensor([[s]]))
                   for s in range(int(model.n_spk)))
    else:
        cond = model.condition(units, f0, vol)
    decoder = model.decoder
    x = samplers.pndm(torch.from_numpy(noise), lambda x_t, s: decoder.denoise_fn(x_t, s, cond),
                      decoder.alphas_cumprod, k_step, speedup)
    return decoder.denorm_spec(x.squeeze(1)).numpy()


# ------------------------------------------------------------------------------------------- one call


def load_diffusion(model_path: str | os.PathLike, config_path: str | os.PathLike) -> tuple[Unit2Mel, HParams]:
    """Unit2Mel from a model_*.pt and its config.yaml (strict), in float32 on the CPU."""
    path = Path(model_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: diffusion model file not found")
    args = load_diffusion_config(config_path)
    model = load_unit2mel(path, args)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, args


def check_k_step(model: Unit2Mel, k_step: int, speedup: int) -> None:
    if not 1 <= k_step <= model.k_step_max:
        raise InferenceError(f"k_step {k_step} must be between 1 and the model's k_step_max {model.k_step_max}")
    if speedup < 1:
        raise InferenceError(f"speedup {speedup} must be at least 1")


def verify_diffusion(model: Unit2Mel, paths: Mapping[str, Path], k_step: int, speedup: int,
                     lengths: Sequence[int] = (47, 113), seed: int = 0) -> list[CheckResult]:
    """onnx.checker on every graph, then the onnxruntime PLMS loop vs `torch_mel` on the same inputs and
    noise at each length."""
    check_k_step(model, k_step, speedup)
    for part in PARTS:
        check_graph(paths[part])
    runner = OnnxDiffusion.load(paths, spinning=False)
    results = []
    for i, frames in enumerate(lengths):
        features = feature_inputs(model, frames, units=max(1, frames // 2 + 3), seed=seed + i)
        rng = np.random.default_rng(seed + 100 + i)
        noise = rng.standard_normal((1, 1, model.decoder.out_dims, frames)).astype(np.float32)
        got = runner.mel(features, noise, k_step, speedup)
        ref = torch_mel(model, features, noise, k_step, speedup)
        if got.shape != ref.shape:
            raise InferenceError(f"{paths['after']}: onnxruntime gives mel {list(got.shape)}, PyTorch {list(ref.shape)}")
        results.append(CheckResult(frames, float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))))
    return results


@dataclass
class DiffusionExportResult:
    paths: dict[str, Path]
    mix: bool
    seconds: float
    k_step: int
    speedup: int
    checks: list[CheckResult] = field(default_factory=list)


def export_diffusion_model(model_path: str | os.PathLike, config_path: str | os.PathLike,
                           folder: str | os.PathLike, name: str, check: bool = False, k_step: int | None = None,
                           speedup: int | None = None) -> DiffusionExportResult:
    """Export a model_*.pt + config.yaml as folder/<name>_{encoder,denoise,pred,after}.onnx, optionally
    verified with k_step (default the model's k_step_max) and speedup (default the config's infer.speedup)."""
    model, args = load_diffusion(model_path, config_path)
    k = int(k_step) if k_step is not None else model.k_step_max
    s = int(speedup) if speedup is not None else int(args.infer.speedup)
    check_k_step(model, k, s)
    paths = diffusion_paths(folder, name)
    logger.info("exporting %s (%s, TorchScript exporter, opset %d) to %s", model_path,
                "speaker mix" if is_mix(model) else "single speaker", OPSET, Path(folder))
    seconds = export_diffusion(model, paths)
    result = DiffusionExportResult(paths, is_mix(model), seconds, k, s)
    if check:
        result.checks = verify_diffusion(model, paths, k, s)
    return result


__all__ = [
    "GRAPHS",
    "PARTS",
    "AfterDiffusion",
    "DiffusionEncoder",
    "DiffusionExportResult",
    "OnnxDiffusion",
    "PlmsUpdate",
    "diffusion_paths",
    "export_diffusion",
    "export_diffusion_model",
    "feature_inputs",
    "graph_io",
    "load_diffusion",
    "torch_mel",
    "verify_diffusion",
]
