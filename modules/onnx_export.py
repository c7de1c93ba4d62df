"""ONNX export of the so-vits synthesizer for MoeSS / MoeVoiceStudio, and its verification.

The exported graph has the interface MoeSS expects from a so-vits-svc 4.1 `<Name>_SoVits.onnx`:

    inputs  c [1, T_units, ssl_dim] f32, f0 [1, T] f32 (Hz), mel2ph [1, T] i64 (1-based unit index per
            frame, 0 = a zero unit), uv [1, T] f32, noise [1, inter_channels, T] f32 (standard normal
            times the noise scale), sid ([1] i64 speaker id, or [T, n_spk] f32 per-frame weights when
            the config names two or more speakers), vol [1, T] f32 (only with vol_embedding)
    output  audio [1, 1, T * hop] f32

The graph computes what `SynthesizerTrn.infer` computes for the same random draws: units
gathered by mel2ph, all-ones mask, the prior encoder, the reversed flow, and the NSF decoder whose
harmonic source is built inside the graph from frame-rate f0 (phase accumulated per sample in
float64, as the torch model does). The source's two random draws (initial harmonic phases, source
noise) stay inside the graph as RandomUniform / RandomNormalLike nodes, because the MoeSS interface
has no input for them. `verify_export` therefore checks a copy of the graph in which those two nodes
are replaced by inputs, fed with the same values the PyTorch model uses.

The export uses torch's TorchScript exporter (`dynamo=False`): it takes the `dynamic_axes` that give
MoeSS's names and dimensions, whereas the dynamo exporter (torch's default since 2.9) needs the
onnxscript package, which this project does not install.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modules.atomic_write import atomic_path, write_text
from modules.config import HParams
from modules.errors import InferenceError
from modules.frame_features import f0_to_coarse
from modules.inference import load_synthesizer as load_inference_synthesizer

logger = logging.getLogger(__name__)

OPSET = 16
EXPORT_FRAMES = 200  # length of the dummy input the graph is traced with
AUDIO_OUTPUT = "audio"
PHASE_INPUT = "source_phase"  # inputs that replace the random nodes in the verification copy
SOURCE_NOISE_INPUT = "source_noise"
SOURCE_HARMONICS = 9  # the decoder's source: the fundamental and 8 overtones


# ------------------------------------------------------------------------------------------- the graph


def _traceable_attention(self: nn.Module, x: torch.Tensor, c: torch.Tensor, x_mask: torch.Tensor | None = None,
                         causal: bool = False, block_size: int | None = None) -> torch.Tensor:
    """MultiHeadAttention.forward in one block, with the relative-position band built from
    index-difference masks instead of data-dependent indexing, so a trace keeps T symbolic.

    Each (query i, key j) pair receives exactly one band term (offset j - i) plus exact zeros, so the
    scores equal the module's own computation.
    """
    q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
    b, d, t_k = k.shape
    t_q = q.size(2)
    q = q.view(b, self.n_heads, self.k_channels, t_q).transpose(2, 3) / math.sqrt(self.k_channels)
    k = k.view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
    v = v.view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
    scores = torch.matmul(q, k.transpose(-2, -1))
    offset = (torch.arange(t_k, device=x.device).unsqueeze(0) - torch.arange(t_q, device=x.device).unsqueeze(1))
    zero = scores.new_zeros(())
    offsets = [] if self.window_size is None else list(range(-self.window_size, self.window_size + 1))
    if offsets:
        rel = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, H, T_q, 2w+1]
        for slot, r in enumerate(offsets):  # bool masks keep a long piece's memory low (1 byte per pair)
            scores = scores + torch.where(offset == r, rel[..., slot:slot + 1], zero)
    allowed = None
    if x_mask is not None:
        valid = x_mask[:, 0, :].bool()
        allowed = (valid[:, :t_q].unsqueeze(2) & valid.unsqueeze(1)).unsqueeze(1)
    if causal:
        tri = (offset <= 0).view(1, 1, t_q, t_k)
        allowed = tri if allowed is None else allowed & tri
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -1e4)
    p_attn = torch.softmax(scores, dim=-1)
    out = torch.matmul(p_attn, v)
    if offsets:
        gathered = torch.stack([torch.where(offset == r, p_attn, zero).sum(-1) for r in offsets], dim=-1)
        out = out + torch.matmul(gathered, self.emb_rel_v[0])
    out = out.transpose(2, 3).contiguous().view(b, d, t_q)
    return self.conv_o(out)


def make_attention_traceable(model: nn.Module) -> int:
    """Switch every MultiHeadAttention in `model` to `_traceable_attention` (same results, inference
    only); returns how many were switched."""
    import types

    from modules.attentions import MultiHeadAttention

    count = 0
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.forward = types.MethodType(_traceable_attention, module)
            count += 1
    return count



def expand_units(c: torch.Tensor, mel2ph: torch.Tensor) -> torch.Tensor:
    """Units [1, T_units, D] -> frames [1, T, D] by the 1-based unit index per frame (0 = a zero unit)."""
    padded = F.pad(c, (0, 0, 1, 0))
    return torch.gather(padded, 1, mel2ph.unsqueeze(2).expand(-1, -1, c.shape[2]))


class OnnxSynthesizer(nn.Module):
    """SynthesizerTrn behind the MoeSS input interface (see the module docstring).

    `mix_speaker_ids` (mix variant): the speaker id behind each column of the per-frame weights,
    in the order of the config's spk entries. `fixed_draws` replaces the two random draws of the
    harmonic source by given tensors (phases [1, harmonics], noise [1, T*hop, harmonics]); only the
    verification sets it.
    """

    def __init__(self, model: nn.Module, mix_speaker_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        make_attention_traceable(model)
        self.model = model
        self.hop = int(model.hop_length)
        self.mix = mix_speaker_ids is not None
        if self.mix:
            ids = torch.tensor(list(mix_speaker_ids), dtype=torch.long)
            self.register_buffer("speaker_rows", model.emb_g.weight.detach()[ids].clone())
        source = model.dec.m_source
        self.register_buffer("harmonics", torch.arange(1, source.dim + 1, dtype=torch.float32).view(1, 1, -1))
        # The fundamental starts at phase 0; only the overtones get a random start phase.
        self.register_buffer("phase_mask", (torch.arange(source.dim) > 0).float().view(1, -1))
        self.fixed_draws: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def vol_embedding(self) -> bool:
        return bool(self.model.vol_embedding)

    def speaker_condition(self, sid: torch.Tensor) -> torch.Tensor:
        if self.mix:  # [T, S] weights x [S, gin] rows -> [1, gin, T]
            return torch.matmul(sid, self.speaker_rows).transpose(0, 1).unsqueeze(0)
        return self.model.emb_g(sid).unsqueeze(-1)  # [1] -> [1, gin, 1]

    def excitation(self, f0: torch.Tensor) -> torch.Tensor:
        """Frame f0 [1, T] -> harmonic source [1, 1, T*hop]; the same arithmetic as the decoder's source."""
        source = self.model.dec.m_source
        batch = f0.shape[0]
        f0_samples = f0.unsqueeze(-1).expand(-1, -1, self.hop).reshape(batch, -1, 1)
        rad = torch.remainder(f0_samples * self.harmonics / float(source.sampling_rate), 1.0)
        if self.fixed_draws is None:
            start = torch.rand(1, source.dim)
        else:
            start = self.fixed_draws[0]
        start = start * self.phase_mask
        rad = torch.cat([rad[:, :1] + start.unsqueeze(1), rad[:, 1:]], dim=1)
        # Float64 running sums keep the phase exact over long pieces; the wrap correction keeps the
        # second sum small, as the torch model does.
        wrapped = torch.remainder(torch.cumsum(rad.double(), dim=1).float(), 1.0)
        wraps = ((wrapped[:, 1:] - wrapped[:, :-1]) < 0).float() * -1.0
        shift = torch.cat([torch.zeros_like(rad[:, :1]), wraps], dim=1)
        phase = torch.cumsum((rad + shift).double(), dim=1).float()
        sines = torch.sin(phase * 2 * math.pi) * source.sine_amp
        voiced = (f0_samples > source.voiced_threshold).float()
        noise_amp = voiced * source.noise_std + (1 - voiced) * source.sine_amp / 3
        draw = torch.randn_like(sines) if self.fixed_draws is None else self.fixed_draws[1]
        waves = sines * voiced + noise_amp * draw
        return torch.tanh(source.l_linear(waves)).transpose(1, 2)

    def forward(
        self, c: torch.Tensor, f0: torch.Tensor, mel2ph: torch.Tensor, uv: torch.Tensor, noise: torch.Tensor,
        sid: torch.Tensor, vol: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        units = expand_units(c, mel2ph).transpose(1, 2)
        x_mask = torch.ones_like(f0).unsqueeze(1)
        g = self.speaker_condition(sid)
        x = model._front(units, uv, x_mask, vol if self.vol_embedding else None)
        m_p, logs_p = model.enc_p.stats(x, x_mask, f0_to_coarse(f0))
        z_p = (m_p + noise * torch.exp(logs_p)) * x_mask
        z = model.flow(z_p, x_mask, g=g, reverse=True)
        return model.dec.synthesize(z * x_mask, self.excitation(model.source_f0(f0, uv)), g)


# ------------------------------------------------------------------------------------------- interface


@dataclass(frozen=True)
class GraphInterface:
    """Names, dtypes and dynamic axes of the graph's inputs, as MoeSS expects them."""

    unit_dim: int
    inter_channels: int
    n_mix: int  # 0: single-speaker graph
    vol: bool
    input_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = ("c", "f0", "mel2ph", "uv", "noise", "sid") + (("vol",) if self.vol else ())
        object.__setattr__(self, "input_names", names)

    @property
    def dynamic_axes(self) -> dict[str, list[int]]:
        axes = {"c": [0, 1], "f0": [1], "mel2ph": [1], "uv": [1], "noise": [2]}
        if self.n_mix:
            axes["sid"] = [0]
        if self.vol:
            axes["vol"] = [1]
        return axes

    def inputs(self, frames: int, units: int | None = None, seed: int = 0, speaker: int = 0,
               noise_scale: float = 0.4) -> dict[str, np.ndarray]:
        """A plausible input set: units, a sung f0 contour, voiced/unvoiced frames, scaled noise."""
        rng = np.random.default_rng(seed)
        units = frames if units is None else units
        t = np.arange(frames) / 86.0
        f0 = (220.0 * 2 ** (np.sin(2 * np.pi * 0.7 * t) / 6) + 5 * np.sin(2 * np.pi * 5.5 * t)).astype(np.float32)
        feed = {
            "c": rng.standard_normal((1, units, self.unit_dim)).astype(np.float32),
            "f0": f0[None],
            "mel2ph": (np.floor(np.arange(frames) * units / frames).astype(np.int64) + 1)[None],
            "uv": (rng.random((1, frames)) > 0.2).astype(np.float32),
            "noise": (rng.standard_normal((1, self.inter_channels, frames)) * noise_scale).astype(np.float32),
        }
        if self.n_mix:
            w = rng.random((frames, self.n_mix)).astype(np.float32) + 0.05
            feed["sid"] = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        else:
            feed["sid"] = np.array([speaker], dtype=np.int64)
        if self.vol:
            feed["vol"] = (0.05 + 0.2 * rng.random((1, frames))).astype(np.float32)
        return feed


def interface_for(model: nn.Module, n_mix: int) -> GraphInterface:
    return GraphInterface(int(model.ssl_dim), int(model.inter_channels), n_mix, bool(model.vol_embedding))


def speaker_order(hps: HParams) -> list[tuple[str, int]]:
    """(name, id) of the config's speakers in the order the spk map lists them."""
    return [(str(name), int(sid)) for name, sid in dict(hps.spk).items()]


def wants_mix(hps: HParams) -> bool:
    """MoeSS's speaker-mix graph is chosen whenever the config names two or more speakers."""
    return len(speaker_order(hps)) >= 2


# ------------------------------------------------------------------------------------------- export


def load_synthesizer(model_path: str | os.PathLike, config_path: str | os.PathLike) -> tuple[nn.Module, HParams]:
    """SynthesizerTrn from a G_*.pth and its config, as inference loads it, in float32."""
    model, hps = load_inference_synthesizer(model_path, config_path)
    return model.float(), hps


def build_wrapper(model: nn.Module, hps: HParams, mix: bool | None = None) -> OnnxSynthesizer:
    """The export module; `mix` None chooses as MoeSS's exporter does (two or more speakers -> mix).

    The model's attention modules are switched to the traceable formulation (same results), so pass a
    model that is used for export only, or a copy.
    """
    if mix is None:
        mix = wants_mix(hps)
    ids = [sid for _, sid in speaker_order(hps)] if mix else None
    if ids is not None:
        bad = [i for i in ids if not 0 <= i < model.n_speakers]
        if bad:
            raise InferenceError(f"config spk ids {bad} are outside the model's {model.n_speakers} speakers")
        if len(ids) < 1:
            raise InferenceError("the speaker-mix graph needs at least one speaker in the config's spk map")
    return OnnxSynthesizer(model, ids).eval()


def export_module(module: nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike,
                  input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_axes: dict[str, list[int]]) -> float:
    """Trace `module` on `args` with the TorchScript exporter (opset 16, no constant folding) into `path`,
    written atomically; returns the export time in seconds."""
    import warnings

    start = time.perf_counter()
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated, and about traced shapes it handles.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(tmp), dynamo=False, opset_version=OPSET, do_constant_folding=False,
            input_names=list(input_names), output_names=list(output_names), dynamic_axes=dynamic_axes,
        )
    return time.perf_counter() - start


def export_graph(wrapper: OnnxSynthesizer, path: str | os.PathLike, frames: int = EXPORT_FRAMES) -> float:
    """Write the ONNX file (atomically); returns the export time in seconds."""
    iface = interface_for(wrapper.model, len(wrapper.speaker_rows) if wrapper.mix else 0)
    feed = iface.inputs(frames)
    args = tuple(torch.from_numpy(feed[name]) for name in iface.input_names)
    return export_module(wrapper, args, path, iface.input_names, [AUDIO_OUTPUT], iface.dynamic_axes)


def moess_config(hps: HParams, name: str) -> dict[str, Any]:
    """The MoeVS model description written next to the project folder, field for field as the
    original exporter writes it. Its Hubert name follows the original's rule: layer 12 only when
    gin_channels is 768, layer 9 otherwise, with the width taken from gin_channels (so a 1024-wide
    model is announced as "vec-1024-layer-9")."""
    gin = hps.model.gin_channels
    return {
        "Folder": name,
        "Name": name,
        "Type": "SoVits",
        "Rate": hps.data.sampling_rate,
        "Hop": hps.data.hop_length,
        "Hubert": f"vec-{gin}-layer-12" if gin == 768 else f"vec-{gin}-layer-9",
        "SoVits4": True,
        "SoVits3": False,
        "CharaMix": wants_mix(hps),
        "Volume": hps.model.vol_embedding,
        "HiddenSize": gin,
        "Characters": [n for n, _ in speaker_order(hps)],
        "Cluster": "",
    }


def write_moess_config(hps: HParams, name: str, path: str | os.PathLike) -> None:
    write_text(path, json.dumps(moess_config(hps, name), indent=4))


# ------------------------------------------------------------------------------------------- verification


def with_random_inputs(graph_model: Any) -> Any:
    """A copy of the ONNX model in which the source's RandomUniform(Like) / RandomNormal(Like) nodes are
    graph inputs (PHASE_INPUT, SOURCE_NOISE_INPUT), so the graph can be run on fixed draws."""
    import copy

    import onnx

    graph_model = copy.deepcopy(graph_model)
    graph = graph_model.graph
    renames = {"RandomUniform": PHASE_INPUT, "RandomUniformLike": PHASE_INPUT,
               "RandomNormal": SOURCE_NOISE_INPUT, "RandomNormalLike": SOURCE_NOISE_INPUT}
    found: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type in renames:
            target = renames[node.op_type]
            if target in found:
                raise InferenceError(f"the graph has more than one {node.op_type} node; cannot verify it")
            found[target] = node.output[0]
        else:
            keep.append(node)
    if set(found) != {PHASE_INPUT, SOURCE_NOISE_INPUT}:
        raise InferenceError(f"expected one uniform and one normal random node in the graph, found {sorted(found)}")
    del graph.node[:]
    graph.node.extend(keep)
    for target, old in found.items():
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = target
        graph.input.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    return graph_model


def check_graph(path: str | os.PathLike) -> Any:
    """The ONNX model in `path` after onnx.checker; InferenceError naming the file if it fails."""
    import onnx

    graph_model = onnx.load(str(path))
    try:
        onnx.checker.check_model(graph_model)
    except onnx.checker.ValidationError as e:
        raise InferenceError(f"{path}: the exported graph fails onnx.checker ({str(e).splitlines()[0]})") from None
    return graph_model


@dataclass
class CheckResult:
    frames: int
    max_abs_error: float
    peak: float

    @property
    def relative_error(self) -> float:
        """Largest sample difference relative to the reference's peak (sample-wise ratios are
        meaningless at zero crossings)."""
        return self.max_abs_error / max(self.peak, 1e-12)


def verify_export(wrapper: OnnxSynthesizer, path: str | os.PathLike, lengths: Sequence[int] = (47, 113),
                  seed: int = 0) -> list[CheckResult]:
    """onnx.checker on the file, then onnxruntime vs the PyTorch module on the same inputs (including the
    source's random draws) at each length; raises InferenceError on a checker failure."""
    import onnxruntime as ort

    fixed = with_random_inputs(check_graph(path))
    session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    iface = interface_for(wrapper.model, len(wrapper.speaker_rows) if wrapper.mix else 0)
    dim = wrapper.model.dec.m_source.dim
    results = []
    for i, frames in enumerate(lengths):
        feed = iface.inputs(frames, units=max(1, frames // 2 + 3), seed=seed + i, speaker=min(1, wrapper.model.n_speakers - 1))
        rng = np.random.default_rng(seed + 100 + i)
        phase = rng.random((1, dim)).astype(np.float32)
        source_noise = rng.standard_normal((1, frames * wrapper.hop, dim)).astype(np.float32)
        wrapper.fixed_draws = (torch.from_numpy(phase), torch.from_numpy(source_noise))
        try:
            with torch.no_grad():
                ref = wrapper(*(torch.from_numpy(feed[n]) for n in iface.input_names)).numpy()
        finally:
            wrapper.fixed_draws = None
        got = session.run([AUDIO_OUTPUT], {**feed, PHASE_INPUT: phase, SOURCE_NOISE_INPUT: source_noise})[0]
        if got.shape != ref.shape:
            raise InferenceError(f"{path}: onnxruntime gives audio {list(got.shape)}, PyTorch {list(ref.shape)}")
        results.append(CheckResult(frames, float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))))
    return results


# ------------------------------------------------------------------------------------------- one call


@dataclass
class ExportResult:
    onnx_path: Path
    json_path: Path | None
    mix: bool
    seconds: float
    checks: list[CheckResult] = field(default_factory=list)


def export_model(
    model_path: str | os.PathLike, config_path: str | os.PathLike, onnx_path: str | os.PathLike,
    json_path: str | os.PathLike | None = None, name: str | None = None, check: bool = False,
    mix: bool | None = None,
) -> ExportResult:
    """Export a G_*.pth + config to `onnx_path` (+ the MoeVS JSON at `json_path`), optionally verified."""
    model, hps = load_synthesizer(model_path, config_path)
    wrapper = build_wrapper(model, hps, mix)
    logger.info("exporting %s (%s graph, TorchScript exporter, opset %d) to %s", model_path,
                "speaker-mix" if wrapper.mix else "single-speaker", OPSET, onnx_path)
    seconds = export_graph(wrapper, onnx_path)
    if json_path is not None:
        write_moess_config(hps, name or Path(onnx_path).stem.removesuffix("_SoVits"), json_path)
    result = ExportResult(Path(onnx_path), None if json_path is None else Path(json_path), wrapper.mix, seconds)
    if check:
        result.checks = verify_export(wrapper, onnx_path)
    return result


def describe_inputs(path: str | os.PathLike) -> dict[str, tuple[str, list[Any]]]:
    """{input or output name: (element type name, dims)}; symbolic dims as strings."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for value in list(graph.input) + list(graph.output):
        t = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        out[value.name] = (onnx.TensorProto.DataType.Name(t.elem_type), dims)
    return out


__all__ = [
    "EXPORT_FRAMES",
    "OPSET",
    "CheckResult",
    "ExportResult",
    "GraphInterface",
    "OnnxSynthesizer",
    "build_wrapper",
    "check_graph",
    "describe_inputs",
    "expand_units",
    "export_graph",
    "export_module",
    "export_model",
    "interface_for",
    "load_synthesizer",
    "moess_config",
    "speaker_order",
    "verify_export",
    "wants_mix",
    "with_random_inputs",
    "write_moess_config",
]

