"""Audio-video offset of the source, from mouth opening against the speech energy envelope.

A talking mouth opens with the loudness of the voice. Sliding the energy envelope against the
mouth-opening track and taking the lag of the best correlation gives the offset. Convention: a
positive offset means the audio is late (the sound comes that many frames after the mouth moves);
the correction advances the audio by that much.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Window of the moving average removed from both signals, in seconds: slow trends (a louder
#: passage, a head that leans in) would otherwise dominate the correlation.
DETREND_S = 1.0


def energy_envelope(samples: np.ndarray, sample_rate: int, num_frames: int, fps: float) -> np.ndarray:
    """[F] log RMS energy of the audio over each video frame's interval."""
    spf = sample_rate / fps
    out = np.full(num_frames, -12.0)
    for i in range(num_frames):
        a, b = int(round(i * spf)), int(round((i + 1) * spf))
        seg = samples[a:b]
        if len(seg):
            out[i] = np.log(np.sqrt(np.mean(seg.astype(np.float64) ** 2)) + 1e-6)
    return out


def _detrend(x: np.ndarray, width: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if width > 1 and len(x) > width:
        kernel = np.ones(width) / width
        pad = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
        x = x - np.convolve(pad, kernel, mode="valid")
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 1e-12 else 1.0)


@dataclass(frozen=True)
class Offset:
    frames: int  # best integer lag; positive = audio late
    frames_fine: float  # parabolic refinement of the peak
    corr: float  # correlation at the best lag
    corr_zero: float  # correlation at lag 0
    confident: bool  # the peak is inside the search range, high enough and clearly the only one


def estimate_offset(mouth_open: np.ndarray, energy: np.ndarray, fps: float, max_lag: int,
                    min_corr: float = 0.1, min_margin: float = 0.05) -> Offset:
    """The lag L maximising corr(mouth[t], energy[t + L]) over |L| <= max_lag.

    Speech has a syllable rhythm, so the correlation can have several peaks a few frames apart. The
    estimate counts as confident only when the best peak lies inside the search range, reaches
    ``min_corr``, and beats every other local peak by ``min_margin``.

    Args:
        mouth_open: [F] mouth opening per frame.
        energy: [F] log energy per frame (``energy_envelope``).
    """
    if mouth_open.shape != energy.shape or mouth_open.ndim != 1:
        raise ValueError(f"expected two [F] signals, got {mouth_open.shape} and {energy.shape}")
    width = max(1, int(round(DETREND_S * fps)))
    m, e = _detrend(mouth_open, width), _detrend(energy, width)
    n = len(m)
    max_lag = min(max_lag, n // 4)
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.empty(len(lags))
    for k, lag in enumerate(lags):
        a = m[max(0, -lag): n - max(0, lag)]
        b = e[max(0, lag): n - max(0, -lag)]
        corr[k] = float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else 0.0
    corr = np.nan_to_num(corr)
    k = int(np.argmax(corr))
    fine = float(lags[k])
    interior = 0 < k < len(lags) - 1
    if interior:
        denom = corr[k - 1] - 2 * corr[k] + corr[k + 1]
        if denom < 0:
            fine += 0.5 * (corr[k - 1] - corr[k + 1]) / denom
    padded = np.concatenate([[-np.inf], corr, [-np.inf]])
    peaks = [j for j in range(len(corr)) if j != k and padded[j + 1] >= padded[j] and padded[j + 1] >= padded[j + 2]]
    runner_up = max((corr[j] for j in peaks), default=-1.0)
    confident = interior and corr[k] >= min_corr and corr[k] - runner_up >= min_margin
    return Offset(frames=int(lags[k]), frames_fine=fine, corr=float(corr[k]), corr_zero=float(corr[max_lag]),
                  confident=bool(confident))


def shift_audio(samples: np.ndarray, frames: int, sample_rate: int, fps: float) -> np.ndarray:
    """Advance (frames > 0) or delay (frames < 0) the audio, keeping its length; gaps are silent."""
    n = int(round(abs(frames) * sample_rate / fps))
    if n == 0:
        return samples
    out = np.zeros_like(samples)
    if frames > 0:
        out[: len(samples) - n] = samples[n:]
    else:
        out[n:] = samples[: len(samples) - n]
    return out
