"""Silence slicer: split a recording into voiced and silent sample ranges.

Two users share it:

* the inference engine, which converts voiced ranges and outputs silent ones as zeros
  (`slice_audio`, the openvpi audio-slicer rules with so-vits-svc 4.1's parameters);
* `resample.py --slice`, which cuts long recordings into training clips of about 5-15 s
  (`dataset_clips`).

The silence rules (openvpi audio-slicer): frame RMS is measured every `hop_ms` over windows of
min(`min_interval_ms`, 4 hops). A run of frames below `threshold_db` (dBFS) becomes a cut when it
lasts at least `min_interval_ms` and the clip before it is at least `min_length_ms` long. At most
`max_sil_kept_ms` of silence stays attached to each side of a cut, and the cut points sit on the
quietest frames. Leading silence longer than `max_sil_kept_ms` and trailing silence longer than
`min_interval_ms` are cut off as silent ranges.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from modules.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlicerParams:
    """Slicer settings in milliseconds and dBFS; defaults are so-vits-svc 4.1 inference's."""

    threshold_db: float = -40.0
    min_length_ms: float = 5000.0
    min_interval_ms: float = 300.0
    hop_ms: float = 20.0
    max_sil_kept_ms: float = 5000.0

    def check(self) -> None:
        """Raise ConfigError unless min_length >= min_interval >= hop and max_sil_kept >= hop."""
        if self.hop_ms <= 0:
            raise ConfigError(f"hop_ms must be positive, got {self.hop_ms}")
        if not self.min_length_ms >= self.min_interval_ms >= self.hop_ms:
            raise ConfigError(
                "slicer needs min_length_ms >= min_interval_ms >= hop_ms, got "
                f"{self.min_length_ms}, {self.min_interval_ms}, {self.hop_ms}"
            )
        if self.max_sil_kept_ms < self.hop_ms:
            raise ConfigError(f"max_sil_kept_ms ({self.max_sil_kept_ms}) must be at least hop_ms ({self.hop_ms})")


class Segment(NamedTuple):
    """A half-open sample range [start, end); `is_silent` marks a range the slicer cut away.

    A tuple, so `start, end, is_silent = segment` and `segment == (0, n, False)` work.
    """

    start: int
    end: int
    is_silent: bool

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class _Frames:
    """The slicer's parameters converted to RMS frames at one sample rate."""

    hop: int
    win: int
    min_length: int
    min_interval: int
    max_kept: int

    @classmethod
    def from_params(cls, params: SlicerParams, sr: int) -> "_Frames":
        params.check()
        hop = max(1, round(sr * params.hop_ms / 1000))
        return cls(
            hop=hop,
            win=min(round(sr * params.min_interval_ms / 1000), 4 * hop),
            min_length=round(sr * params.min_length_ms / 1000 / hop),
            min_interval=round(sr * params.min_interval_ms / 1000 / hop),
            max_kept=round(sr * params.max_sil_kept_ms / 1000 / hop),
        )


def frame_rms(audio: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Centred frame RMS: frame i covers the `win` samples around sample i*hop, zero padded at the ends.

    Same values as librosa.feature.rms(center=True, pad_mode="constant"), computed from a running sum
    of squares: no [frames, win] matrix and no padded copy, so hour-long recordings stay affordable.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n, pad = audio.size, win // 2
    n_frames = 1 + (n + 2 * pad - win) // hop if n + 2 * pad >= win else 0
    if n_frames <= 0:
        return np.zeros(0, dtype=np.float32)
    sums = np.empty(n + 1, dtype=np.float64)
    sums[0] = 0.0
    np.cumsum(np.square(audio), dtype=np.float64, out=sums[1:])
    starts = np.arange(n_frames, dtype=np.int64) * hop - pad
    lo, hi = np.clip(starts, 0, n), np.clip(starts + win, 0, n)
    power = np.maximum(sums[hi] - sums[lo], 0.0) / win
    return np.sqrt(power).astype(np.float32)


def _cut_for_run(rms: np.ndarray, run_start: int, run_end: int, max_kept: int) -> tuple[int, int]:
    """Frames [a, b) of a quiet run [run_start, run_end) to remove, keeping <= max_kept frames each side.

    A run short enough to keep whole becomes a single cut point at its quietest frame (a == b).
    """
    def quietest(lo: int, hi: int) -> int:
        return lo + int(np.argmin(rms[lo:hi + 1]))

    length = run_end - run_start
    if length <= max_kept:
        pos = quietest(run_start, run_end)
        return (0, pos) if run_start == 0 else (pos, pos)
    left = quietest(run_start, run_start + max_kept)
    right = quietest(run_end - max_kept, run_end)
    if run_start == 0:
        return 0, right
    if length <= 2 * max_kept:
        # The kept margins overlap: the quietest frame of the overlap may widen the cut.
        mid = quietest(run_end - max_kept, run_start + max_kept)
        return min(left, mid), max(right, mid)
    return left, right


def _silence_cuts(rms: np.ndarray, threshold: float, fr: _Frames) -> list[tuple[int, int]]:
    """Frame ranges to cut away, in order; (a, a) ranges are cut points that remove nothing."""
    cuts: list[tuple[int, int]] = []
    run_start: int | None = None
    clip_start = 0
    for i, value in enumerate(rms):
        if value < threshold:
            if run_start is None:
                run_start = i
            continue
        if run_start is None:
            continue
        leading = run_start == 0 and i > fr.max_kept
        splits_clip = i - run_start >= fr.min_interval and i - clip_start >= fr.min_length
        if leading or splits_clip:
            cut = _cut_for_run(rms, run_start, i, fr.max_kept)
            cuts.append(cut)
            clip_start = cut[1]
        run_start = None
    total = len(rms)
    if run_start is not None and total - run_start >= fr.min_interval:
        stop = min(total, run_start + fr.max_kept)
        pos = run_start + int(np.argmin(rms[run_start:stop + 1]))
        cuts.append((pos, total + 1))
    return cuts


def _segments_from_cuts(cuts: list[tuple[int, int]], hop: int, n: int) -> list[Segment]:
    segments: list[Segment] = []
    cursor = 0
    for a, b in cuts:
        start, end = min(a * hop, n), min(b * hop, n)
        if start > cursor:
            segments.append(Segment(cursor, start, False))
        if end > start:
            segments.append(Segment(start, end, True))
        cursor = max(cursor, end)
    if cursor < n:
        segments.append(Segment(cursor, n, False))
    return segments


def slice_audio(audio: np.ndarray, sr: int, params: SlicerParams | None = None, **overrides: float) -> list[Segment]:
    """Split mono `audio` into ordered Segments that cover every sample exactly once.

    `overrides` replace single SlicerParams fields (threshold_db=-30, ...). The threshold is absolute
    dBFS, as in the original. Audio no longer than min_length is returned as one voiced segment.
    """
    params = params or SlicerParams()
    if overrides:
        params = dataclasses.replace(params, **overrides)
    fr = _Frames.from_params(params, sr)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = len(audio)
    if n == 0:
        return []
    if n <= fr.min_length * fr.hop:
        return [Segment(0, n, False)]
    rms = frame_rms(audio, fr.win, fr.hop)
    cuts = _silence_cuts(rms, 10.0 ** (params.threshold_db / 20.0), fr)
    return _segments_from_cuts(cuts, fr.hop, n)


# --- training clips ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipParams:
    """Settings of `dataset_clips`. The threshold is relative to the recording's peak."""

    min_seconds: float = 5.0
    max_seconds: float = 15.0
    threshold_db: float = -40.0
    min_interval_ms: float = 300.0
    max_sil_kept_ms: float = 500.0  # short: training clips should not carry long silences
    hop_ms: float = 20.0
    min_keep_seconds: float = 1.0  # shorter left-overs (a last breath) are dropped

    def check(self) -> None:
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ConfigError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")


def _split_long(rms: np.ndarray, hop: int, start: int, end: int, min_len: int, max_len: int) -> list[tuple[int, int]]:
    """Cut [start, end) at its quietest frames until every piece is at most max_len samples."""
    length = end - start
    if length <= max_len:
        return [(start, end)]
    lo, hi = start + min_len, end - min_len
    if lo > hi:  # cannot keep both sides above min_len: cut somewhere in the middle half
        lo, hi = start + length // 4, end - length // 4
    first, last = -(-lo // hop), hi // hop  # frames whose centres lie in [lo, hi]
    last = min(last, len(rms) - 1)
    if first <= last:
        cut = (first + int(np.argmin(rms[first:last + 1]))) * hop
    else:
        cut = start + length // 2
    cut = min(max(cut, start + 1), end - 1)
    return (_split_long(rms, hop, start, cut, min_len, max_len)
            + _split_long(rms, hop, cut, end, min_len, max_len))


def dataset_clips(audio: np.ndarray, sr: int, params: ClipParams | None = None) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of training clips, about min_seconds..max_seconds each.

    Cuts at silences first (slice_audio with min_length = min_seconds); voiced stretches longer than
    max_seconds are then cut at their quietest frame (a breath or short gap between notes), and a short
    left-over is joined to the clip it touches when that stays within max_seconds.
    """
    params = params or ClipParams()
    params.check()
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0.0:
        return []
    slicer = SlicerParams(params.threshold_db, params.min_seconds * 1000.0, params.min_interval_ms,
                          params.hop_ms, params.max_sil_kept_ms)
    fr = _Frames.from_params(slicer, sr)
    normalised = audio / peak
    voiced = [s for s in slice_audio(normalised, sr, slicer) if not s.is_silent]
    rms = frame_rms(normalised, fr.win, fr.hop)
    min_len, max_len = round(params.min_seconds * sr), round(params.max_seconds * sr)
    pieces: list[tuple[int, int]] = []
    for seg in voiced:
        pieces.extend(_split_long(rms, fr.hop, seg.start, seg.end, min_len, max_len))
    clips: list[tuple[int, int]] = []
    for start, end in pieces:
        if clips and end - start < min_len and clips[-1][1] == start and end - clips[-1][0] <= max_len:
            clips[-1] = (clips[-1][0], end)
        elif clips and clips[-1][1] - clips[-1][0] < min_len and clips[-1][1] == start \
                and end - clips[-1][0] <= max_len:
            clips[-1] = (clips[-1][0], end)
        else:
            clips.append((start, end))
    kept = [c for c in clips if c[1] - c[0] >= params.min_keep_seconds * sr]
    if len(kept) < len(clips):
        logger.debug("dropped %d left-over pieces shorter than %.1f s", len(clips) - len(kept), params.min_keep_seconds)
    return kept
