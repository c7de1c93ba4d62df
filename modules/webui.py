"""The browser front end (`webUI.py`): model picking, conversion and the model tools in a Gradio app.

Everything the page does goes through `WebUI`, whose callbacks are plain methods (strings, numbers and
file paths in; a `Reply` or tuples of values out), so they are tested without a browser. `build_app`
only lays out the Blocks and wires components to those methods.

Conversion uses the same engine as inference_main.py, built by `inference_batch.load_engine` from a
`BatchRequest` with the unit mixer of `unit_mixer_for`, and names its result like the command line
(`inference_plan.output_name`). Optional k-means / index / diffusion files are picked from a scan
(`scan_extras`), like the models. The options of the Convert tab come from
one table, `CONVERT_FIELDS`: an option added to the engine (cluster ratio, shallow diffusion, ...)
is one more entry there.

Safety: the model list is a scan of the configured folders and a request names a scanned entry,
never a path. Uploaded files are only read from the upload folder (Gradio's temp folder, which the
app points at its own temporary directory), and every file the app writes gets a name that was
reduced to a plain file name inside the folder it belongs to.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from modules.audio import load_audio, resample, save_audio
from modules.config import DIFFUSION_METHODS
from modules.diffusion_infer import DiffusionOptions
from modules.errors import ConfigError, InferenceError, SvcError
from modules.inference import ConvertOptions, SvcEngine
from modules.inference_batch import BatchRequest, load_engine, output_mode, unit_mixer_for
from modules.inference_plan import output_name
from modules.pitch import PREDICTOR_NAMES, get_f0_predictor
from modules.speaker_mix import SpeakerMix, load_spk_mix

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MODEL_FOLDERS = ("logs/44k", "trained")
OUTPUT_FORMATS = ("flac", "wav", "ogg")
BACKENDS = ("torch", "onnx")
NO_FILE = "(none)"  # the optional-file pickers' "do not use one"
# Shown for "take the sampler from the diffusion config" (--diffusion_method left out).
METHOD_FROM_CONFIG = "from the diffusion config"
# The original web UI's one default that differs from inference_main.py: it imposes the input's
# loudness envelope (0) where the command line leaves the output's alone (1).
WEBUI_LOUDNESS_DEFAULT = 0.0
CLI_LOUDNESS_DEFAULT = 1.0
# F0 of the picture is measured with a cheap, weight-free predictor whatever the conversion used.
PLOT_F0_PREDICTOR = "pm"
MIX_MODE_LABELS = {
    "exact": "exact (rate / sum of rates)",
    "convex": "convex (softmax of rate/100, the original's 'convex')",
    "linear": "linear (rate/100 as given)",
}


# ------------------------------------------------------------------------------------------- model scan


@dataclass(frozen=True)
class ModelEntry:
    """A G checkpoint found by the scan, with the config it is loaded with."""

    label: str  # what the page shows and sends back
    model: Path
    config: Path


def _g_step(path: Path) -> tuple[int, str]:
    match = re.fullmatch(r"G_(\d+)", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def scan_models(root: str | os.PathLike, folders: Sequence[str] = MODEL_FOLDERS) -> dict[str, ModelEntry]:
    """Every usable model under `root`'s model folders, newest training step first per folder.

    A folder counts when it holds a config.json next to G_*.pth files (train.py's layout, logs/44k)
    or, the original web UI's convention for trained/<name>/, exactly one .json and one .pth.
    Only the named folders are read; symbolic links leading outside them are skipped.
    """
    root = Path(root).resolve()
    found: dict[str, ModelEntry] = {}
    for base, directory in _scanned_dirs(root, folders):
        jsons = sorted(p for p in directory.glob("*.json") if p.is_file())
        pths = sorted(p for p in directory.glob("*.pth") if p.is_file())
        config = directory / "config.json"
        if config.is_file():
            models = sorted((p for p in pths if p.name.startswith("G_")), key=_g_step, reverse=True)
            if not models and len(jsons) == 1 and len(pths) == 1:
                models = pths
        elif len(jsons) == 1 and len(pths) == 1:
            config, models = jsons[0], pths
        else:
            continue
        for model in models:
            if not _inside(model.resolve(), base):
                continue
            label = model.relative_to(root).as_posix()
            found[label] = ModelEntry(label, model, config)
    return found


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _scanned_dirs(root: Path, folders: Sequence[str]) -> Iterator[tuple[Path, Path]]:
    """(scanned folder, directory) for each named folder under `root` and every directory inside it, never
    following a link out of the folder."""
    for folder in folders:
        base = (root / folder).resolve()
        if not base.is_dir() or not _inside(base, root):
            continue
        for directory in sorted([base, *(p for p in base.rglob("*") if p.is_dir())]):
            if _inside(directory.resolve(), base):
                yield base, directory


@dataclass(frozen=True)
class DiffusionEntry:
    """A diffusion model_*.pt found by the scan, with the config.yaml of its folder."""

    label: str
    model: Path
    config: Path


@dataclass(frozen=True)
class ExtraFiles:
    """The optional files a conversion can use, by the label the page shows."""

    kmeans: dict[str, Path]  # cluster/train_cluster.py output (kmeans_10000.pt)
    indexes: dict[str, Path]  # train_index.py output (feature_and_index.pkl)
    diffusion: dict[str, DiffusionEntry]  # train_diff.py output (diffusion/model_*.pt + config.yaml)


def _diffusion_step(path: Path) -> tuple[int, str]:
    match = re.fullmatch(r"model_(\d+)", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def scan_extras(root: str | os.PathLike, folders: Sequence[str] = MODEL_FOLDERS) -> ExtraFiles:
    """K-means models (*.pt), feature indexes (*.pkl) and diffusion models of the model folders.

    train.py's layout puts them at logs/44k/kmeans_10000.pt, logs/44k/feature_and_index.pkl and
    logs/44k/diffusion/model_<step>.pt next to diffusion/config.yaml; a trained/<name>/ folder may hold
    the same files. A *.pt inside a folder named "diffusion" is never taken for a k-means model, and a
    diffusion model counts only with a config.yaml beside it (newest step first). Links leading out of
    the folders are skipped, as for the model scan.
    """
    root = Path(root).resolve()
    kmeans: dict[str, Path] = {}
    indexes: dict[str, Path] = {}
    diffusion: dict[str, DiffusionEntry] = {}
    for base, directory in _scanned_dirs(root, folders):
        files = [p for p in sorted(directory.iterdir()) if p.is_file() and _inside(p.resolve(), base)]
        if directory.name == "diffusion":
            config = directory / "config.yaml"
            if config.is_file():
                models = [p for p in files if p.suffix == ".pt" and p.name.startswith("model_")]
                for model in sorted(models, key=_diffusion_step, reverse=True):
                    label = model.relative_to(root).as_posix()
                    diffusion[label] = DiffusionEntry(label, model, config)
            continue
        for p in files:
            if p.suffix == ".pt":
                kmeans[p.relative_to(root).as_posix()] = p
            elif p.suffix == ".pkl":
                indexes[p.relative_to(root).as_posix()] = p
    return ExtraFiles(kmeans, indexes, diffusion)


def safe_file_name(name: str, default: str = "file") -> str:
    """A name from the browser reduced to one harmless path component (no folders, no leading dots)."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    return base[:120] or default


# ------------------------------------------------------------------------------------- convert options


@dataclass(frozen=True)
class ConvertField:
    """One option of the Convert tab: its component and where its value goes.

    `target` is a ConvertOptions attribute, a DiffusionOptions flag named as inference_main.py's
    (`DIFFUSION_TARGETS`), or one of the request-level keys handled by `WebUI.convert` ("wav_format",
    "use_spk_mix", "cluster_infer_ratio", "feature_retrieval"). `group` is the accordion it sits in.
    """

    target: str
    label: str
    kind: str  # number, slider, checkbox, dropdown, radio
    default: Any
    info: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    group: str = ""  # "": always shown; else the accordion's key in GROUP_TITLES
    cast: Callable[[Any], Any] = lambda v: v


CONVERT_FIELDS: tuple[ConvertField, ...] = (
    ConvertField("transpose", "Transpose (semitones)", "number", 0, "-t: shifts the pitch; 12 is one octave up",
                 cast=lambda v: round(float(v))),
    ConvertField("auto_predict_f0", "Auto-predict F0", "checkbox", False,
                 "-a: the model's own F0; for speech only (singing goes off pitch), makes transpose ineffective"),
    ConvertField("f0_predictor", "F0 predictor", "dropdown", "pm",
                 "-f0p: rmvpe/crepe/fcpe need their pretrained files", choices=tuple(PREDICTOR_NAMES)),
    ConvertField("f0_threshold", "F0 threshold", "number", 0.05,
                 "-ft: voicing threshold of crepe, rmvpe and fcpe", minimum=0.0, maximum=1.0, cast=float),
    ConvertField("noise_scale", "Noise scale", "number", 0.4, "-ns: prior noise; leave it unless you know why",
                 minimum=0.0, maximum=2.0, cast=float),
    ConvertField("loudness_envelope_adjustment", "Loudness envelope", "slider", WEBUI_LOUDNESS_DEFAULT,
                 "-lea: 0 imposes the input's loudness, 1 keeps the output's. Default 0 as the original web UI "
                 "(inference_main.py's default is 1)", minimum=0.0, maximum=1.0, step=0.05, cast=float),
    ConvertField("wav_format", "Output format", "radio", "flac", "-wf", choices=OUTPUT_FORMATS),
    ConvertField("slice_db", "Slicing threshold (dB)", "number", -40, "-sd: -40 normal, -30 noisy input, -50 breathy",
                 group="advanced", cast=float),
    ConvertField("pad_seconds", "Padding (s)", "number", 0.5, "-p: silence around each slice against end noises",
                 minimum=0.0, group="advanced", cast=float),
    ConvertField("clip_seconds", "Forced clip length (s)", "number", 0, "-cl: 0 cuts only at silences",
                 minimum=0.0, group="advanced", cast=float),
    ConvertField("linear_gradient", "Crossfade (s)", "number", 0, "-lg: overlap between forced clips",
                 minimum=0.0, group="advanced", cast=float),
    ConvertField("linear_gradient_retain", "Crossfade retain", "number", 0.75,
                 "-lgr: fraction of the overlap that is blended (0..1]", minimum=0.01, maximum=1.0,
                 group="advanced", cast=float),
    ConvertField("use_spk_mix", "Use the speaker-mix timeline", "checkbox", False,
                 "-usm: the map validated in the Tools tab replaces the speaker", group="advanced"),
    ConvertField("cluster_infer_ratio", "Cluster / retrieval ratio", "slider", 0.0,
                 "-cr: 0..1, how far units move toward the speaker's own (less timbre leak, less clear words); "
                 "needs a k-means model or feature index picked in the Model tab", minimum=0.0, maximum=1.0,
                 step=0.05, group="timbre", cast=float),
    ConvertField("feature_retrieval", "Feature retrieval", "checkbox", False,
                 "-fr: use the feature index instead of the k-means model", group="timbre"),
    ConvertField("shallow_diffusion", "Shallow diffusion", "checkbox", False,
                 "-shd: refine the output with the diffusion model picked in the Model tab; turns the enhancer off",
                 group="timbre"),
    ConvertField("only_diffusion", "Only diffusion", "checkbox", False,
                 "-od: convert with the diffusion model and vocoder alone (speakers of the diffusion config)",
                 group="timbre"),
    ConvertField("k_step", "Diffusion depth (k steps)", "number", 100,
                 "-ks: shallow diffusion steps, at most the model's k_step_max", minimum=1, group="timbre",
                 cast=lambda v: round(float(v))),
    ConvertField("second_encoding", "Second encoding", "checkbox", False,
                 "-se: re-encode units from the so-vits output before diffusion", group="timbre"),
    ConvertField("diffusion_method", "Diffusion sampler", "dropdown", METHOD_FROM_CONFIG,
                 "--diffusion_method", choices=(METHOD_FROM_CONFIG, *DIFFUSION_METHODS), group="timbre"),
    ConvertField("diffusion_speedup", "Diffusion speedup", "number", None,
                 "--diffusion_speedup: steps skipped per solver step; empty takes the diffusion config's",
                 minimum=1, group="timbre", cast=lambda v: None if v is None else round(float(v))),
    ConvertField("enhance", "NSF-HiFiGAN enhancer", "checkbox", False,
                 "-eh: re-synthesise with pretrain/nsf_hifigan (off with shallow diffusion)", group="timbre"),
    ConvertField("enhancer_adaptive_key", "Enhancer adaptive key", "number", 0,
                 "-eak: semitones the enhancer's range moves, for very high or low voices", group="timbre",
                 cast=float),
)
GROUP_TITLES = {"advanced": "Slicing, padding, crossfade, speaker mix",
                "timbre": "Cluster / feature retrieval, diffusion and enhancer"}
# Convert-tab targets that make up the DiffusionOptions, by that class's attribute.
DIFFUSION_TARGETS = {"shallow_diffusion": "shallow", "only_diffusion": "only", "k_step": "k_step",
                     "second_encoding": "second_encoding", "diffusion_method": "method",
                     "diffusion_speedup": "speedup", "enhance": "enhance",
                     "enhancer_adaptive_key": "enhancer_adaptive_key"}
FIELD_NAMES = tuple(f.target for f in CONVERT_FIELDS)
_REQUEST_KEYS = {"wav_format", "use_spk_mix", "cluster_infer_ratio", "feature_retrieval"}


def options_from_values(values: dict[str, Any]) -> tuple[ConvertOptions, dict[str, Any]]:
    """ConvertOptions plus the request-level values, from {field target: raw value}; ConfigError on bad ranges.

    The request values include "diffusion": the DiffusionOptions of the diffusion fields."""
    opts: dict[str, Any] = {}
    request: dict[str, Any] = {}
    diffusion: dict[str, Any] = {}
    for f in CONVERT_FIELDS:
        raw = values.get(f.target, f.default)
        try:
            value = f.cast(f.default if raw is None or raw == "" else raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{f.label}: '{raw}' is not a valid value") from None
        if f.target in DIFFUSION_TARGETS:
            diffusion[DIFFUSION_TARGETS[f.target]] = value
        else:
            (request if f.target in _REQUEST_KEYS else opts)[f.target] = value
    if diffusion["method"] == METHOD_FROM_CONFIG:
        diffusion["method"] = None
    elif diffusion["method"] not in DIFFUSION_METHODS:
        raise ConfigError(f"unknown diffusion sampler '{diffusion['method']}'; choose one of "
                          f"{', '.join(DIFFUSION_METHODS)}")
    if not 0 <= request["cluster_infer_ratio"] <= 1:
        raise ConfigError(f"Cluster / retrieval ratio must be in [0, 1], got {request['cluster_infer_ratio']}")
    if diffusion["k_step"] < 1 or (diffusion["speedup"] is not None and diffusion["speedup"] < 1):
        raise ConfigError("k steps and diffusion speedup must be at least 1")
    request["diffusion"] = DiffusionOptions(**diffusion)
    if not 0 < opts["linear_gradient_retain"] <= 1:
        raise ConfigError(f"Crossfade retain must be in (0, 1], got {opts['linear_gradient_retain']}")
    for key in ("clip_seconds", "linear_gradient", "pad_seconds", "noise_scale"):
        if opts[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {opts[key]}")
    if opts["f0_predictor"] not in PREDICTOR_NAMES:
        raise ConfigError(f"unknown F0 predictor '{opts['f0_predictor']}'; choose one of {', '.join(PREDICTOR_NAMES)}")
    if request["wav_format"] not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format '{request['wav_format']}'; choose one of {', '.join(OUTPUT_FORMATS)}")
    return ConvertOptions(**opts), request


# ----------------------------------------------------------------------------------------------- state


@dataclass
class Reply:
    """What a callback tells the page: a one-line message, and whether it is an error."""

    message: str
    ok: bool = True

    @property
    def markdown(self) -> str:
        return self.message if self.ok else f"**Error:** {self.message}"


@dataclass
class ConvertResult:
    reply: Reply
    output: Path | None = None
    f0_figure: Any = None
    f0_curves: dict[str, np.ndarray] = field(default_factory=dict)


def available_devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


class WebUI:
    """The app's state (one loaded model, shared by every browser tab, as the original) and its callbacks."""

    def __init__(
        self, root: str | os.PathLike = ".", results_dir: str | os.PathLike | None = None,
        upload_dir: str | os.PathLike | None = None, pretrain_dir: str | os.PathLike | None = None,
        model_folders: Sequence[str] = MODEL_FOLDERS,
    ) -> None:
        self.root = Path(root).resolve()
        self.results_dir = Path(results_dir) if results_dir else self.root / "results"
        self.upload_dir = Path(upload_dir or tempfile.mkdtemp(prefix="svc41-webui-")).resolve()
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.pretrain_dir = Path(pretrain_dir) if pretrain_dir else self.root / "pretrain"
        self.model_folders = tuple(model_folders)
        self.engine: SvcEngine | None = None
        # What the engine was built from (the Model tab's choices); a conversion asking for other diffusion
        # options rebuilds it from this request through load_engine, as inference_main.py builds it.
        self.request: BatchRequest | None = None
        self._built_diffusion = DiffusionOptions()
        self._index_path: Path | None = None
        self.model_label = ""
        self.spk_mix: SpeakerMix | None = None
        self._lock = threading.Lock()  # one conversion or load at a time: the engine is not reentrant

    # ----- paths -------------------------------------------------------------------------------------

    def models(self) -> dict[str, ModelEntry]:
        return scan_models(self.root, self.model_folders)

    def uploaded(self, path: str | os.PathLike | None, what: str) -> Path:
        """An uploaded file's path, accepted only inside the upload folder."""
        if not path:
            raise InferenceError(f"no {what} uploaded")
        resolved = Path(path).resolve()
        if not _inside(resolved, self.upload_dir):
            raise InferenceError(f"{what}: only files uploaded through this page can be used")
        if not resolved.is_file():
            raise InferenceError(f"{what}: the uploaded file is gone; upload it again")
        return resolved

    def error(self, e: Exception) -> Reply:
        """A project error as a page message; upload paths shrink to the file name the user chose."""
        text = re.sub(re.escape(str(self.upload_dir)) + r"[\\/](?:[0-9a-f]{16,}[\\/])?", "", str(e))
        return Reply(text, ok=False)

    # ----- Model tab ---------------------------------------------------------------------------------

    def model_choices(self) -> list[str]:
        return list(self.models())

    def extras(self) -> ExtraFiles:
        return scan_extras(self.root, self.model_folders)

    def load_model(
        self, choice: str | None, model_file: str | None = None, config_file: str | None = None,
        device: str | None = "auto", fast: bool = False, backend: str = "torch", kmeans: str | None = None,
        index: str | None = None, diffusion: str | None = None,
    ) -> tuple[Reply, list[str]]:
        """Load a scanned model (or an uploaded G file + config when both are given); returns the speakers.

        `kmeans`, `index` and `diffusion` are labels of `extras()` (empty: none); they are used when a
        conversion asks for a cluster ratio, feature retrieval or shallow / only diffusion."""
        try:
            extras = self.extras()
            picked = {}
            pickers = (("k-means model", kmeans, extras.kmeans), ("feature index", index, extras.indexes),
                       ("diffusion model", diffusion, extras.diffusion))
            for what, label, table in pickers:
                if label and label != NO_FILE and label not in table:
                    raise InferenceError(f"{what} '{label}' is not in the scan of {', '.join(self.model_folders)}; "
                                         f"press Refresh")
                picked[what] = table.get(label) if label and label != NO_FILE else None
            if backend not in BACKENDS:
                raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
            diff_entry = picked["diffusion model"]
            if model_file or config_file:
                model = self.uploaded(model_file, "G model file")
                config = self.uploaded(config_file, "config.json")
                label = f"uploaded {Path(model_file or '').name}"
            else:
                entry = self.models().get(choice or "")
                if entry is None:
                    raise InferenceError(f"model '{choice}' is not in the scan of {', '.join(self.model_folders)}; "
                                         f"press Refresh or upload a model")
                model, config, label = entry.model, entry.config, entry.label
            request = BatchRequest(
                model_path=model, config_path=config, names=(), device=None if device in (None, "", "auto") else device,
                fast=bool(fast), pretrain_dir=self.pretrain_dir, show_progress=False, backend=backend,
                cluster_model_path=picked["k-means model"] or "", diffusion=DiffusionOptions(),
                diffusion_model_path=diff_entry.model if diff_entry else "",
                diffusion_config_path=diff_entry.config if diff_entry else "",
            )
            index_path = picked["feature index"]
            with self._lock:
                self.engine, self.request = None, None
                engine = load_engine(request)
                _ = engine.encoder  # a missing speech-encoder file is reported now, not at the first conversion
                self.engine, self.model_label, self.spk_mix = engine, label, None
                self.request, self._built_diffusion = request, DiffusionOptions()
                self._index_path = index_path
        except SvcError as e:
            return self.error(e), []
        return self.current()

    def unload_model(self) -> Reply:
        with self._lock:
            on_gpu = self.engine is not None and self.engine.device.type == "cuda"
            self.engine, self.model_label, self.spk_mix, self.request = None, "", None, None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()  # hand the memory back to other programs, not just to torch's cache
        return Reply("No model loaded")

    def current(self) -> tuple[Reply, list[str]]:
        """What a freshly opened page shows: the loaded model (shared by all pages) and its speakers."""
        engine = self.engine
        if engine is None:
            return Reply("No model loaded"), []
        speakers = sorted(engine.speakers, key=engine.speakers.get) or [str(i) for i in range(engine.n_speakers)]
        extras = ""
        if self.request is not None:
            named = [(what, path) for what, path in (
                ("k-means", self.request.cluster_model_path), ("index", self._index_path),
                ("diffusion", self.request.diffusion_model_path)) if path]
            extras = "".join(f"; {what}: {Path(path).relative_to(self.root).as_posix()}" for what, path in named)
        return Reply(f"Loaded {self.model_label} on {engine.device} ({engine.sr} Hz, speakers: "
                     f"{', '.join(speakers)}){extras}"), speakers

    # ----- Convert tab -------------------------------------------------------------------------------

    def convert(
        self, audio_file: str | None, speaker: str | None, values: dict[str, Any],
        progress: Callable[..., Any] | None = None, show_progress: bool = False,
    ) -> ConvertResult:
        """Convert one uploaded or recorded clip; the result goes to results/ under the CLI's name."""
        try:
            if self.engine is None or self.request is None:
                raise InferenceError("no model loaded; pick one in the Model tab and press Load")
            options, request = options_from_values(values)
            source = self.uploaded(audio_file, "audio")
            audio, sr = load_audio(source)
            mix = None
            if request["use_spk_mix"]:
                if self.spk_mix is None:
                    raise InferenceError("speaker mix is on but no timeline was validated (Tools tab)")
                mix = self.spk_mix
            diffusion: DiffusionOptions = request["diffusion"]
            with self._lock:
                engine, batch = self._engine_for(diffusion, request["cluster_infer_ratio"],
                                                 request["feature_retrieval"])
                speaker = speaker if speaker not in (None, "") else (min(engine.speakers, key=engine.speakers.get)
                                                                      if engine.speakers else "0")
                if mix is None:
                    engine.resolve_speaker(speaker)
                unit_mixer = unit_mixer_for(batch, engine, [] if mix is not None else [speaker], mix is not None)
                options = dataclasses.replace(options, speaker=speaker, spk_mix=mix, unit_mixer=unit_mixer)
                if progress is not None:
                    progress(0.0, desc="converting")
                converted = engine.convert(audio, sr, options, show_progress=show_progress)
            name = output_name(safe_file_name(source.stem, "audio"), options.transpose, safe_file_name(str(speaker)),
                               options.f0_predictor, request["wav_format"], auto_f0=options.auto_predict_f0,
                               spk_mix=mix is not None, cluster_ratio=request["cluster_infer_ratio"],
                               mode=output_mode(diffusion))
            out = self.results_dir / name
            save_audio(out, converted, engine.sr)
            if progress is not None:
                progress(0.95, desc="F0 picture")
            curves = f0_curves(audio, sr, converted, engine.sr, engine.hop_length, options.transpose,
                               options.auto_predict_f0)
        except SvcError as e:
            return ConvertResult(self.error(e))
        seconds = len(converted) / engine.sr
        return ConvertResult(Reply(f"Converted {seconds:.2f} s -> {out.name}"), out, f0_figure(curves), curves)

    def _engine_for(self, diffusion: DiffusionOptions, ratio: float,
                    feature_retrieval: bool) -> tuple[SvcEngine, BatchRequest]:
        """The engine for these diffusion options (rebuilt through load_engine when they differ from the
        loaded one's) and the request describing it with the cluster settings. Caller holds the lock."""
        assert self.request is not None and self.engine is not None
        if (diffusion.shallow or diffusion.only) and not str(self.request.diffusion_model_path):
            raise InferenceError("shallow / only diffusion needs a diffusion model: pick one in the Model tab "
                                 "and press Load")
        if ratio > 0:
            path = self._index_path if feature_retrieval else self.request.cluster_model_path
            if not path:
                what = "feature index" if feature_retrieval else "k-means model"
                raise InferenceError(f"a cluster / retrieval ratio above 0 needs a {what}: pick one in the Model tab "
                                     f"and press Load")
        else:
            path = ""
        # The post-processing step is built with its options (load_engine may also switch the enhancer off),
        # so other options mean a rebuild; on failure the loaded engine stays as it was.
        wanted = dataclasses.replace(diffusion)
        if wanted != self._built_diffusion:
            request = dataclasses.replace(self.request, diffusion=dataclasses.replace(diffusion),
                                          vocoder_dir=self._vocoder_dir(diffusion))
            self.engine = load_engine(request)
            self.request, self._built_diffusion = request, wanted
        batch = dataclasses.replace(self.request, cluster_model_path=path, cluster_infer_ratio=ratio,
                                    feature_retrieval=feature_retrieval)
        return self.engine, batch

    def _vocoder_dir(self, diffusion: DiffusionOptions) -> Path | None:
        """The enhancer's vocoder is the project's pretrain/nsf_hifigan (the command line's default, relative to
        its working folder); the diffusion steps use their config's vocoder."""
        if diffusion.enhance and not (diffusion.shallow or diffusion.only):
            return self.pretrain_dir / "nsf_hifigan"
        return None

    # ----- Tools tab ---------------------------------------------------------------------------------

    def mix_models(self, choices: Sequence[str], rates_text: str, mode: str, name: str) -> tuple[Reply, Path | None]:
        """Static mix of scanned models into trained/<name>/ (with the first model's config), so it is listed."""
        from modules.model_mix import mix_checkpoints

        try:
            models = self.models()
            missing = [c for c in choices if c not in models]
            if missing:
                raise InferenceError(f"model '{missing[0]}' is not in the scan; press Refresh")
            rates = _parse_rates(rates_text, len(choices))
            folder = self.root / "trained" / safe_file_name(name, "mixed")
            others = sorted(p.name for p in folder.glob("*") if p.name not in ("model.pth", "config.json"))
            if others:  # a second .pth/.json would make that folder unusable for the scan
                raise InferenceError(f"trained/{folder.name} already holds another model ({others[0]}); "
                                     f"choose another name")
            out = mix_checkpoints([models[c].model for c in choices], rates, mode, folder / "model.pth")
            shutil.copyfile(models[choices[0]].config, folder / "config.json")
        except SvcError as e:
            return self.error(e), None
        return Reply(f"Mixed {len(choices)} models ({mode}) -> {out.relative_to(self.root).as_posix()}"), out

    def compress_model(self, choice: str | None, half: bool) -> tuple[Reply, Path | None]:
        """Release file of a scanned model, written next to it."""
        from modules.compress import compress_checkpoint

        try:
            entry = self.models().get(choice or "")
            if entry is None:
                raise InferenceError(f"model '{choice}' is not in the scan; press Refresh")
            out = compress_checkpoint(entry.model, entry.config, half=bool(half))
        except SvcError as e:
            return self.error(e), None
        size = out.stat().st_size / 2**20
        return Reply(f"Wrote {out.relative_to(self.root).as_posix()} ({size:.1f} MiB)"), out

    def validate_spk_mix(self, text: str | None, upload: str | None = None) -> tuple[Reply, str]:
        """Check a timeline (typed, or an uploaded spkmix.py) against the loaded model; keep it on success."""
        path = self.upload_dir / "spkmix_typed.py"
        try:
            if self.engine is None:
                raise InferenceError("load a model first: the timeline is checked against its speakers")
            if upload:
                text = self.uploaded(upload, "speaker-mix file").read_text(encoding="utf-8", errors="replace")
            if not text or not text.strip():
                raise InferenceError("the speaker-mix timeline is empty")
            if "spk_mix_map" not in text:
                text = f"spk_mix_map = {text}"
            path.write_text(text, encoding="utf-8")
            mix = load_spk_mix(path, self.engine.speakers, self.engine.n_speakers)
        except SvcError as e:
            return self.error(InferenceError(str(e).replace(str(path), "timeline"))), text or ""
        if not mix.enabled:
            self.spk_mix = None
            return Reply("valid, but it has fewer than two speakers: mixing stays off"), text
        self.spk_mix = mix
        return Reply(f"valid timeline for {len(mix.speaker_ids)} speakers; tick 'Use the speaker-mix timeline'"), text


def _parse_rates(text: str, count: int) -> list[float]:
    parts = [p for p in re.split(r"[,\s]+", (text or "").strip()) if p]
    if not parts:
        return [100.0] * count
    try:
        rates = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"rates must be numbers separated by commas, got '{text}'") from None
    if len(rates) != count:
        raise ConfigError(f"{count} models selected but {len(rates)} rates given")
    return rates


# ------------------------------------------------------------------------------------------- F0 picture


def f0_curves(
    source: np.ndarray, source_sr: int, output: np.ndarray, sr: int, hop: int, transpose: float, auto_f0: bool,
) -> dict[str, np.ndarray]:
    """Input, requested (input times 2^(t/12); absent with auto F0) and output F0 in Hz per frame, 0 = unvoiced."""
    predictor = get_f0_predictor(PLOT_F0_PREDICTOR, hop_length=hop, sampling_rate=sr)
    f0_in = np.asarray(predictor.compute_f0(resample(source, source_sr, sr)), dtype=np.float64)
    f0_out = np.asarray(predictor.compute_f0(output), dtype=np.float64)
    n = min(len(f0_in), len(f0_out))
    curves = {"input": f0_in[:n], "output": f0_out[:n], "times": np.arange(n) * hop / sr}
    if not auto_f0:
        curves["requested"] = f0_in[:n] * 2.0 ** (transpose / 12.0)
    return curves


def f0_figure(curves: dict[str, np.ndarray]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"input": ("#999999", "-"), "requested": ("#1f77b4", "--"), "output": ("#d62728", "-")}
    for key, (colour, line) in styles.items():
        if key in curves:
            ax.plot(curves["times"], np.where(curves[key] > 0, curves[key], np.nan), line, color=colour, label=key,
                    linewidth=1.2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("F0 (Hz); gaps: unvoiced")
    ax.legend(loc="upper right", title=f"measured with {PLOT_F0_PREDICTOR}", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- app


def _component(gr: Any, f: ConvertField) -> Any:
    common = {"label": f.label, "value": f.default, "info": f.info or None}
    if f.kind == "number":
        return gr.Number(minimum=f.minimum, maximum=f.maximum, **common)
    if f.kind == "slider":
        return gr.Slider(minimum=f.minimum, maximum=f.maximum, step=f.step, **common)
    if f.kind == "checkbox":
        return gr.Checkbox(**common)
    if f.kind == "dropdown":
        return gr.Dropdown(choices=list(f.choices), **common)
    if f.kind == "radio":
        return gr.Radio(choices=list(f.choices), **common)
    raise ValueError(f"unknown field kind {f.kind}")


def guarded(handler: Callable[..., tuple], n_outputs: int, status_index: int = 0) -> Callable[..., tuple]:
    """`handler` for Gradio: an unexpected exception (a bug, CUDA out of memory...) is logged with its
    traceback on the server and shown in the page as one line in the status output; other outputs keep
    their values. Project errors never get here: the WebUI methods turn them into messages."""
    import functools

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> tuple:
        try:
            return handler(*args, **kwargs)
        except Exception as e:  # the page must get a message and the server must keep serving
            logger.exception("web UI: %s failed", getattr(handler, "__name__", "handler"))
            import gradio as gr

            outputs = [gr.update() for _ in range(n_outputs)]
            outputs[status_index] = Reply(f"internal error ({type(e).__name__}: {e}); details in the server log",
                                          ok=False).markdown
            return tuple(outputs)

    return wrapper


def build_app(ui: WebUI) -> Any:
    """The Blocks: Model, Convert and Tools tabs wired to `ui`'s callbacks."""
    import gradio as gr

    choices = ui.model_choices()

    def optional(names):  # an optional-file picker: the newest file preselected, "(none)" always offered
        return gr.update(choices=[*names, NO_FILE], value=names[0] if names else NO_FILE)

    def shown_file(path):  # an empty file box is large: show it only with a file in it
        return gr.update(value=str(path) if path else None, visible=bool(path))

    def refresh():
        names = ui.model_choices()
        extras = ui.extras()
        return gr.update(choices=names, value=names[0] if names else None), gr.update(choices=names, value=[]), \
            gr.update(choices=names, value=names[0] if names else None), optional(list(extras.kmeans)), \
            optional(list(extras.indexes)), optional(list(extras.diffusion))

    def load(choice, model_file, config_file, device, fast, backend, kmeans, index, diffusion):
        reply, speakers = ui.load_model(choice, model_file, config_file, device, fast, backend, kmeans, index,
                                        diffusion)
        return reply.markdown, gr.update(choices=speakers, value=speakers[0] if speakers else None)

    def unload():
        return ui.unload_model().markdown, gr.update(choices=[], value=None)

    def on_page_load():
        reply, speakers = ui.current()
        return (*refresh(), reply.markdown, gr.update(choices=speakers, value=speakers[0] if speakers else None))

    def convert(audio_file, speaker, *values, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio injects it)
        result = ui.convert(audio_file, speaker, dict(zip(FIELD_NAMES, values)), progress=progress,
                            show_progress=True)
        path = str(result.output) if result.output else None
        # Only diffusion converts for the diffusion config's speakers: the list follows the engine in use.
        speakers = ui.current()[1]
        keep = speaker if speaker in speakers else (speakers[0] if speakers else None)
        return result.reply.markdown, path, shown_file(path), result.f0_figure, gr.update(choices=speakers, value=keep)

    def mix(selected, rates, mode, name):
        reply, out = ui.mix_models(selected or [], rates, mode, name)
        return reply.markdown, shown_file(out)

    def compress(choice, half):
        reply, out = ui.compress_model(choice, half)
        return reply.markdown, shown_file(out)

    def validate(text, upload):
        reply, text = ui.validate_spk_mix(text, upload)
        return reply.markdown, text

    with gr.Blocks(title="svc41 web UI", analytics_enabled=False) as app:  # no calls home
        gr.Markdown("## svc41: singing voice conversion (so-vits-svc 4.1 models)")
        with gr.Tab("Model"):
            with gr.Row():
                model_choice = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                                           label="Model (scan of logs/44k/ and trained/)", elem_id="model_choice")
                refresh_btn = gr.Button("Refresh", elem_id="refresh", scale=0)
            with gr.Accordion("...or upload a G file and its config.json", open=False), gr.Row():
                model_upload = gr.File(label="G_*.pth", file_types=[".pth"], type="filepath")
                config_upload = gr.File(label="config.json", file_types=[".json"], type="filepath")
            with gr.Row():
                device = gr.Dropdown(choices=available_devices(), value="auto", label="Device")
                fast = gr.Checkbox(value=False, label="Fast (reduced precision)",
                                   info="--fast: bf16 on CPUs that have it, fp16 on GPU")
                backend = gr.Radio(choices=list(BACKENDS), value="torch", label="Backend",
                                   info="--backend: onnx runs the exported graph (<model>_SoVits.onnx next to the "
                                        "model, exported on first use) on onnxruntime; device and fast do not apply")
            with gr.Accordion("Cluster / feature index and diffusion model (used when the Convert tab asks)",
                              open=False), gr.Row():
                extras = ui.extras()
                kmeans_choice, index_choice, diffusion_choice = (
                    gr.Dropdown(choices=[*names, NO_FILE], value=names[0] if names else NO_FILE, label=label,
                                elem_id=elem_id)
                    for names, label, elem_id in (
                        (list(extras.kmeans), "K-means model (-cm)", "kmeans_choice"),
                        (list(extras.indexes), "Feature index (-cm with -fr)", "index_choice"),
                        (list(extras.diffusion), "Diffusion model (-dm, with its folder's config.yaml)",
                         "diffusion_choice")))
            with gr.Row():
                load_btn = gr.Button("Load", variant="primary", elem_id="load")
                unload_btn = gr.Button("Unload", elem_id="unload")
            model_status = gr.Markdown("No model loaded", elem_id="model_status")
        with gr.Tab("Convert"), gr.Row():
            with gr.Column():
                audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Input audio",
                                    elem_id="audio_in")
                speaker = gr.Dropdown(choices=[], label="Speaker", elem_id="speaker")
                by_name = {f.target: _component(gr, f) for f in CONVERT_FIELDS if not f.group}
                for group, title in GROUP_TITLES.items():
                    with gr.Accordion(title, open=False):
                        by_name.update({f.target: _component(gr, f) for f in CONVERT_FIELDS if f.group == group})
                convert_btn = gr.Button("Convert", variant="primary", elem_id="convert")
            with gr.Column():
                convert_status = gr.Markdown("", elem_id="convert_status")
                audio_out = gr.Audio(type="filepath", label="Result", interactive=False, elem_id="audio_out")
                download = gr.File(label="Download", interactive=False, elem_id="download", visible=False)
                f0_plot = gr.Plot(label="F0: input, requested and output", elem_id="f0_plot")
        field_components = [by_name[name] for name in FIELD_NAMES]
        with gr.Tab("Tools"):
            with gr.Accordion("Static model mixing", open=True):
                mix_models = gr.Dropdown(choices=choices, multiselect=True, label="Models (same config)")
                mix_rates = gr.Textbox(label="Rates (percent, one per model, comma separated)", value="")
                mix_mode = gr.Radio(choices=[(v, k) for k, v in MIX_MODE_LABELS.items()], value="exact",
                                    label="Mode")
                mix_name = gr.Textbox(label="Name (written to trained/<name>/model.pth)", value="mixed")
                mix_btn = gr.Button("Mix")
                mix_status = gr.Markdown("")
                mix_file = gr.File(label="Mixed model", interactive=False, visible=False)
            with gr.Accordion("Compression (release file without training-only weights)", open=True):
                with gr.Row():
                    compress_choice = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                                                  label="Model")
                    compress_half = gr.Checkbox(label="float16 (half the size)", value=False)
                compress_btn = gr.Button("Compress", elem_id="compress")
                compress_status = gr.Markdown("", elem_id="compress_status")
                compress_file = gr.File(label="Release file", interactive=False, visible=False)
            with gr.Accordion("Speaker-mix timeline (spkmix.py)", open=True):
                mix_text = gr.Code(value=_default_timeline(ui.root), language="python",
                                   label="spk_mix_map = {speaker id: [[t_start, t_end, v_start, v_end], ...]}")
                mix_upload = gr.File(label="...or upload a spkmix.py", file_types=[".py"], type="filepath")
                validate_btn = gr.Button("Validate and use")
                validate_status = gr.Markdown("")

        status_outputs = [model_choice, mix_models, compress_choice, kmeans_choice, index_choice, diffusion_choice]
        refresh_btn.click(guarded(refresh, 6), outputs=status_outputs)
        # A page opened later shows the models trained since start and the model already loaded.
        app.load(guarded(on_page_load, 8, 6), outputs=[*status_outputs, model_status, speaker])
        load_btn.click(guarded(load, 2), inputs=[model_choice, model_upload, config_upload, device, fast, backend, kmeans_choice,
                                                      index_choice, diffusion_choice],
                       outputs=[model_status, speaker])
        unload_btn.click(guarded(unload, 2), outputs=[model_status, speaker])
        convert_btn.click(guarded(convert, 5), inputs=[audio_in, speaker, *field_components],
                          outputs=[convert_status, audio_out, download, f0_plot, speaker])
        mix_btn.click(guarded(mix, 2), inputs=[mix_models, mix_rates, mix_mode, mix_name],
                      outputs=[mix_status, mix_file])
        compress_btn.click(guarded(compress, 2), inputs=[compress_choice, compress_half],
                           outputs=[compress_status, compress_file])
        validate_btn.click(guarded(validate, 2), inputs=[mix_text, mix_upload], outputs=[validate_status, mix_text])
    return app


def _default_timeline(root: Path) -> str:
    path = root / "spkmix.py"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return "spk_mix_map = {\n    0: [[0.0, 1.0, 1.0, 0.0]],\n    1: [[0.0, 1.0, 0.0, 1.0]],\n}\n"
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip() + "\n"


def exposure_warning(host: str) -> str | None:
    """The warning for binding anything but loopback (None for loopback)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return f"binding {host}: anyone who can reach this machine on the network can use the web UI and its models"


def use_upload_folder(folder: Path) -> Path:
    """Point Gradio's upload/cache folder at `folder` (read when components are built), so that the
    callbacks can accept uploaded paths only from inside it."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def launch(
    root: str | os.PathLike = ".", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, share: bool = False,
    inbrowser: bool = False, pretrain_dir: str | os.PathLike | None = None, prevent_thread_lock: bool = False,
) -> tuple[Any, WebUI]:
    """Start the server (blocking unless `prevent_thread_lock`); uploads live in a fresh temp folder."""
    upload_dir = use_upload_folder(Path(tempfile.mkdtemp(prefix="svc41-webui-")))
    atexit.register(shutil.rmtree, upload_dir, ignore_errors=True)  # uploaded songs do not pile up in /tmp
    warning = exposure_warning(host)
    if warning:
        logger.warning(warning)
    if share:
        logger.warning("--share publishes the web UI through a public Gradio link")
    ui = WebUI(root, upload_dir=upload_dir, pretrain_dir=pretrain_dir)
    app = build_app(ui)
    app.queue(default_concurrency_limit=1)
    ui.results_dir.mkdir(parents=True, exist_ok=True)
    # Only results and the model folders (for the mixed / compressed files) may be served back.
    allowed = [str(ui.results_dir)] + [str(ui.root / f) for f in ui.model_folders]
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks, one line each
    app.launch(server_name=host, server_port=port, share=share, inbrowser=inbrowser, show_error=False,
               allowed_paths=allowed, prevent_thread_lock=True, quiet=True)
    logger.info("web UI at %s%s (Ctrl-C stops it)", app.local_url,
                f" and {app.share_url}" if share and app.share_url else "")
    if not prevent_thread_lock:
        app.block_thread()
    return app, ui
