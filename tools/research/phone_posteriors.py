"""Frame-level phone likelihoods from pocketsphinx's own en-us acoustic model, scored in numpy.

pocketsphinx reports only its best phone sequence (all-phone decoding, forced alignment). Its acoustic model
(phonetically tied mixtures: one codebook of 128 diagonal Gaussians per context-independent phone, three
senones per phone weighting that codebook) also gives soft evidence: how well every phone fits every 10-ms
frame, a phone posteriorgram trained on hundreds of hours of speech. The Python binding exposes no scores,
so this module reads the model files that ship in the wheel and recomputes them:

- the front end of the model's ``feat.params`` (pre-emphasis 0.97, 25.625-ms Hamming window every 10 ms,
  512-point FFT, 25 unit-area mel filters 130-6800 Hz, log, orthonormal DCT-II to 13 cepstra, sine lifter
  22, utterance cepstral mean removed, then 1s_c_d_dd deltas). Its spectral noise removal is left out;
  checked instead: the best phone of each speech frame agrees with pocketsphinx's forced alignment of the
  same words on 40 % of the anchor clip's first 30 s (5 % with the lifter dropped, 3 % shifted 3 s);
- each CI senone's log-likelihood: log-sum over its codebook's 128 Gaussians of the 8-bit quantised mixture
  weight plus the Gaussian's log density, summed over the three feature streams.

Used by ``tools/research/probe_mouth_evidence.py`` (evidence letter P). Measured there before any rendering, beside
the code path's evidence (docs/lip_sync.md, ninth round); not part of talkgs.
"""

from __future__ import annotations

import functools
import os

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 410
"""Samples per analysis window (pocketsphinx's default 0.025625 s at 16 kHz)."""
HOP = 160
"""Samples between frames: 100 frames per second."""
N_FFT = 512
MEL_FILTERS, LOW_HZ, HIGH_HZ, LIFTER = 25, 130.0, 6800.0, 22
"""The en-us model's ``feat.params``."""
CEPSTRA = 13
VAR_FLOOR = 1e-4
"""pocketsphinx's default floor of the Gaussians' variances."""
LOG_BASE = 1.0001
MIXW_SHIFT = 10
"""The quantised mixture weights are -log_{LOG_BASE}(w) shifted right by this many bits."""
WINDOW_CENTRE_S = WINDOW / 2 / SAMPLE_RATE
"""Frame t's window is centred this long after t * HOP samples."""


@functools.lru_cache(maxsize=1)
def acoustic_model() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(CI phone names [P], their senones [P, 3], means and variances [P, 3 streams, 128, 13],
    ln mixture weights of the CI senones [P * 3 senones, 3 streams, 128])."""
    import pocketsphinx

    root = os.path.join(pocketsphinx.get_model_path(), "en-us", "en-us")
    names, ci_senones, n_senones = _read_mdef(os.path.join(root, "mdef"))
    means = _read_gauden(os.path.join(root, "means"))
    variances = np.maximum(_read_gauden(os.path.join(root, "variances")), VAR_FLOOR)
    mixw = _read_sendump(os.path.join(root, "sendump"), n_senones)  # [3, 128, n_senones]
    logw = -mixw[:, :, ci_senones.reshape(-1)].astype(np.float64) * (1 << MIXW_SHIFT) * np.log(LOG_BASE)
    return names, ci_senones, means, variances, logw.transpose(2, 0, 1)


def phone_loglik(samples: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(log-likelihood [T, P, 3] of each CI phone's three states at every 10-ms frame, phone names [P]) of
    float [S] mono 16-kHz ``samples``; frame t is centred at t * 0.01 + ``WINDOW_CENTRE_S`` seconds."""
    cep = cepstra(samples)
    return state_loglik(deltas(cep - cep.mean(0))), acoustic_model()[0]


def cepstra(samples: np.ndarray) -> np.ndarray:
    """[T, 13] cepstra of the model's front end, before mean removal."""
    x = np.asarray(samples, np.float64) * 32768.0  # pocketsphinx reads 16-bit PCM
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    if len(x) < WINDOW:
        x = np.pad(x, (0, WINDOW - len(x)))
    n = 1 + (len(x) - WINDOW) // HOP
    frames = x[np.arange(n)[:, None] * HOP + np.arange(WINDOW)] * np.hamming(WINDOW)
    power = np.abs(np.fft.rfft(frames, N_FFT)) ** 2
    k = np.arange(CEPSTRA)
    dct = np.cos(np.pi / MEL_FILTERS * (np.arange(MEL_FILTERS)[:, None] + 0.5) * k) * np.sqrt(2.0 / MEL_FILTERS)
    dct[:, 0] = np.sqrt(1.0 / MEL_FILTERS)
    cep = np.log(power @ _mel_filters() + 1e-4) @ dct
    return cep * (1 + LIFTER / 2 * np.sin(k * np.pi / LIFTER))


def deltas(cep: np.ndarray) -> np.ndarray:
    """[T, 13] -> [T, 3, 13]: the cepstra, c[t+2] - c[t-2], and the difference of that at t+1 and t-1."""
    p = np.pad(cep, ((3, 3), (0, 0)), mode="edge")
    t = len(cep)

    def at(k: int) -> np.ndarray:
        return p[3 + k:3 + k + t]

    return np.stack([cep, at(2) - at(-2), (at(3) - at(-1)) - (at(1) - at(-3))], 1)


def state_loglik(feat: np.ndarray) -> np.ndarray:
    """[T, 3, 13] features -> [T, P, 3] log-likelihood of every CI phone's three senones."""
    names, ci_senones, means, variances, logw = acoustic_model()
    p, d = len(names), means.shape[-1]
    out = np.zeros((len(feat), p, 3))
    for f in range(feat.shape[1]):
        mu, var = means[:, f].reshape(-1, d), variances[:, f].reshape(-1, d)  # [P * 128, 13]
        x = feat[:, f]
        dens = (-0.5 * np.log(2 * np.pi * var).sum(1) - 0.5 * (mu ** 2 / var).sum(1)
                - (x ** 2) @ (0.5 / var).T + x @ (mu / var).T).reshape(len(feat), p, -1)  # [T, P, 128]
        for s in range(3):
            z = dens + logw[ci_senones[:, s], f][None]
            top = z.max(-1, keepdims=True)
            out[:, :, s] += (top + np.log(np.exp(z - top).sum(-1, keepdims=True)))[..., 0]
    return out


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """[N_FFT / 2 + 1, MEL_FILTERS] sphinx's unit-area triangles, edges rounded to FFT bins. Not
    transformers' mel_filter_bank: the rounding and the area normalisation must be the model's own."""
    def mel(f):
        return 2595.0 * np.log10(1 + f / 700.0)

    def hz_of(m):
        return 700.0 * (10 ** (m / 2595.0) - 1)

    step = (mel(HIGH_HZ) - mel(LOW_HZ)) / (MEL_FILTERS + 1)
    bin_hz = SAMPLE_RATE / N_FFT
    hz = np.arange(N_FFT // 2 + 1) * bin_hz
    out = np.zeros((len(hz), MEL_FILTERS))
    for i in range(MEL_FILTERS):
        lo, mid, hi = (int(hz_of(mel(LOW_HZ) + (i + j) * step) / bin_hz + 0.5) * bin_hz for j in range(3))
        inside = (hz >= lo) & (hz <= hi)
        out[inside, i] = np.minimum((hz - lo) / (mid - lo), (hi - hz) / (hi - mid))[inside] * 2 / (hi - lo)
    return out


def _read_gauden(path: str) -> np.ndarray:
    """A Sphinx-3 Gaussian parameter file (means or variances) -> [codebooks, streams, densities, dims]."""
    data = open(path, "rb").read()
    o = data.index(b"endhdr\n") + len(b"endhdr\n")
    if int(np.frombuffer(data[o:o + 4], "<u4")[0]) != 0x11223344:
        raise ValueError(f"{path}: not a little-endian Sphinx-3 file")
    n_mgau, n_feat, n_density = (int(v) for v in np.frombuffer(data[o + 4:o + 16], "<i4"))
    veclen = np.frombuffer(data[o + 16:o + 16 + 4 * n_feat], "<i4")
    if len(set(veclen.tolist())) != 1:
        raise ValueError(f"{path}: streams of different lengths")
    o += 16 + 4 * n_feat + 4  # then the value count
    values = np.frombuffer(data[o:o + 4 * n_mgau * n_feat * n_density * int(veclen[0])], "<f4")
    return values.reshape(n_mgau, n_feat, n_density, int(veclen[0])).astype(np.float64)


def _read_sendump(path: str, n_senones: int) -> np.ndarray:
    """pocketsphinx's quantised mixture weights -> uint8 [streams, densities, senones]."""
    data = open(path, "rb").read()
    o = 0

    def int32() -> int:
        nonlocal o
        o += 4
        return int(np.frombuffer(data[o - 4:o], "<i4")[0])

    for _ in range(2):  # title, format description
        n = int32()
        o += n
    fields = {}
    while (n := int32()) != 0:
        key, _, value = data[o:o + n].rstrip(b"\0").decode().partition(" ")
        fields[key] = value
        o += n
    densities, senones = int32(), int32()
    if int(fields.get("cluster_count", 0)) != 0 or senones != n_senones:
        raise ValueError(f"{path}: clustered or mismatched mixture weights")
    streams = int(fields.get("feature_count", 3))
    return np.frombuffer(data[o:o + streams * densities * senones], np.uint8).reshape(streams, densities, senones)


def _read_mdef(path: str) -> tuple[list[str], np.ndarray, int]:
    """A binary model definition -> (CI phone names, their senones [P, states], number of senones)."""
    data = open(path, "rb").read()
    o = 12 + int(np.frombuffer(data[8:12], "<i4")[0])  # byte-order mark, version, description length
    (n_ci, n_phone, n_state, _n_ci_sen, n_sen, _n_tmat, _n_sseq, _n_ctx, n_tree,
     _sil) = (int(v) for v in np.frombuffer(data[o:o + 40], "<i4"))
    o += 40
    names, p = [], o
    for _ in range(n_ci):
        end = data.index(b"\0", p)
        names.append(data[p:end].decode())
        p = end + 1
    q = o + ((p - o + 3) & ~3) + 8 * n_tree  # padding, then the context tree
    phones = np.frombuffer(data[q:q + 12 * n_phone], np.dtype([("ssid", "<i4"), ("tmat", "<i4"), ("attr", "i1", 4)]))
    q += 12 * n_phone
    size = int(np.frombuffer(data[q:q + 4], "<i4")[0])
    sseq = np.frombuffer(data[q + 4:q + 4 + 2 * size], "<u2").reshape(-1, n_state)
    return names, sseq[phones["ssid"][:n_ci]].astype(np.int64), n_sen
