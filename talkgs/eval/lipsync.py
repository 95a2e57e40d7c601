"""Lip-sync metrics of any talking-face video against a speech track, without SyncNet weights.

Three measurements, all from the video's frames and the audio alone, so they apply equally to a
render driven by new speech and to real footage with its own audio (which gives the ceiling a
render can hope to reach):

- bilabial closure: pocketsphinx aligns the speech to phones; during every p, b or m the lips must
  meet, so the share of those phones during which MediaPipe sees the mouth close is a direct,
  interpretable check of articulation.
- audio-video offset: the lag that best correlates mouth opening with the speech energy envelope
  (``talkgs.prepare.sync``); a good render has the same offset as its real footage, about 0.
- mouth-energy correlation: that correlation at lag 0.

Timing: frame i of the video spans [i / fps, (i + 1) / fps) of the audio, whose sample 0 is the
file's time origin (``talkgs.utils.media``). Frames stream and are dropped once MediaPipe has seen
them; only their landmarks are kept.

Measured on real footage with its own audio (the ceilings), in ../shared/data/video:
anchor_en_71s_512 closure 0.93 (43 of 46), offset 0, correlation 0.26; reagan_pd_en_26s_256 0.86
(6 of 7), 0, 0.19; obama_diwali_pd_en_30s_256 0.74 (14 of 19), +2, 0.05 at lag 0 (0.30 at +2). The
demo clip's audio is about 4 frames late: 0.22 (2 of 9) and +5 as it is, 0.83 (10 of 12), +1 and
0.25 with the audio advanced 4 frames. On 8 s clips the offset is not reliable (+-10, not confident).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from talkgs.audio.features import PhoneSegments, align_phones
from talkgs.errors import TalkgsError
from talkgs.utils import log, media

#: CMU phones during which the lips close: p, b, m.
BILABIALS: tuple[str, ...] = ("P", "B", "M")

#: Sample rate of pocketsphinx's en-us acoustic model (and of ``energy_envelope`` here).
SAMPLE_RATE = media.SAMPLE_RATE



@dataclass(frozen=True)
class LipSyncConfig:
    """Thresholds of the lip-sync metrics.

    Closure threshold: a mouth counts as closed below

        low + closure_fraction * (high - low),

    where low and high are the ``closure_low_pct`` and ``closure_high_pct`` percentiles of the
    clip's own per-frame mouth opening. Why relative to the clip and not a fixed number: the opening
    is already normalised by the eye-corner distance, but MediaPipe's inner-lip points do not meet
    exactly on a closed mouth, and how far apart they stay depends on the lips' thickness, the
    resolution and sharpness of the frames and the head pose, so a fixed value would read one
    subject's rest position as open and another's as closed. Every speaker closes the mouth for
    pauses and bilabials and opens it on vowels, so the 5th and 95th percentiles (robust to a few
    landmark glitches) bracket closed and open for that clip, and a quarter of the way up is closed
    with margin on both sides. The threshold and both percentiles go into the report: a render
    whose mouth never really closes has a high ``opening_low`` next to real footage's.
    """

    closure_low_pct: float = 5.0
    """Percentile of the per-frame opening taken as the clip's closed mouth."""
    closure_high_pct: float = 95.0
    """Percentile taken as its open mouth (speech vowels)."""
    closure_fraction: float = 0.25
    """Where between the two the closure threshold lies (0 = low percentile, 1 = high)."""
    closure_tolerance_frames: int = 1
    """Frames added to each side of a bilabial's span: the lips close just before the acoustic
    burst of a p or b, phone boundaries from the aligner are only good to about 10-20 ms, and a
    30 fps frame is 33 ms, so a closure on the neighbouring frame still counts."""
    max_lag_s: float = 0.5
    """The audio-video offset is searched over +-this many seconds (15 frames at 30 fps): more than
    any real sync error of a dubbed or rendered clip, less than a syllable rhythm's repeats."""
    silence_peak: float = 1e-3
    """Audio whose peak absolute sample (full scale 1) is below this (-60 dBFS) is silent: there is
    no speech to measure against."""


def lipsync_metrics(
    video: str | os.PathLike,
    audio: str | os.PathLike | None = None,
    fps: float | None = None,
    cfg: LipSyncConfig | None = None,
) -> dict:
    """Lip-sync metrics of ``video`` against ``audio`` (default: the video's own audio track).

    Args:
        video: any video ffmpeg reads, rendered or real.
        audio: any file with an audio stream ffmpeg reads; None uses ``video``'s own audio, which is
            how the ceiling is measured on real footage.
        fps: rate the frames are sampled at (a subject's fps); default the video's own.

    Returns a JSON-ready dict: ``frames``, ``duration_s``, ``fps``, ``audio``, ``video``,
    ``phone_source`` ("forced_alignment" or "allphone"), ``phones``, ``bilabial_count``,
    ``bilabial_closed``, ``bilabial_closure_rate`` (None without bilabials), ``closure_threshold``,
    ``opening_low``, ``opening_high``, ``av_offset_frames`` (positive = audio late),
    ``av_offset_corr``, ``av_offset_confident``, ``mouth_energy_corr``, ``face_frames`` and ``config``.
    The two correlations use ``sync``'s detrending (a 1 s moving average removed). Below about 15 s
    of speech the correlation peak is often a syllable-rhythm neighbour: trust ``av_offset_frames``
    only when ``av_offset_confident``.

    Raises TalkgsError for a missing or unreadable file, no or silent audio, or no face.
    """
    from talkgs.prepare.sync import energy_envelope, estimate_offset

    cfg = cfg or LipSyncConfig()
    video = Path(video)
    audio = Path(audio) if audio is not None else video
    samples = load_speech(audio, cfg)  # [S], checked before the slow video pass
    info = media.probe_video(video)
    fps = float(fps or info.fps)
    if not fps > 0:
        raise TalkgsError(f"{video} has no frame rate; pass the subject it was rendered from")
    opening = mouth_openings(video, (info.width, info.height), fps)  # [T], NaN where no face
    num_frames = len(opening)
    face = np.isfinite(opening)
    if not face.any():
        raise TalkgsError(f"no face found in any frame of {video}")

    # The audio of a video of T frames is its first T / fps seconds (as in talkgs.audio.features).
    samples = samples[: int(round(num_frames / fps * SAMPLE_RATE))]
    segments, source = align_phones(samples)
    threshold, low, high = closure_threshold(opening, cfg)
    closed = bilabial_closures(opening, segments, fps, threshold, cfg.closure_tolerance_frames)  # [P]

    energy = energy_envelope(samples, SAMPLE_RATE, num_frames, fps)  # [T]
    offset = estimate_offset(_fill_gaps(opening), energy, fps, max(1, int(round(cfg.max_lag_s * fps))))
    return {
        "video": str(video),
        "audio": str(audio),
        "fps": fps,
        "frames": num_frames,
        "duration_s": num_frames / fps,
        "face_frames": int(face.sum()),
        "phone_source": source,
        "phones": sum(p != "SIL" for p, _, _ in segments),
        "bilabial_count": len(closed),
        "bilabial_closed": int(closed.sum()),
        "bilabial_closure_rate": float(closed.mean()) if len(closed) else None,
        "closure_threshold": threshold,
        "opening_low": low,
        "opening_high": high,
        "av_offset_frames": offset.frames,
        "av_offset_corr": offset.corr,
        "av_offset_confident": offset.confident,
        # Same detrending as the offset search (sync.DETREND_S moving average removed).
        "mouth_energy_corr": offset.corr_zero,
        "config": asdict(cfg),
    }


def load_speech(path: Path, cfg: LipSyncConfig) -> np.ndarray:
    """float32 mono [S] at SAMPLE_RATE; TalkgsError if the file is missing, has no audio or is silent."""
    if not path.exists():
        raise TalkgsError(f"no such file: {path}")
    if path.is_dir():
        raise TalkgsError(f"{path} is a folder, not an audio file")
    samples = media.read_audio(path, SAMPLE_RATE)
    if samples is None or len(samples) == 0:
        raise TalkgsError(f"{path} has no audio stream")
    if float(np.abs(samples).max()) < cfg.silence_peak:
        raise TalkgsError(f"the audio of {path} is silent (peak below {cfg.silence_peak:g} of full scale)")
    return samples


def mouth_openings(video: str | os.PathLike, size: tuple[int, int], fps: float) -> np.ndarray:
    """[T] mouth opening (``landmark_metrics.mouth_opening``) of every frame, NaN where no face.

    Frames are resampled to ``fps`` from the file's time origin, the origin of ``read_audio``.
    """
    from talkgs.eval.landmark_metrics import LandmarkTracker, mouth_opening

    tracker = LandmarkTracker()
    for frame in log.progress(media.read_frames(video, size, fps=fps), desc="landmarks", unit="frame"):
        tracker.add(frame)
    points = tracker.result()  # [T, 478, 2]; 4 KB a frame, the frames themselves are not kept
    if len(points) == 0:
        raise TalkgsError(f"{video} has no frames")
    return mouth_opening(points)


def _fill_gaps(x: np.ndarray) -> np.ndarray:
    """[T] with NaNs linearly interpolated from their finite neighbours (the correlation needs every frame)."""
    ok = np.isfinite(x)
    if ok.all():
        return x
    idx = np.arange(len(x))
    return np.interp(idx, idx[ok], x[ok])


def closure_threshold(opening: np.ndarray, cfg: LipSyncConfig) -> tuple[float, float, float]:
    """(threshold, low, high) of a clip's [T] opening; see ``LipSyncConfig`` for the rule."""
    low, high = np.nanpercentile(opening, [cfg.closure_low_pct, cfg.closure_high_pct])
    return float(low + cfg.closure_fraction * (high - low)), float(low), float(high)


def bilabial_closures(
    opening: np.ndarray,  # [T]
    segments: PhoneSegments,
    fps: float,
    threshold: float,
    tolerance: int = 1,
) -> np.ndarray:
    """[P] bool, one per p/b/m in ``segments``: whether the mouth closes during it.

    A phone spanning [start, end) seconds covers frames floor(start * fps) to ceil(end * fps) - 1;
    it counts as closed when the minimum opening over those frames, widened by ``tolerance`` frames
    each side, is below ``threshold``. Bilabials that lie past the last frame, or whose frames all
    lack a face, are left out.
    """
    closed = []
    n = len(opening)
    for phone, start, end in segments:
        if phone not in BILABIALS:
            continue
        first = int(np.floor(start * fps))
        last = max(first, int(np.ceil(end * fps)) - 1)
        span = opening[max(0, first - tolerance): min(n, last + tolerance + 1)]
        span = span[np.isfinite(span)]
        if len(span):
            closed.append(bool(span.min() < threshold))
    return np.array(closed, bool)
