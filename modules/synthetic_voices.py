"""Synthetic singing voices with a known F0 contour, for tests, benchmarks and the quick-start.

A voice is a band-limited glottal source (harmonics with a spectral tilt, so the F0 is exact)
through a cascade of vowel formant resonators, with vibrato, glides between notes, breath
noise, consonant noise bursts and pauses. Speakers differ in formant scaling, range and timbre.
Nothing is downloaded; everything is generated from a seed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

# Vowel formants (Hz) and bandwidths for an adult male voice; speakers scale them.
VOWELS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "a": ((730.0, 1090.0, 2440.0), (80.0, 90.0, 120.0)),
    "e": ((530.0, 1840.0, 2480.0), (60.0, 100.0, 120.0)),
    "i": ((290.0, 2250.0, 2890.0), (50.0, 100.0, 120.0)),
    "o": ((570.0, 840.0, 2410.0), (70.0, 80.0, 100.0)),
    "u": ((300.0, 870.0, 2240.0), (50.0, 80.0, 100.0)),
}


@dataclass(frozen=True)
class Speaker:
    name: str
    formant_scale: float  # multiplies every vowel formant
    low_midi: int  # lowest note of the melody range
    high_midi: int  # highest note
    tilt_db_per_octave: float  # glottal source roll-off
    breath: float  # aspiration noise level relative to the voiced source


SPEAKERS: dict[str, Speaker] = {
    "bass": Speaker("bass", 0.92, 40, 57, -13.0, 0.015),  # E2..A3, dark
    "alto": Speaker("alto", 1.18, 55, 72, -10.0, 0.03),  # G3..C5, bright
    "soprano": Speaker("soprano", 1.28, 64, 84, -9.0, 0.03),  # E4..C6
}


@dataclass
class Note:
    midi: float  # pitch; 0 means a pause
    seconds: float
    vowel: str = "a"
    consonant: bool = False  # a noise burst before the vowel (unvoiced)


@dataclass
class SyntheticVoice:
    audio: np.ndarray  # float32 mono
    sr: int
    hop: int
    f0: np.ndarray  # per frame (frame t centred on sample t*hop), Hz, 0 where unvoiced
    voiced: np.ndarray  # per frame bool
    stable: np.ndarray  # per frame bool: no voicing change within +-2 frames (fair to score)
    f0_samples: np.ndarray = field(repr=False)  # per sample, Hz, 0 where unvoiced
    notes: list[Note] = field(default_factory=list, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.audio) // self.hop


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


def random_melody(speaker: Speaker, seconds: float, rng: np.random.Generator, pause_prob: float = 0.15,
                  consonant_prob: float = 0.3, leap_prob: float = 0.1) -> list[Note]:
    """A stepwise melody inside the speaker's range, with occasional octave leaps and pauses."""
    notes: list[Note] = [Note(0.0, 0.15)]
    midi = float(rng.integers(speaker.low_midi + 3, speaker.high_midi - 3))
    total = 0.15
    while total < seconds - 0.2:
        dur = float(rng.uniform(0.25, 0.7))
        if len(notes) > 1 and rng.random() < pause_prob:
            notes.append(Note(0.0, float(rng.uniform(0.15, 0.4))))
        else:
            if rng.random() < leap_prob:
                midi += 12.0 if midi + 12 <= speaker.high_midi else -12.0
            else:
                midi += float(rng.choice([-3, -2, -1, 0, 1, 2, 4]))
            midi = float(np.clip(midi, speaker.low_midi, speaker.high_midi))
            notes.append(Note(midi, dur, str(rng.choice(list(VOWELS))), bool(rng.random() < consonant_prob)))
        total += notes[-1].seconds
    notes.append(Note(0.0, max(0.1, seconds - total)))
    return notes


def _formant_sos(vowel: str, scale: float, sr: int) -> np.ndarray:
    """Cascade of two-pole resonators, unity gain at DC-free peak normalisation."""
    freqs, bws = VOWELS[vowel]
    sections = []
    for f, bw in zip(freqs, bws):
        f = min(f * scale, 0.45 * sr)
        r = np.exp(-np.pi * bw * scale / sr)
        theta = 2 * np.pi * f / sr
        a = [1.0, -2 * r * np.cos(theta), r * r]
        b = [1.0 - r, 0.0, 0.0]
        sections.append(b + a)
    return np.array(sections)


def synth_notes(notes: list[Note], speaker: Speaker | str = "alto", sr: int = 44100, hop: int = 512,
                seed: int = 0, vibrato_cents: float = 35.0, vibrato_hz: float = 5.5,
                glide_seconds: float = 0.05, level: float = 0.3) -> SyntheticVoice:
    """Render notes to audio; returns the audio with its exact per-frame F0."""
    if isinstance(speaker, str):
        speaker = SPEAKERS[speaker]
    rng = np.random.default_rng(seed)
    lengths = [int(round(n.seconds * sr)) for n in notes]
    total = int(sum(lengths))
    f0 = np.zeros(total)
    segments: list[tuple[int, int, Note]] = []
    consonant_len = int(0.06 * sr)
    pos = 0
    prev_midi = None
    for note, n in zip(notes, lengths):
        start, end = pos, pos + n
        pos = end
        if note.midi <= 0:
            prev_midi = None
            continue
        voice_start = start + (consonant_len if note.consonant else 0)
        segments.append((start, end, note))
        count = end - voice_start
        if count <= 0:
            continue
        t = np.arange(count) / sr
        midi = np.full(count, note.midi)
        glide = int(glide_seconds * sr)
        if prev_midi is not None and not note.consonant and glide > 0:
            ramp = np.linspace(0.0, 1.0, min(glide, count))
            midi[: len(ramp)] = prev_midi + (note.midi - prev_midi) * ramp
        onset = np.clip((t - 0.15) / 0.2, 0.0, 1.0)  # vibrato fades in after the attack
        phase0 = rng.uniform(0, 2 * np.pi)
        midi = midi + onset * vibrato_cents / 100.0 * np.sin(2 * np.pi * vibrato_hz * t + phase0)
        f0[voice_start:end] = midi_to_hz(midi)
        prev_midi = note.midi

    # Band-limited glottal source: harmonics up to 0.45*sr with a spectral tilt.
    phase = 2 * np.pi * np.cumsum(f0 / sr)
    voiced = f0 > 0
    source = np.zeros(total)
    max_harm = int(0.45 * sr / max(f0[voiced].min(), 1.0)) if voiced.any() else 0
    tilt = speaker.tilt_db_per_octave / 20.0 / np.log10(2.0)
    for k in range(1, max_harm + 1):
        amp = np.where(k * f0 < 0.45 * sr, k ** tilt, 0.0)
        source += amp * np.sin(k * phase)
    envelope = np.zeros(total)
    for start, end, note in segments:
        voice_start = start + (consonant_len if note.consonant else 0)
        n = end - voice_start
        ramp = min(int(0.02 * sr), n // 2)
        env = np.ones(n)
        if ramp > 0:
            env[:ramp] = np.linspace(0, 1, ramp)
            env[-ramp:] = np.linspace(1, 0, ramp)
        envelope[voice_start:end] = env
    source *= envelope
    source += speaker.breath * rng.standard_normal(total) * envelope

    # Vowel filtering per note, carrying the filter state across notes.
    out = np.zeros(total)
    zi = None
    for start, end, note in segments:
        sos = _formant_sos(note.vowel, speaker.formant_scale, sr)
        if zi is None:
            zi = np.zeros((sos.shape[0], 2))
        out[start:end], zi = scipy.signal.sosfilt(sos, source[start:end], zi=zi)
        # Resonator gain depends strongly on where the harmonics fall against the formants; even
        # the notes out to a steady level (+-3 dB of natural dynamics) like a real phrase.
        voice_start = start + (consonant_len if note.consonant else 0)
        rms = np.sqrt(np.mean(out[voice_start:end] ** 2)) if end > voice_start else 0.0
        if rms > 0:
            out[start:end] *= 10.0 ** (rng.uniform(-3.0, 3.0) / 20.0) / rms
        if note.consonant:  # high-passed noise burst, like an /s/
            burst = rng.standard_normal(consonant_len)
            burst = scipy.signal.sosfilt(scipy.signal.butter(4, 4000, "hp", fs=sr, output="sos"), burst)
            burst *= np.hanning(consonant_len) * 0.15
            out[start:start + consonant_len] += burst
    peak = np.max(np.abs(out)) if total else 0.0
    if peak > 0:
        out *= level / peak
    out += 1e-5 * rng.standard_normal(total)  # a recording's noise floor, about -100 dBFS

    n_frames = total // hop
    centres = np.minimum(np.arange(n_frames) * hop, total - 1)
    f0_frames = f0[centres]
    voiced_frames = f0_frames > 0
    stable = np.ones(n_frames, dtype=bool)
    change = np.flatnonzero(np.diff(voiced_frames.astype(int)) != 0)
    for c in change:
        stable[max(0, c - 2): c + 4] = False
    return SyntheticVoice(out.astype(np.float32), sr, hop, f0_frames.astype(np.float32), voiced_frames,
                          stable, f0.astype(np.float32), list(notes))


def synth_singing(speaker: Speaker | str = "alto", seconds: float = 4.0, sr: int = 44100, hop: int = 512,
                  seed: int = 0, **melody_kwargs) -> SyntheticVoice:
    """A random melody of about `seconds` for `speaker`, reproducible from `seed`."""
    spk = SPEAKERS[speaker] if isinstance(speaker, str) else speaker
    rng = np.random.default_rng(seed)
    notes = random_melody(spk, seconds, rng, **melody_kwargs)
    return synth_notes(notes, spk, sr=sr, hop=hop, seed=seed)


def sing_as(voice: SyntheticVoice, speaker: Speaker | str, semitones: float = 0.0, seed: int = 0) -> SyntheticVoice:
    """`voice`'s notes transposed by `semitones` and sung by `speaker`: the ideal output of a conversion.

    Note timing is unchanged, so the result is sample-aligned with `voice`; with the seed that rendered
    `voice`, vibrato phases match too, so its F0 is exactly `voice.f0 * 2**(semitones/12)`.
    """
    notes = [dataclasses.replace(n, midi=n.midi + semitones) if n.midi > 0 else n for n in voice.notes]
    return synth_notes(notes, speaker, sr=voice.sr, hop=voice.hop, seed=seed)


def write_dataset(root: str | Path, speakers: dict[str, int] | None = None, seconds: float = 3.0,
                  sr: int = 44100, seed: int = 0) -> dict[str, list[Path]]:
    """Write `dataset_raw`-style folders: root/<speaker>/<speaker>_NNN.wav (16-bit PCM)."""
    speakers = speakers or {"alto": 4, "bass": 4}
    root = Path(root)
    written: dict[str, list[Path]] = {}
    for s_index, (name, count) in enumerate(sorted(speakers.items())):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(count):
            voice = synth_singing(name, seconds, sr=sr, seed=seed * 1000 + s_index * 100 + i)
            path = folder / f"{name}_{i:03d}.wav"
            sf.write(str(path), voice.audio, sr, subtype="PCM_16")
            written[name].append(path)
    return written


# --- even note levels, for scoring F0 predictors -------------------------------------------------------
#
# The formant cascade makes note loudness swing by 30-50 dB with the vowel and pitch (a harmonic far from
# every narrow formant is strongly attenuated). Real singing does not, and Praat's `pm` treats anything
# 30 dB under the clip's peak as silence, so F0 scores would measure the generator rather than the
# predictor. `balanced_singing` evens the notes out with a smooth gain (F0 is unchanged).

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
