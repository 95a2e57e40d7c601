"""Per-frame audio features for the talking-head model: log-mel, phone one-hots, visemes, cepstra, HuBERT, wav2vec2.

Timing convention (the anti-drift guarantee)
--------------------------------------------
Every encoder returns float32 [F, 2, D] for a video of F frames at ``fps``: two feature steps per
frame. Step k (0 or 1) of frame i is centred at

    t(i, k) = (i + (2k + 1) / 4) / fps  seconds,

i.e. at a quarter and three quarters of the frame. At 25 fps these are 10 ms and 30 ms into the
40 ms frame: a 50 Hz stream whose step j is centred at (j + 0.5) * 20 ms (``feature_times``).

Each encoder computes its native features with known native timestamps (the centre of each
analysis window) and resamples them to exactly these times: linear interpolation for continuous
features, the phone active at that time for one-hots. No encoder counts its native steps and
hopes they line up with the video, so a 20 ms native stride against a 40 ms frame, or an fps that
is not a multiple of 50 Hz, cannot accumulate drift over a long video.

The audio of a video of F frames is its first F / fps seconds: shorter audio is treated as
zero-padded to that length, longer audio is ignored past the last frame. Encoders that look past
the last sample (analysis windows, receptive fields) see zeros there.

Nothing heavy is imported here: torch, transformers and pocketsphinx are imported by the functions
that need them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from talkgs.audio import cepstra, whisper
from talkgs.audio.config import AudioConfig
from talkgs.errors import TalkgsError
from talkgs.utils import log, media

ENCODERS: tuple[str, ...] = ("mel", "phonemes", "visemes", "cepstra", "whisper", "hubert", "wav2vec2")

#: Phone set of the ``phonemes`` one-hot: SIL (silence, breath, noise and other fillers), then the
#: 39 CMU phones of pocketsphinx's en-us acoustic model.
PHONES: tuple[str, ...] = (
    "SIL",
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
    "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V",
    "W", "Y", "Z", "ZH",
)
_PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}

PhoneSegments = list[tuple[str, float, float]]
"""(phone, start_s, end_s) in time order; phones from ``PHONES``."""

#: Mouth-shape classes of the ``visemes`` encoder, and the phones in each. Phones that look alike on
#: the lips share a class (p, b and m all press the lips together), so the classes are what a
#: recogniser can get right even when it confuses the phones inside one. The grouping follows the
#: usual viseme sets (e.g. Rhubarb Lip Sync's shapes): closed lips, lip-teeth, tongue-teeth, tongue
#: behind the teeth, rounded-protruded, back of the tongue, and vowels by how far the jaw opens and
#: whether the lips round.
VISEMES: dict[str, tuple[str, ...]] = {
    "silence": ("SIL",),
    "bilabial": ("P", "B", "M"),
    "labiodental": ("F", "V"),
    "dental": ("TH", "DH"),
    "alveolar": ("T", "D", "N", "S", "Z"),
    "lateral": ("L",),
    "postalveolar": ("SH", "CH", "JH", "ZH"),
    "velar": ("K", "G", "NG", "HH"),
    "palatal": ("Y",),
    "rounded": ("W", "UW", "UH"),
    "rhotic": ("R", "ER"),
    "open": ("AA", "AE", "AW", "AY"),
    "mid": ("AH", "EH"),
    "open_rounded": ("AO", "OW", "OY"),
    "close": ("IY", "IH", "EY"),
}
_VISEME_OF_PHONE = {p: i for i, phones in enumerate(VISEMES.values()) for p in phones}
LOUDNESS_REF_S = 2.0
"""The ``visemes`` encoder's loudness is relative to the loudest 25 ms of the preceding this many
seconds, so the recording level and the speaker's voice drop out and a stream can compute it."""
LOUDNESS_RANGE_DB = 50.0
"""...and spans this many decibels below that reference, mapped to [0, 1] (silence is 0)."""

MODEL_SAMPLE_RATE = media.SAMPLE_RATE
"""Sample rate of pocketsphinx's en-us model and of the HuBERT / wav2vec2 checkpoints."""

MEL_WINDOW_S = 0.025
"""Hann analysis window of the log-mel encoder (the usual 25 ms speech window)."""
MEL_HOP_S = 0.010
"""Hop of the log-mel encoder: 100 Hz, so each 50 Hz output step falls on or between native steps."""
MEL_FLOOR = 1e-10
"""Floor of the mel power before the log. 16-bit quantisation noise gives about 4e-10 in every
band (Slaney-normalised filters), so the floor only clips digital silence."""

PS_BEAM = 1e-20
PS_PHONE_BEAM = 1e-20
PS_LANGUAGE_WEIGHT = 2.0
"""Beams and phone-language-model weight of the all-phone decoder: the values CMUSphinx recommends
for phoneme recognition (the default weight of 6.5 is tuned for word decoding)."""
PS_DITHER_LSB = 1
"""Dither of +-1 least significant bit of 16-bit PCM, from a fixed seed so it is deterministic.
Digital silence gives identical floored cepstra, which mean normalisation turns into featureless
input that the decoder reads as phones (a long S); quantisation-level noise decodes as SIL."""

CHUNK_S = 20.0
"""HuBERT / wav2vec2 run on windows of this much audio so memory stays bounded on long videos."""
CONTEXT_S = 1.5
"""Audio added on each side of a window and whose outputs are discarded. It covers the +-1.28 s
reach of the convolutional positional embedding (128 steps of 20 ms), so that only attention (and
a group-normalised front end) can tell a window from the whole signal; 1 s leaves visible seams."""


@dataclass(frozen=True)
class _Checkpoint:
    label: str  # name in user-facing messages
    cfg_field: str  # AudioConfig field holding the Hugging Face id or local folder
    model_class: str  # transformers class to load
    output: str  # field of the model output used as features
    dim_field: str  # field of the model config that gives D


_CHECKPOINTS = {
    "hubert": _Checkpoint("HuBERT", "hubert_model", "HubertModel", "last_hidden_state", "hidden_size"),
    # CTC logits: speaker-independent character scores, as in ER-NeRF's wav2vec variant.
    "wav2vec2": _Checkpoint("wav2vec2", "wav2vec2_model", "Wav2Vec2ForCTC", "logits", "vocab_size"),
}

# Loaded checkpoints, keyed by (encoder name, checkpoint path), so repeated calls reuse them.
_MODELS: dict[tuple[str, str], tuple] = {}


def feature_times(num_frames: int, fps: float) -> np.ndarray:
    """Centre times in seconds of the two feature steps of every frame: float64 [F, 2]."""
    return (np.arange(num_frames, dtype=np.float64)[:, None] + np.array([0.25, 0.75])) / fps


def encode_audio(
    name: str,
    samples: np.ndarray,
    num_frames: int,
    fps: float,
    cfg: AudioConfig,
    sample_rate: int = media.SAMPLE_RATE,
) -> np.ndarray:
    """Features of encoder ``name`` at the times of ``feature_times``: float32 [F, 2, D].

    Args:
        samples: float32 mono audio [S] in [-1, 1]; sample 0 is time 0 of frame 0.
        num_frames: F, frames of the video the features are for.
        fps: frame rate of that video.
        sample_rate: of ``samples``; the model encoders need ``MODEL_SAMPLE_RATE``.
    """
    _check_name(name)
    if not isinstance(samples, np.ndarray) or samples.ndim != 1 or samples.dtype != np.float32:
        raise ValueError(f"samples must be a float32 [S] array, got {type(samples).__name__} "
                         f"{getattr(samples, 'dtype', '')} {getattr(samples, 'shape', '')}")
    if not np.isfinite(samples).all():
        raise ValueError("samples contain NaN or infinity")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    if name != "mel" and sample_rate != MODEL_SAMPLE_RATE:
        raise ValueError(f"the {name} encoder needs {MODEL_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    num_frames = int(num_frames)

    audio = _fit_length(samples, round(num_frames / fps * sample_rate))  # [S']
    times = feature_times(num_frames, fps).reshape(-1)  # [2F]
    if name == "visemes":
        # Word recognition needs whole sentences: phones come from one pass over the clip.
        feats = _viseme_features(align_phones(audio)[0], audio, 0.0, times, sample_rate)
    elif name == "cepstra":
        feats = encode_span(name, audio, 0.0, times, cfg, sample_rate)  # in order, from a fresh state
    elif name in ("mel", "phonemes"):
        feats = _chunked(name, audio, times, cfg, sample_rate)
    elif name == "whisper":
        feats = whisper.whisper_features(audio, times, cfg)  # windows of its own
    else:
        feats = _checkpoint_features(name, audio, times, cfg)  # windows of its own
    return np.ascontiguousarray(feats, dtype=np.float32).reshape(num_frames, 2, -1)  # [F, 2, D]


def _chunked(name: str, audio: np.ndarray, times: np.ndarray, cfg: AudioConfig, sample_rate: int) -> np.ndarray:
    """``encode_span`` over windows of ``CHUNK_S`` with ``CONTEXT_S`` either side: [T, D].

    A spectrogram of a whole 10-minute file takes gigabytes, and one pocketsphinx utterance grows
    with its length; windows keep memory flat. Windows start on a multiple of the mel hop, so mel
    features are exactly those of one pass; phones may differ near a window's edge, inside the
    context that is decoded and discarded.
    """
    hop = round(MEL_HOP_S * sample_rate)
    parts = []
    for start in np.arange(0.0, max(times[-1], 0.0) + 1e-9, CHUNK_S):
        sel = (times >= start) & (times < start + CHUNK_S)
        if not sel.any():
            continue
        lo = max(0, int((start - CONTEXT_S) * sample_rate) // hop * hop)
        hi = min(len(audio), int(round((start + CHUNK_S + CONTEXT_S) * sample_rate)))
        parts.append(encode_span(name, audio[lo:hi], lo / sample_rate, times[sel], cfg, sample_rate))
    return np.concatenate(parts)


def encode_span(
    name: str,
    samples: np.ndarray,
    start_s: float,
    times: np.ndarray,
    cfg: AudioConfig,
    sample_rate: int = media.SAMPLE_RATE,
    state: object | None = None,
) -> np.ndarray:
    """Features [T, D] of encoder ``name`` at absolute ``times`` [T] (s), from a stretch of audio.

    The streaming counterpart of ``encode_audio``: ``samples`` (float32 mono) start at ``start_s`` of
    a longer signal. ``mel`` gives exactly the features of the whole signal when the stretch starts on
    a multiple of ``MEL_HOP_S`` and holds at least ``MEL_WINDOW_S`` of audio before and after every
    time. ``cepstra`` does too when consecutive calls pass the same ``state`` (``stream_state``) and
    increasing times. ``phonemes`` and the model encoders see only the stretch, so their features near
    its ends can differ from a decode of the whole signal.
    """
    _check_name(name)
    rel = np.asarray(times, np.float64) - start_s
    if len(rel) == 0:
        return np.zeros((0, feature_dim(name, cfg)), np.float32)
    if name == "mel":
        feats = _log_mel(samples, rel, cfg.n_mels, sample_rate)
    elif name == "cepstra":
        raw, level = cepstra.raw_cepstra(samples, rel, sample_rate)
        feats = cepstra.normalise(raw, level, np.asarray(times, np.float64), state or cepstra.new_state())
    elif name == "phonemes":
        feats = _phone_one_hot(phone_segments(samples, sample_rate), rel)
    elif name == "visemes":
        # A stream sees a short stretch, too short for word recognition: all-phone decoding.
        feats = _viseme_features(phone_segments(samples, sample_rate), samples, start_s, np.asarray(times), sample_rate)
    elif name == "whisper":
        feats = whisper.whisper_features(samples, rel, cfg, pad=False)
    else:
        feats = _checkpoint_features(name, samples, rel, cfg)
    return np.ascontiguousarray(feats, dtype=np.float32)


def stream_state(name: str) -> object | None:
    """What ``encode_span`` of encoder ``name`` carries from one stretch of a signal to the next (None:
    nothing)."""
    _check_name(name)
    return cepstra.new_state() if name == "cepstra" else None


def feature_dim(name: str, cfg: AudioConfig) -> int:
    """D of encoder ``name``; the model encoders read only their checkpoint's config."""
    _check_name(name)
    if name == "mel":
        return cfg.n_mels
    if name == "cepstra":
        return cepstra.COEFFS
    if name == "phonemes":
        return len(PHONES)
    if name == "visemes":
        return len(VISEMES) + 1
    if name == "whisper":
        return whisper.feature_dim(cfg)
    from transformers import AutoConfig

    ckpt = _CHECKPOINTS[name]
    path = getattr(cfg, ckpt.cfg_field)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=cfg.local_files_only)
    except OSError:
        raise TalkgsError(_missing_weights(ckpt, path)) from None
    return int(getattr(config, ckpt.dim_field))


def phone_segments(samples: np.ndarray, sample_rate: int = media.SAMPLE_RATE) -> list[tuple[str, float, float]]:
    """Phones of ``samples`` (float32 mono [S]) by pocketsphinx all-phone decoding.

    Returns (phone, start_s, end_s) in time order, without overlap, within [0, S / sample_rate].
    Phones are from ``PHONES``; silences and fillers (noise, breath, ...) are ``SIL``, and
    neighbouring SIL stretches are merged. A decoder frame counts for the time around the centre
    of its analysis window, half a frame either side.
    """
    if samples.ndim != 1:
        raise ValueError(f"samples must be mono [S], got shape {samples.shape}")
    if sample_rate != MODEL_SAMPLE_RATE:
        raise ValueError(f"phone decoding needs {MODEL_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    if len(samples) == 0:
        return []
    decoder = _phone_decoder()
    frame_s = 1.0 / float(decoder.config["frate"])
    offset_s = float(decoder.config["wlen"]) / 2 - frame_s / 2  # frame t spans offset + [t, t+1) frames
    duration = len(samples) / sample_rate

    full_scale = np.iinfo(np.int16)
    dither = np.random.default_rng(0).integers(-PS_DITHER_LSB, PS_DITHER_LSB + 1, len(samples), np.int16)
    pcm = np.clip(np.round(samples * full_scale.max) + dither, full_scale.min, full_scale.max).astype("<i2")
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()

    segments: list[tuple[str, float, float]] = []
    for seg in decoder.seg():
        phone = seg.word if seg.word in _PHONE_INDEX else "SIL"  # <sil>, +NSN+, +SPN+, +BREATH+, ...
        start = max(0.0, offset_s + seg.start_frame * frame_s)
        end = min(duration, offset_s + (seg.end_frame + 1) * frame_s)
        if end <= start:
            continue
        if segments and phone == "SIL" and segments[-1][0] == "SIL":
            segments[-1] = ("SIL", segments[-1][1], end)
        else:
            segments.append((phone, start, end))
    return segments


def _check_name(name: str) -> None:
    if name not in ENCODERS:
        raise TalkgsError(f"unknown audio encoder {name!r} (choose from {', '.join(ENCODERS)})")


def _fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` cut or zero-padded to ``length``: float32 [length]."""
    out = np.zeros(length, np.float32)
    n = min(length, len(samples))
    out[:n] = samples[:n]
    return out


def resample_linear(native_times: np.ndarray, feats: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of feats [N, D] at increasing native_times [N] to times [T]: [T, D].

    Times outside the native range take the nearest native step.
    """
    if len(native_times) == 1:
        return np.repeat(feats, len(times), axis=0)
    i = np.clip(np.searchsorted(native_times, times, side="right") - 1, 0, len(native_times) - 2)
    w = np.clip((times - native_times[i]) / (native_times[i + 1] - native_times[i]), 0.0, 1.0)[:, None]
    return feats[i] * (1.0 - w) + feats[i + 1] * w


def _log_mel(audio: np.ndarray, times: np.ndarray, n_mels: int, sample_rate: int) -> np.ndarray:
    """Natural-log mel power of audio [S] at times [T]: [T, n_mels]."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    win = round(MEL_WINDOW_S * sample_rate)
    hop = round(MEL_HOP_S * sample_rate)
    n_fft = 1 << (win - 1).bit_length()
    # Native step t is centred on sample t * hop (centred frames, zeros beyond both ends); pad so
    # that the last native step reaches the last requested time.
    steps = math.ceil(times[-1] * sample_rate / hop) + 1
    audio = np.pad(audio, (0, max(0, (steps - 1) * hop - len(audio))))
    filters = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
        max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )
    mel = spectrogram(
        audio, window_function(win, "hann"), frame_length=win, hop_length=hop, fft_length=n_fft,
        power=2.0, center=True, pad_mode="constant", mel_filters=filters, mel_floor=MEL_FLOOR,
        log_mel="log",
    ).T[:steps]  # [N, n_mels]
    return resample_linear(np.arange(steps) * hop / sample_rate, mel, times)


def _phone_decoder():
    """A fresh all-phone decoder: one that has decoded before carries state (CMN, search) into the
    next utterance and gives slightly different phones, and a new one costs only 0.1 s."""
    import pocketsphinx

    root = os.path.join(pocketsphinx.get_model_path(), "en-us")
    return pocketsphinx.Decoder(
        hmm=os.path.join(root, "en-us"), allphone=os.path.join(root, "en-us-phone.lm.bin"),
        beam=PS_BEAM, pbeam=PS_PHONE_BEAM, lw=PS_LANGUAGE_WEIGHT, loglevel="FATAL",
    )


def _phone_one_hot(segments: list[tuple[str, float, float]], times: np.ndarray) -> np.ndarray:
    """One-hot [T, len(PHONES)] of the phone active at each of times [T]; SIL outside segments."""
    labels = np.zeros(len(times), np.int64)  # PHONES[0] is SIL
    if segments:
        starts = np.array([s for _, s, _ in segments])
        ends = np.array([e for _, _, e in segments])
        ids = np.array([_PHONE_INDEX[p] for p, _, _ in segments])
        i = np.maximum(np.searchsorted(starts, times, side="right") - 1, 0)
        inside = (times >= starts[i]) & (times < ends[i])
        labels[inside] = ids[i[inside]]
    return np.eye(len(PHONES), dtype=np.float32)[labels]


def _missing_weights(ckpt: _Checkpoint, path: str) -> str:
    return (
        f"{ckpt.label} weights '{path}' are not on this machine (talkgs does not download them during "
        "prepare): put the checkpoint in the Hugging Face cache or pass a local folder, "
        "or use --audio-encoder mel or phonemes"
    )


def _load_checkpoint(name: str, cfg: AudioConfig):
    """(model, feature extractor) of encoder ``name``, loaded once per checkpoint path."""
    import torch
    import transformers

    ckpt = _CHECKPOINTS[name]
    path = getattr(cfg, ckpt.cfg_field)
    key = (name, path)
    if key not in _MODELS:
        try:
            model = getattr(transformers, ckpt.model_class).from_pretrained(
                path, local_files_only=cfg.local_files_only
            )
        except OSError:
            raise TalkgsError(_missing_weights(ckpt, path)) from None
        try:
            extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(
                path, local_files_only=cfg.local_files_only
            )
        except OSError:
            # Both supported checkpoint families expect zero-mean unit-variance input, which is
            # what the default extractor does.
            extractor = transformers.Wav2Vec2FeatureExtractor()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _MODELS[key] = (model.eval().to(device), extractor)
    return _MODELS[key]


def _checkpoint_features(name: str, audio: np.ndarray, times: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """HuBERT hidden states or wav2vec2 CTC logits of audio [S] at times [T]: [T, D].

    The model runs on windows of ``CHUNK_S`` with ``CONTEXT_S`` of context each side. Output step
    t of the convolutional front end sees samples [t * stride, t * stride + field), so its native
    time is the centre of that span, and windows that start on a multiple of the stride give
    outputs on the same global grid.
    """
    import torch

    model, extractor = _load_checkpoint(name, cfg)
    output = _CHECKPOINTS[name].output
    stride = math.prod(model.config.conv_stride)
    field = 1
    for kernel, s in zip(reversed(model.config.conv_kernel), reversed(model.config.conv_stride)):
        field = (field - 1) * s + kernel
    sr = MODEL_SAMPLE_RATE

    # Normalise the whole signal at once, so that every window sees the same input as one pass.
    x = extractor(audio, sampling_rate=sr, return_tensors="np")["input_values"][0].astype(np.float32)
    steps = max(1, math.ceil((times[-1] * sr - field / 2) / stride) + 1)
    x = np.pad(x, (0, max(0, (steps - 1) * stride + field - len(x))))  # [S'']
    available = (len(x) - field) // stride + 1  # output steps the padded signal gives
    chunk = max(1, round(CHUNK_S * sr / stride))
    context = round(CONTEXT_S * sr / stride)

    device = next(model.parameters()).device
    parts = []
    with torch.inference_mode():
        for a in range(0, steps, chunk):
            b = min(a + chunk, steps)
            end = min(b + context, available)
            # The last window reaches back to full length, so that front ends which normalise over
            # time (group norm in wav2vec2-base) see as much audio in it as in the others.
            lo = max(0, min(a - context, end - chunk - 2 * context))
            hi = (end - 1) * stride + field
            window = torch.from_numpy(x[lo * stride : hi]).to(device)[None]
            out = getattr(model(window), output)[0]  # [steps in window, D]
            parts.append(out[a - lo : b - lo].float().cpu().numpy())
    feats = np.concatenate(parts)  # [N, D]
    return resample_linear((np.arange(steps) * stride + field / 2) / sr, feats, times)


def align_phones(samples: np.ndarray) -> tuple[PhoneSegments, str]:
    """Phones of speech ``samples`` (float32 mono [S] at 16 kHz) and how they were found.

    First pocketsphinx recognises the words (bundled en-us acoustic model, its default language
    model and dictionary), then force-aligns those words to get phone times: this finds far more
    p/b/m than all-phone decoding, which drops short phones. When no words are recognised or the
    alignment fails, all-phone decoding (``talkgs.audio.features.phone_segments``) is the fallback.

    Returns (segments, "forced_alignment" | "allphone").
    """
    segments = _forced_alignment(samples)
    if segments:
        return segments, "forced_alignment"
    log.info("forced alignment found no phones (no words recognised); using all-phone decoding")
    return phone_segments(samples, MODEL_SAMPLE_RATE), "allphone"


def _forced_alignment(samples: np.ndarray) -> PhoneSegments:
    """Phones from word recognition + forced alignment, or [] when either finds nothing."""
    import pocketsphinx

    if len(samples) == 0:
        return []
    root = os.path.join(pocketsphinx.get_model_path(), "en-us")
    model = {"hmm": os.path.join(root, "en-us"), "dict": os.path.join(root, "cmudict-en-us.dict"), "loglevel": "FATAL"}
    pcm = _pcm16(samples)
    recogniser = pocketsphinx.Decoder(lm=os.path.join(root, "en-us.lm.bin"), **model)
    _decode(recogniser, pcm)
    hyp = recogniser.hyp()
    words = hyp.hypstr.strip() if hyp is not None else ""
    if not words:
        return []
    # A separate decoder without the best-path lattice pass: with it, the word pass can leave <s> or
    # </s> one frame long, which the 3-state phone pass cannot fit ("impossible duration"), and the
    # whole alignment fails (it did on obama_diwali_pd_en_30s_256.mp4).
    decoder = pocketsphinx.Decoder(bestpath=False, **model)
    try:
        decoder.set_align_text(words)  # first pass: word boundaries
        _decode(decoder, pcm)
        decoder.set_alignment()  # second pass: phone and state boundaries
        _decode(decoder, pcm)
    except RuntimeError:
        return []
    alignment = decoder.get_alignment()
    if alignment is None:
        return []
    frame_s = 1.0 / float(decoder.config["frate"])
    # Frame t spans offset + [t, t + 1) frames: the centre of its analysis window, as in phone_segments.
    offset_s = float(decoder.config["wlen"]) / 2 - frame_s / 2
    duration = len(samples) / MODEL_SAMPLE_RATE
    segments: PhoneSegments = []
    for entry in alignment.phones():
        phone = entry.name if entry.name in PHONES else "SIL"  # SIL and fillers
        start = max(0.0, offset_s + entry.start * frame_s)
        end = min(duration, offset_s + (entry.start + entry.duration) * frame_s)
        if end > start:
            segments.append((phone, start, end))
    return segments


def _decode(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def _pcm16(samples: np.ndarray) -> bytes:
    """16-bit PCM of float [S], with the same fixed-seed +-1 LSB dither as all-phone decoding (digital
    silence would otherwise give featureless cepstra that the decoder reads as speech)."""
    full = np.iinfo(np.int16)
    dither = np.random.default_rng(0).integers(-PS_DITHER_LSB, PS_DITHER_LSB + 1, len(samples), np.int16)
    return np.clip(np.round(samples * full.max) + dither, full.min, full.max).astype("<i2").tobytes()


def _viseme_features(segments: PhoneSegments, samples: np.ndarray, start_s: float, times: np.ndarray,
                     sample_rate: int) -> np.ndarray:
    """[T, len(VISEMES) + 1]: the viseme one-hot of the phone at each of ``times`` (absolute s) and the
    relative loudness there. ``segments`` are relative to ``samples``, which start at ``start_s``."""
    rel = np.asarray(times, np.float64) - start_s
    labels = np.zeros(len(rel), np.int64)  # silence
    for phone, a, b in segments:
        labels[(rel >= a) & (rel < b)] = _VISEME_OF_PHONE[phone]
    one_hot = np.eye(len(VISEMES), dtype=np.float32)[labels]
    return np.concatenate([one_hot, _relative_loudness(samples, rel, sample_rate)[:, None]], 1)


def _relative_loudness(samples: np.ndarray, rel: np.ndarray, sample_rate: int) -> np.ndarray:
    """[T] in [0, 1]: the level of the 25 ms around each of ``rel`` (s into ``samples``) against the
    loudest such window of the ``LOUDNESS_REF_S`` before it (``LOUDNESS_RANGE_DB`` below it is 0)."""
    hop = round(MEL_HOP_S * sample_rate)
    win = round(MEL_WINDOW_S * sample_rate)
    n = max(1, (len(samples) + hop - 1) // hop)
    padded = np.pad(samples.astype(np.float64), (win // 2, win))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n]  # [n, win] centred on k * hop
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)  # [n] dB
    reach = round(LOUDNESS_REF_S / MEL_HOP_S)
    # Running max over the preceding ``reach`` steps; the reference never drops below -60 dBFS, so
    # a silent stretch reads as silent rather than as loud relative to itself.
    ref = np.maximum(np.array([level[max(0, k - reach): k + 1].max() for k in range(n)]), -60.0)
    k = np.clip(np.round(rel / MEL_HOP_S).astype(np.int64), 0, n - 1)
    return np.clip(1 + (level[k] - ref[k]) / LOUDNESS_RANGE_DB, 0.0, 1.0).astype(np.float32)
