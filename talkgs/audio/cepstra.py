"""The ``cepstra`` audio encoder: the spectrum's shape with the voice and the microphone normalised away.

Mel-frequency cepstral coefficients carry what the vocal tract does (how open, how round, where the
tongue is) beside the speaker's voice and the recording. Raw, a regression on one subject learns that
voice: fitted on the anchor alone, log-mel beside the visemes lowered the predicted opening's agreement
with other speakers' real mouths from 0.43 to 0.36. Two things make the cepstra carry the mouth instead:

- each coefficient is normalised by the running mean and spread of the speech heard so far (cepstral
  mean and variance normalisation), which removes the voice's and the channel's constant colouring.
  Running, not over the whole clip, so that a stream computes exactly what an offline pass computes;
  the first seconds lean on the mean and spread of the public-domain clips of ``talkgs/data/mouth_prior.npz``
  (``POPULATION_S``);
- the speech model pools the subject's frames with those other speakers' (``MouthCodeConfig.prior``).

Measured before rendering (``tools/research/probe_mouth_evidence.py``, the anchor's ridge regression pooled with
the public-domain prior, six speakers the prior does not contain): the predicted opening correlates with
their real mouths at a median 0.52 with these cepstra beside the visemes, against 0.47 from the visemes
alone (docs/lip_sync.md).

The encoder is evaluated at given times, one 25-ms window centred on each, in time order, carrying a
``CepstraState``; it is stateless otherwise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np

COEFFS = 13
"""Cepstral coefficients kept (the usual 13: c0, the level, and the spectral envelope's broad shape)."""
MELS = 40
"""Mel bands the cepstra are taken from."""
FMIN_HZ, FMAX_HZ = 60.0, 7600.0
"""The mel bands' range: above mains hum and below 16-kHz audio's Nyquist frequency."""
WINDOW_S = 0.025
"""Hann window centred on each requested time."""
FLOOR = 1e-10
"""Floor of the mel power before the log (16-bit quantisation noise is above it)."""
SPEECH_DB = 30.0
"""A window counts toward the running statistics when its level is within this many decibels of the
running peak: silence and room noise would otherwise pull the mean toward the noise's spectrum."""
PEAK_DECAY_DB_S = 6.0
"""How fast the running peak forgets a loud moment (decibels per second), so a quieter passage counts."""
POPULATION_S = 2.0
"""The public-domain speakers' mean and spread count as this many seconds of speech in the running
statistics: the first words are normalised by them, later ones mostly by the speaker's own."""


@dataclass
class CepstraState:
    """Running statistics of one signal's speech windows, updated in time order."""

    weight: float  # seconds of speech, including the population's pseudo-seconds
    total: np.ndarray  # [COEFFS] weighted sum
    squares: np.ndarray  # [COEFFS] weighted sum of squares
    peak_db: float = -np.inf
    last_time: float | None = None


def new_state(stats: tuple[np.ndarray, np.ndarray] | None = None) -> CepstraState:
    """A state for a new signal, starting from the population's statistics (``stats``: (mean, variance),
    [COEFFS] each, instead of the shipped ones)."""
    mean, var = stats if stats is not None else population()
    return CepstraState(POPULATION_S, POPULATION_S * mean, POPULATION_S * (var + mean ** 2))


@functools.lru_cache(maxsize=1)
def population() -> tuple[np.ndarray, np.ndarray]:
    """(mean [COEFFS], variance [COEFFS]) of the raw cepstra of the public-domain clips' speech."""
    with resources.files("talkgs.data").joinpath("mouth_prior.npz").open("rb") as f:
        stats = np.load(f)["cepstra_population"].astype(np.float64)  # [2, COEFFS]
    return stats[0], stats[1]


def raw_cepstra(samples: np.ndarray, times: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(cepstra [T, COEFFS], level in dBFS [T]) of the windows centred on ``times`` [T] (s into ``samples``).

    Zeros stand in for audio before the first and after the last sample."""
    win = round(WINDOW_S * sample_rate)
    n_fft = 1 << (win - 1).bit_length()
    filters = _filters(n_fft, sample_rate)  # [n_fft / 2 + 1, MELS]
    centre = np.round(np.asarray(times, np.float64) * sample_rate).astype(np.int64)
    padded = np.pad(samples.astype(np.float64), (win, win))
    hann = np.hanning(win + 2)[1:-1]
    out, level = np.zeros((len(centre), COEFFS)), np.zeros(len(centre))
    for a in range(0, len(centre), 2048):  # bounded memory on long files
        idx = np.clip(centre[a:a + 2048], -win // 2, len(samples) + win // 2) - win // 2 + win
        frames = padded[idx[:, None] + np.arange(win)]  # [B, win]
        level[a:a + 2048] = 10 * np.log10(np.mean(frames ** 2, axis=1) + FLOOR)
        power = np.abs(np.fft.rfft(frames * hann, n_fft)) ** 2
        out[a:a + 2048] = np.log(np.maximum(power @ filters, FLOOR)) @ _dct()
    return out, level


def normalise(raw: np.ndarray, level: np.ndarray, times: np.ndarray, state: CepstraState) -> np.ndarray:
    """[T, COEFFS] float32: ``raw`` cepstra at increasing ``times`` [T] standardised by ``state``'s running
    statistics, which each speech window updates first (so a window is normalised by itself and its past)."""
    speech, dt, state.peak_db, state.last_time = _speech(level, times, state.peak_db, state.last_time)
    w = (dt * speech)[:, None]  # [T, 1] seconds of speech each window adds
    weight = state.weight + np.cumsum(w, 0)
    total = state.total + np.cumsum(w * raw, 0)
    squares = state.squares + np.cumsum(w * raw ** 2, 0)
    if len(raw):
        state.weight, state.total, state.squares = float(weight[-1, 0]), total[-1], squares[-1]
    mean = total / weight
    return ((raw - mean) / np.sqrt(np.maximum(squares / weight - mean ** 2, 1e-6))).astype(np.float32)


def speech_windows(level: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[T] bool: which windows (levels in dBFS at increasing ``times``) of a signal count as speech in its
    running statistics."""
    return _speech(level, times, -np.inf, None)[0]


def _speech(level: np.ndarray, times: np.ndarray, peak: float, last: float | None):
    """(speech [T] bool, seconds each window stands for [T], peak and time after the last window): a window
    is speech within ``SPEECH_DB`` of the peak, which decays by ``PEAK_DECAY_DB_S``. A window stands for the
    gap since the one before, at most 0.1 s (a jump in a stream's times is not speech heard), 20 ms for a
    signal's first."""
    speech, dt = np.zeros(len(level), bool), np.zeros(len(level))
    for k, t in enumerate(np.asarray(times, np.float64)):
        dt[k] = 0.02 if last is None else min(max(t - last, 0.0), 0.1)
        peak, last = max(float(level[k]), peak - PEAK_DECAY_DB_S * dt[k]), float(t)
        speech[k] = level[k] >= peak - SPEECH_DB
    return speech, dt, peak, last


@functools.lru_cache(maxsize=4)
def _filters(n_fft: int, sample_rate: int) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=MELS, min_frequency=FMIN_HZ,
                           max_frequency=min(FMAX_HZ, sample_rate / 2), sampling_rate=sample_rate,
                           norm=None, mel_scale="htk")


@functools.lru_cache(maxsize=1)
def _dct() -> np.ndarray:
    """[MELS, COEFFS] orthonormal DCT-II (numpy has none, and this is all of scipy it would need)."""
    n = np.arange(MELS)
    basis = np.cos(np.pi / MELS * (n[:, None] + 0.5) * np.arange(COEFFS)[None, :]) * np.sqrt(2.0 / MELS)
    basis[:, 0] /= np.sqrt(2.0)
    return basis
