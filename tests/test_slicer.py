"""Silence slicer: cut positions against known pauses of synthetic singing, coverage, parameters."""
from __future__ import annotations

import numpy as np
import pytest

from modules.errors import ConfigError
from modules.slicer import ClipParams, Segment, SlicerParams, dataset_clips, frame_rms, slice_audio
from modules.synthetic_voices import Note, synth_notes

SR = 16000  # the slicer works at any rate; 16 kHz keeps synthesis cheap
TOL = 0.05  # seconds: RMS frames are 20 ms apart and 80 ms wide


def phrases(n_phrases: int, pause: tuple[float, float], seed: int, lead: float = 0.5,
            notes_per_phrase: tuple[int, int] = (4, 8)) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sung phrases separated by pauses; returns the audio and the exact pause intervals (seconds)."""
    rng = np.random.default_rng(seed)
    notes, pauses, t = [Note(0.0, lead)], [(0.0, lead)], lead
    for _ in range(n_phrases):
        for _ in range(int(rng.integers(*notes_per_phrase))):
            d = float(rng.uniform(0.3, 0.6))
            notes.append(Note(60.0 + float(rng.integers(-3, 4)), d, str(rng.choice(list("aeiou")))))
            t += d
        p = float(rng.uniform(*pause))
        notes.append(Note(0.0, p))
        pauses.append((t, t + p))
        t += p
    return synth_notes(notes, "alto", sr=SR, hop=160, seed=seed).audio, pauses


def in_pause(seconds: float, pauses: list[tuple[float, float]]) -> bool:
    return any(a - TOL <= seconds <= b + TOL for a, b in pauses)


@pytest.fixture(scope="module")
def song():
    return phrases(9, (0.5, 0.9), seed=3)


def check_cover(segments: list[Segment], n: int) -> None:
    assert segments[0].start == 0 and segments[-1].end == n
    for prev, cur in zip(segments, segments[1:]):
        assert prev.end == cur.start
    assert all(s.length > 0 for s in segments)


def test_frame_rms_matches_definition():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    rms = frame_rms(x, 200, 50)
    assert rms.shape == (1 + 1000 // 50,)
    padded = np.concatenate((np.zeros(100), x, np.zeros(100)))
    for i in (0, 7, 20):
        assert rms[i] == pytest.approx(np.sqrt(np.mean(padded[i * 50:i * 50 + 200] ** 2)), rel=1e-5)


def test_cuts_fall_inside_the_known_pauses(song):
    audio, pauses = song
    segments = slice_audio(audio, SR)
    check_cover(segments, len(audio))
    boundaries = [s.start / SR for s in segments[1:]]
    assert len(boundaries) >= 3, segments
    for b in boundaries:
        assert in_pause(b, pauses), (b, pauses)
    for s in segments:
        if s.is_silent:
            assert in_pause(s.start / SR, pauses) and in_pause(s.end / SR, pauses)
    # every voiced piece but the last reaches min_length (5 s) give or take the silence kept at its ends
    voiced = [s for s in segments if not s.is_silent]
    assert all(s.length / SR >= 4.0 for s in voiced[:-1])


def test_pauses_shorter_than_min_interval_do_not_cut(song):
    audio, pauses = song
    assert max(b - a for a, b in pauses) < 1.0
    assert slice_audio(audio, SR, min_interval_ms=1000, min_length_ms=1000) == [Segment(0, len(audio), False)]
    assert len(slice_audio(audio, SR, min_interval_ms=300, min_length_ms=1000)) > 3


def test_long_leading_silence_is_cut_keeping_at_most_max_sil_kept():
    voice, _ = phrases(3, (0.5, 0.6), seed=4, lead=0.0)
    audio = np.concatenate((np.zeros(7 * SR, dtype=np.float32), voice))
    segments = slice_audio(audio, SR, max_sil_kept_ms=2000)
    check_cover(segments, len(audio))
    first = segments[0]
    assert first.is_silent and first.start == 0
    assert 7.0 - 2.0 - TOL <= first.end / SR <= 7.0


def test_short_input_is_one_voiced_segment_and_empty_is_empty():
    x = np.random.default_rng(1).standard_normal(SR * 2).astype(np.float32) * 0.1
    x[SR // 2:SR] = 0.0
    assert slice_audio(x, SR) == [Segment(0, len(x), False)]
    assert slice_audio(np.zeros(0, dtype=np.float32), SR) == []


def test_threshold_decides_what_is_silence(song):
    audio, _ = song
    # at -120 dBFS nothing in the recording (noise floor about -100 dBFS) counts as silence
    assert slice_audio(audio, SR, SlicerParams(threshold_db=-120.0)) == [Segment(0, len(audio), False)]
    assert slice_audio(audio, SR, threshold_db=-120.0) == [(0, len(audio), False)]


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="min_length_ms >= min_interval_ms"):
        slice_audio(np.zeros(SR * 10, dtype=np.float32), SR, min_interval_ms=6000)
    with pytest.raises(ConfigError, match="max_sil_kept_ms"):
        slice_audio(np.zeros(SR * 10, dtype=np.float32), SR, max_sil_kept_ms=5)
    with pytest.raises(ConfigError, match="min_seconds"):
        dataset_clips(np.ones(SR, dtype=np.float32), SR, ClipParams(min_seconds=10, max_seconds=5))


def test_dataset_clips_are_5_to_15_s_and_cut_in_pauses(song):
    audio, pauses = song
    clips = dataset_clips(audio * 0.05, SR)  # the threshold is relative to the peak, so level does not matter
    assert len(clips) >= 3
    for start, end in clips[:-1]:
        assert 5.0 - TOL <= (end - start) / SR <= 15.0
    assert 1.0 <= (clips[-1][1] - clips[-1][0]) / SR <= 15.0
    for start, end in clips:
        assert in_pause(start / SR, pauses) and in_pause(end / SR, pauses), (start / SR, end / SR, pauses)
    assert clips == sorted(clips) and all(a[1] <= b[0] for a, b in zip(clips, clips[1:]))


def test_long_stretch_without_long_pauses_is_split_at_short_gaps():
    # 0.12 s gaps are shorter than min_interval (300 ms): only the max-length rule can cut here
    audio, gaps = phrases(12, (0.12, 0.13), seed=5, notes_per_phrase=(3, 5))
    clips = dataset_clips(audio, SR)
    assert len(clips) >= 2
    assert all((end - start) / SR <= 15.0 for start, end in clips)
    assert all((end - start) / SR >= 5.0 - TOL for start, end in clips[:-1])
    for (_, end), (start, _) in zip(clips, clips[1:]):
        assert end == start and in_pause(end / SR, gaps), (end / SR, gaps)
