"""Dynamic speaker mixing (`-usm`): read and validate a `spk_mix_map`, turn it into per-frame weights.

The map (format of so-vits-svc 4.1's `spkmix.py`) is

    spk_mix_map = {speaker_id: [[t_start, t_end, v_start, v_end], ...], ...}

Times are fractions 0..1 of the whole output; each speaker's segments are contiguous and cover 0..1;
inside a segment the weight ramps linearly from v_start to v_end. Per frame the weights are normalised
to sum to 1 (a frame where every weight is 0 gets 1/S each), and the speaker condition for that frame
is the weighted sum of the speakers' `emb_g` rows.

The map file is read with `ast.literal_eval`, never executed, so a map file cannot run code.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from modules.errors import InferenceError

MAP_VARIABLE = "spk_mix_map"
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MixSegment:
    t_start: float
    t_end: float
    v_start: float
    v_end: float


@dataclass(frozen=True)
class SpeakerMix:
    """A validated map: speaker ids (ascending) and each speaker's segments."""

    speaker_ids: tuple[int, ...]
    segments: tuple[tuple[MixSegment, ...], ...]

    @property
    def enabled(self) -> bool:
        """Mixing needs at least two speakers; the original silently disables it otherwise."""
        return len(self.speaker_ids) > 1

    def weights(self, times: np.ndarray) -> np.ndarray:
        """Normalised weights [S, len(times)] at output-time fractions `times` (clipped to 0..1)."""
        t = np.clip(np.asarray(times, dtype=np.float64), 0.0, 1.0)
        raw = np.stack([_evaluate(segs, t) for segs in self.segments])
        total = raw.sum(axis=0)
        uniform = np.full_like(raw, 1.0 / len(self.speaker_ids))
        safe = np.where(total > 0, total, 1.0)
        return np.where(total[None, :] > 0, raw / safe[None, :], uniform)

    def embedding(self, emb_table: torch.Tensor, times: np.ndarray) -> torch.Tensor:
        """Time-varying speaker condition [1, gin, T] from the rows of `emb_g.weight` [n_speakers, gin]."""
        w = torch.from_numpy(self.weights(times)).to(emb_table.device, emb_table.dtype)  # [S, T]
        rows = emb_table[list(self.speaker_ids)]  # [S, gin]
        return (rows.t() @ w).unsqueeze(0)


def _evaluate(segments: Sequence[MixSegment], t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        inside = (t >= seg.t_start) & ((t <= seg.t_end) if last else (t < seg.t_end))
        span = seg.t_end - seg.t_start
        frac = (t[inside] - seg.t_start) / span
        out[inside] = seg.v_start + (seg.v_end - seg.v_start) * frac
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def validate_spk_mix(
    mix_map: Any, speakers: Mapping[str, int] | None = None, n_speakers: int | None = None, source: str = "spk_mix_map"
) -> SpeakerMix:
    """Check a map and return it as a `SpeakerMix`; raise InferenceError naming `source` and the bad entry.

    `speakers` (the config's name -> id map) makes every configured speaker required, as in the
    original; keys may then also be speaker names. `n_speakers` bounds the ids.
    """
    if not isinstance(mix_map, Mapping):
        raise InferenceError(f"{source}: {MAP_VARIABLE} must be a dict {{speaker_id: [[t0, t1, v0, v1], ...]}}")
    if not mix_map:
        raise InferenceError(f"{source}: {MAP_VARIABLE} is empty")
    speakers = dict(speakers or {})
    resolved: dict[int, tuple[MixSegment, ...]] = {}
    for key, entries in mix_map.items():
        spk_id = _resolve_key(key, speakers, n_speakers, source)
        if spk_id in resolved:
            raise InferenceError(f"{source}: speaker {key!r} appears twice (as id {spk_id})")
        resolved[spk_id] = _validate_segments(key, entries, source)
    if speakers:
        missing = sorted(set(speakers.values()) - set(resolved))
        if missing:
            names = ", ".join(f"{n} ({i})" for n, i in sorted(speakers.items(), key=lambda kv: kv[1]) if i in missing)
            raise InferenceError(
                f"{source}: every speaker of the config needs an entry; missing {names}. "
                f"Give unused speakers [[0.0, 1.0, 0.0, 0.0]]"
            )
    ids = tuple(sorted(resolved))
    return SpeakerMix(ids, tuple(resolved[i] for i in ids))


def _resolve_key(key: Any, speakers: Mapping[str, int], n_speakers: int | None, source: str) -> int:
    if isinstance(key, str) and key in speakers:
        return speakers[key]
    if isinstance(key, bool) or not isinstance(key, int):
        known = f" (speakers: {', '.join(speakers)})" if speakers else ""
        raise InferenceError(f"{source}: key {key!r} is not a speaker id (an int) or a known speaker name{known}")
    if key < 0 or (n_speakers is not None and key >= n_speakers):
        raise InferenceError(f"{source}: speaker id {key} is out of range 0..{(n_speakers or 1) - 1}")
    if speakers and key not in speakers.values():
        raise InferenceError(f"{source}: speaker id {key} is not in the config's spk map ({dict(speakers)})")
    return key


def _validate_segments(key: Any, entries: Any, source: str) -> tuple[MixSegment, ...]:
    where = f"{source}: speaker {key!r}"
    if not isinstance(entries, (list, tuple)) or not entries:
        raise InferenceError(f"{where}: expected a non-empty list of [t_start, t_end, v_start, v_end]")
    segments: list[MixSegment] = []
    for i, seg in enumerate(entries):
        if not isinstance(seg, (list, tuple)) or len(seg) != 4 or not all(_is_number(x) for x in seg):
            raise InferenceError(f"{where}, segment {i}: expected 4 numbers [t_start, t_end, v_start, v_end], got {seg!r}")
        t0, t1, v0, v1 = (float(x) for x in seg)
        if not (0.0 <= t0 < t1 <= 1.0):
            raise InferenceError(f"{where}, segment {i}: times must satisfy 0 <= t_start < t_end <= 1, got {t0}, {t1}")
        if v0 < 0 or v1 < 0:
            raise InferenceError(f"{where}, segment {i}: weights must be >= 0, got {v0}, {v1}")
        if i == 0 and abs(t0) > _TOLERANCE:
            raise InferenceError(f"{where}: the first segment must start at 0, not {t0}")
        if i > 0 and abs(t0 - segments[-1].t_end) > _TOLERANCE:
            raise InferenceError(
                f"{where}, segment {i}: starts at {t0} but the previous segment ends at {segments[-1].t_end}; "
                f"segments must be contiguous"
            )
        segments.append(MixSegment(t0, t1, v0, v1))
    if abs(segments[-1].t_end - 1.0) > _TOLERANCE:
        raise InferenceError(f"{where}: the last segment must end at 1, not {segments[-1].t_end}")
    return tuple(segments)


def read_spk_mix_file(path: str | os.PathLike) -> Any:
    """The literal `spk_mix_map = {...}` assigned in a Python file, without executing the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InferenceError(f"{path}: speaker-mix file not found (copy spkmix.py from the project root)") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise InferenceError(f"{path}: not valid Python (line {e.lineno}: {e.msg})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == MAP_VARIABLE for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                raise InferenceError(
                    f"{path}: {MAP_VARIABLE} (line {node.lineno}) must be a plain literal dict of numbers and lists"
                ) from None
    raise InferenceError(f"{path}: no '{MAP_VARIABLE} = {{...}}' assignment found")


def load_spk_mix(
    path: str | os.PathLike, speakers: Mapping[str, int] | None = None, n_speakers: int | None = None
) -> SpeakerMix:
    """Read and validate a map file."""
    return validate_spk_mix(read_spk_mix_file(path), speakers, n_speakers, source=str(path))
