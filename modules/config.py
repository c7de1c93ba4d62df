"""One config loader for `config.json` (so-vits) and `diffusion.yaml` (shallow diffusion).

Configs become `HParams` objects that allow both attribute and item access
(`hps.train.batch_size`, `hps["train"]["batch_size"]`). Loading validates against the
templates in `configs_template/`: a missing field takes the template's default (with a
warning, so 4.0-era configs load with the 4.1 defaults), a field of the wrong type or an
unknown speech encoder / vocoder raises `ConfigError` naming the field and the file.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import yaml

from modules.atomic_write import write_text
from modules.errors import ConfigError
from vencoder import SPEECH_ENCODERS, encoder_names

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = PROJECT_ROOT / "configs_template"
CONFIG_TEMPLATE = TEMPLATE_DIR / "config_template.json"
TINY_CONFIG_TEMPLATE = TEMPLATE_DIR / "config_tiny_template.json"
DIFFUSION_TEMPLATE = TEMPLATE_DIR / "diffusion_template.yaml"

VOCODERS = ("nsf-hifigan", "nsf-snake-hifigan")
DIFFUSION_VOCODERS = ("nsf-hifigan", "nsf-hifigan-log10")
DIFFUSION_METHODS = ("dpm-solver++", "dpm-solver", "pndm", "ddim", "unipc")

# Fields this project adds to so-vits-svc 4.1's config; their defaults give the original's behaviour.
EXTENSION_FIELDS = frozenset({"model.discriminator_width", "model.mask_unvoiced_f0"})
# Discriminator widths whose channel counts divide the scale discriminator's conv groups.
DISCRIMINATOR_WIDTHS = (1.0, 0.5, 0.25)

# Sections whose keys are free-form (speaker maps): not checked against the template.
_FREE_FORM_SECTIONS = {"spk"}


class HParams:
    """Nested attribute dictionary. Sub-dicts become `HParams`; lists stay lists."""

    def __init__(self, **entries: Any) -> None:
        for key, value in entries.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, HParams):
            value = HParams(**value)
        self.__dict__[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.__dict__[key]

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.__dict__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HParams):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    def keys(self):
        return self.__dict__.keys()

    def items(self):
        return self.__dict__.items()

    def values(self):
        return self.__dict__.values()

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, HParams) else copy.deepcopy(v) for k, v in self.items()}

    def __repr__(self) -> str:
        return f"HParams({self.to_dict()!r})"


def _read_mapping(path: Path, parse: Callable[[IO[str]], Any], kind: str, errors: tuple[type[Exception], ...],
                  what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = parse(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except errors as e:
        raise ConfigError(f"{path}: not valid {kind} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a {kind} mapping at the top level")
    return data


def read_json_object(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """A JSON file whose top level is an object; ConfigError naming the file otherwise."""
    return _read_mapping(Path(path), json.load, "JSON", (json.JSONDecodeError, UnicodeDecodeError), what)


def _read_yaml(path: Path) -> dict[str, Any]:
    return _read_mapping(path, yaml.safe_load, "YAML", (yaml.YAMLError, UnicodeDecodeError), "config file")


def _type_ok(value: Any, default: Any) -> bool:
    """Whether `value` may stand where the template has `default`."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        # JSON writes 1.0 as 1 and users write 1e-4 as a string rarely; ints and floats mix freely.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        # The original stores `port` as a string; accept an int there too.
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _as_template_type(value: Any, default: Any) -> Any:
    """The value in the template's number type, so readers need no casts: 512.0 where 512 stands becomes
    512, and 1 where 1.0 stands becomes 1.0. A fractional value where the template has a whole number is
    kept (weights such as c_mel may be fractional)."""
    if isinstance(default, bool) or isinstance(value, bool) or value is None:
        return value
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    return value


def _merge_with_template(data: dict[str, Any], template: dict[str, Any], path: Path, prefix: str = "") -> dict:
    """Fill missing fields from the template and check types, recursively."""
    merged = dict(data)
    for key, default in template.items():
        name = f"{prefix}{key}"
        if key not in data:
            if prefix == "" and key in _FREE_FORM_SECTIONS:
                merged[key] = copy.deepcopy(default)
                continue
            # so-vits-svc 4.1's configs lack this project's own fields: those default quietly
            log = logger.debug if name in EXTENSION_FIELDS else logger.warning
            log("%s: field '%s' is missing; using the template default %r", path, name, default)
            merged[key] = copy.deepcopy(default)
            continue
        value = data[key]
        if not _type_ok(value, default):
            raise ConfigError(
                f"{path}: field '{name}' should be {type(default).__name__} like {default!r}, got {value!r}"
            )
        merged[key] = _as_template_type(value, default)
        if isinstance(default, dict) and key not in _FREE_FORM_SECTIONS:
            merged[key] = _merge_with_template(value, default, path, prefix=f"{name}.")
    return merged


def _check_encoder_name(encoder: Any, field: str, path: Path) -> None:
    spec = SPEECH_ENCODERS.get(encoder) if isinstance(encoder, str) else None
    if spec is None or not spec.built:
        state = "not built in this version" if spec is not None else "not a known speech encoder"
        raise ConfigError(f"{path}: field '{field}' is {encoder!r}, {state} (available: {', '.join(encoder_names())})")


def _check_so_vits_fields(cfg: dict[str, Any], path: Path) -> None:
    model, data = cfg["model"], cfg["data"]
    _check_encoder_name(model["speech_encoder"], "model.speech_encoder", path)
    vocoder = model["vocoder_name"]
    if vocoder not in VOCODERS:
        raise ConfigError(f"{path}: field 'model.vocoder_name' is {vocoder!r}; expected one of {', '.join(VOCODERS)}")
    hop = data["hop_length"]
    product = 1
    for rate in model["upsample_rates"]:
        product *= rate
    if product != hop:
        raise ConfigError(
            f"{path}: field 'model.upsample_rates' multiplies to {product}, but 'data.hop_length' is {hop}; they must match"
        )
    if model["discriminator_width"] not in DISCRIMINATOR_WIDTHS:
        raise ConfigError(f"{path}: field 'model.discriminator_width' is {model['discriminator_width']!r}; "
                          f"expected one of {', '.join(map(str, DISCRIMINATOR_WIDTHS))}")
    spk = cfg.get("spk", {})
    if not isinstance(spk, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in spk.values()):
        raise ConfigError(f"{path}: field 'spk' must map speaker names to integer ids")
    if spk and max(spk.values()) >= model["n_speakers"]:
        raise ConfigError(
            f"{path}: speaker id {max(spk.values())} in 'spk' is not below 'model.n_speakers' ({model['n_speakers']})"
        )


def _check_diffusion_fields(cfg: dict[str, Any], path: Path) -> None:
    _check_encoder_name(cfg["data"]["encoder"], "data.encoder", path)
    vocoder = cfg["vocoder"]["type"]
    if vocoder not in DIFFUSION_VOCODERS:
        raise ConfigError(f"{path}: field 'vocoder.type' is {vocoder!r}; expected one of {', '.join(DIFFUSION_VOCODERS)}")
    method = cfg["infer"]["method"]
    if method not in DIFFUSION_METHODS:
        raise ConfigError(f"{path}: field 'infer.method' is {method!r}; expected one of {', '.join(DIFFUSION_METHODS)}")


def load_template(tiny: bool = False) -> dict[str, Any]:
    """The so-vits config template as a plain dict."""
    return read_json_object(TINY_CONFIG_TEMPLATE if tiny else CONFIG_TEMPLATE)


def load_diffusion_template() -> dict[str, Any]:
    return _read_yaml(DIFFUSION_TEMPLATE)


def load_config(path: str | os.PathLike) -> HParams:
    """Load and validate a so-vits `config.json`."""
    path = Path(path)
    data = read_json_object(path)
    merged = _merge_with_template(data, load_template(), path)
    _check_so_vits_fields(merged, path)
    return HParams(**merged)


def load_diffusion_config(path: str | os.PathLike) -> HParams:
    """Load and validate a diffusion `diffusion.yaml` / `config.yaml`."""
    path = Path(path)
    data = _read_yaml(path)
    merged = _merge_with_template(data, load_diffusion_template(), path)
    _check_diffusion_fields(merged, path)
    return HParams(**merged)


def save_config(cfg: HParams | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a so-vits config as JSON with indent 2, like the original."""
    data = cfg.to_dict() if isinstance(cfg, HParams) else dict(cfg)
    write_text(Path(path), json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_diffusion_config(cfg: HParams | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a diffusion config as YAML (keys sorted, as the original's yaml.dump)."""
    data = cfg.to_dict() if isinstance(cfg, HParams) else dict(cfg)
    write_text(Path(path), yaml.safe_dump(data, allow_unicode=True, sort_keys=True))
