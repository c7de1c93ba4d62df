"""Helpers for scoring F0 predictors on tests/support/voices.py singing.

voices.py's formant cascade makes note loudness swing by 30-50 dB with the vowel and pitch (a harmonic
far from every narrow formant is strongly attenuated). Real singing does not, and Praat's `pm` treats
anything 30 dB under the clip's peak as silence, so scores would measure the generator rather than
the predictor. `balanced_singing` evens the notes out with a smooth gain (F0 is unchanged).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tests.support.voices import SyntheticVoice, synth_singing

CROSSFADE_SECONDS = 0.02


def note_spans(voice: SyntheticVoice) -> list[tuple[int, int, bool]]:
    """(start, end, is_pause) sample spans of the voice's notes, in order."""
    spans = []
    pos = 0
    for note in voice.notes:
        n = int(round(note.seconds * voice.sr))
        spans.append((pos, pos + n, note.midi <= 0))
        pos += n
    return spans


def balance_notes(voice: SyntheticVoice, target_rms: float = 0.05) -> SyntheticVoice:
    """Scale each note's voiced part to `target_rms` (20 ms ramps); pauses and consonants keep gain 1."""
    audio = voice.audio.astype(np.float64)
    gain = np.ones(len(audio))
    for start, end, pause in note_spans(voice):
        sung = audio[start:end][voice.f0_samples[start:end] > 0]
        if pause or sung.size == 0:
            continue
        rms = float(np.sqrt(np.mean(sung ** 2)))
        gain[start:end] = np.where(voice.f0_samples[start:end] > 0, target_rms / max(rms, 1e-9), 1.0)
    ramp = max(1, int(CROSSFADE_SECONDS * voice.sr))
    smooth = np.convolve(np.pad(gain, ramp, mode="edge"), np.ones(ramp) / ramp, mode="same")[ramp:-ramp]
    out = audio * smooth
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return dataclasses.replace(voice, audio=out.astype(np.float32))


def balanced_singing(speaker: str, seconds: float, seed: int, **melody_kwargs) -> SyntheticVoice:
    return balance_notes(synth_singing(speaker, seconds, seed=seed, **melody_kwargs))


def pause_frames(voice: SyntheticVoice, margin: int = 2) -> np.ndarray:
    """Frames whose centre lies in a pause at least `margin` frames away from any sound."""
    sound = np.ones(len(voice.audio), dtype=bool)
    for start, end, pause in note_spans(voice):
        if pause:
            sound[start:end] = False
    centres = np.minimum(np.arange(voice.n_frames) * voice.hop, len(voice.audio) - 1)
    silent = ~sound[centres]
    if margin > 0:
        padded = np.pad(silent, margin, constant_values=False)
        silent = np.logical_and.reduce([padded[i:i + voice.n_frames] for i in range(2 * margin + 1)])
    return silent
