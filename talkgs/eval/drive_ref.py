"""Lip sync measured against another person's real mouth (``talkgs eval SUBJECT --drive-ref VIDEO``).

The fitted head is driven by the soundtrack of a real video of someone else talking; MediaPipe then
reads the mouth of the render and the mouth of that video, frame by frame. No part of talkgs produced
the reference, and the measure uses no phone recognizer, so a model cannot score well by echoing the
recognizer it was trained with:

- aperture correlation: Pearson correlation of the z-scored mouth openings, at the best lag within
  ``max_lag`` frames (positive lag: the render's mouth is late), and that lag;
- closure events: short runs of a closed mouth (lips meeting on p/b/m, brief pauses), matched within
  ``event_tolerance`` frames: recall (reference closures the render makes) and precision (render
  closures the reference makes).

Each figure comes with its chance level: the same measure against the reference shifted by half its
length (``np.roll``), which keeps its statistics and breaks its timing.

Real clips are not always in sync themselves (the demo clip's audio is 4 frames late): a reference
whose soundtrack is confidently offset from its mouth gets the correction ``talkgs prepare`` gives a
subject before it drives the head, and the report says so. As a secondary check, the share of the
driving audio's p/b/m (pocketsphinx forced alignment) during which the lips meet is reported for the
render and for the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from talkgs.audio.features import align_phones
from talkgs.eval.lipsync import LipSyncConfig, _fill_gaps, bilabial_closures, closure_threshold, mouth_openings


@dataclass(frozen=True)
class DriveRefConfig:
    max_lag: int = 5
    """Lags searched for the aperture correlation, in frames each way (200 ms at 25 fps)."""
    event_tolerance: int = 1
    """A render closure matches a reference closure when their centres are at most this many frames apart."""
    closure_max_frames: int = 10
    """A closure event is a run of closed frames at most this long (400 ms at 25 fps): the lips meeting
    inside speech. Longer runs are silences, which a mouth that never moves would also 'hit'."""
    reference_max_offset: int = 8
    """Audio-video offsets of the reference clip searched, in frames each way (``prepare.sync``)."""
    lipsync: LipSyncConfig = LipSyncConfig()
    """Where a mouth counts as closed: each clip's own threshold (``LipSyncConfig``)."""


def _zscore(x: np.ndarray) -> np.ndarray:
    x = _fill_gaps(np.asarray(x, np.float64))
    return (x - x.mean()) / max(float(x.std()), 1e-9)


def aperture_correlation(rendered: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[float | None, int]:
    """(best Pearson correlation, its lag) of two [T] openings over lags -max_lag..max_lag.

    Lag L compares rendered[t + L] with reference[t]: positive L means the render is late.
    """
    a, b = _zscore(rendered), _zscore(reference)
    best, best_lag = None, 0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[:len(b) - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        n = min(len(x), len(y))
        if n < 3 or x[:n].std() < 1e-9 or y[:n].std() < 1e-9:
            continue
        c = float(np.corrcoef(x[:n], y[:n])[0, 1])
        if best is None or c > best:
            best, best_lag = c, lag
    return best, best_lag


def closure_events(opening: np.ndarray, threshold: float, max_frames: int) -> np.ndarray:
    """[E] centre frames of the runs of closed frames (opening < threshold) at most ``max_frames`` long."""
    closed = np.concatenate([[False], _fill_gaps(np.asarray(opening, np.float64)) < threshold, [False]])
    edges = np.flatnonzero(np.diff(closed.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]  # run k covers frames starts[k] .. ends[k] - 1
    keep = (ends - starts) <= max_frames
    return ((starts[keep] + ends[keep] - 1) / 2.0).astype(np.float64)


def match_events(found: np.ndarray, truth: np.ndarray, tolerance: float) -> tuple[float | None, float | None]:
    """(recall, precision) of ``found`` event centres against ``truth`` within ``tolerance`` frames
    (each truth event matched at most once, greedily by distance); None where a side has no events."""
    pairs = sorted((abs(f - t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)
                   if abs(f - t) <= tolerance)
    used_f, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    recall = len(used_t) / len(truth) if len(truth) else None
    precision = len(used_f) / len(found) if len(found) else None
    return recall, precision


def drive_ref_metrics(rendered: np.ndarray, reference: np.ndarray, cfg: DriveRefConfig | None = None) -> dict:
    """Agreement of a render's [T] mouth opening with a reference's [T] (module docstring), with chance levels."""
    cfg = cfg or DriveRefConfig()
    n = min(len(rendered), len(reference))
    if n < 2 * cfg.max_lag + 3:
        raise ValueError(f"need at least {2 * cfg.max_lag + 3} frames, got {n}")
    rendered, reference = np.asarray(rendered[:n], np.float64), np.asarray(reference[:n], np.float64)
    shifted = np.roll(reference, n // 2)

    def score(ref: np.ndarray) -> dict:
        corr, lag = aperture_correlation(rendered, ref, cfg.max_lag)
        found = closure_events(rendered, closure_threshold(rendered, cfg.lipsync)[0], cfg.closure_max_frames)
        truth = closure_events(ref, closure_threshold(ref, cfg.lipsync)[0], cfg.closure_max_frames)
        recall, precision = match_events(found, truth, cfg.event_tolerance)
        return {"aperture_corr": corr, "lag_frames": lag, "closure_recall": recall, "closure_precision": precision,
                "closures_rendered": len(found), "closures_reference": len(truth)}

    real, chance = score(reference), score(shifted)
    return {**real, "chance": {k: chance[k] for k in ("aperture_corr", "lag_frames", "closure_recall",
                                                       "closure_precision")},
            "frames": n, "config": asdict(cfg)}


def evaluate_drive_ref(source: str | Path, video: str | Path, device: str | None = None,
                       cfg: DriveRefConfig | None = None, drive: str = "audio") -> dict:
    """Drive the fitted ``source`` with ``video`` (another person talking) and compare the mouths MediaPipe
    sees in the render and in ``video``; returns ``drive_ref_metrics`` plus what was driven how.

    ``drive``: "audio", the video's soundtrack through the model's audio path (the lip-sync figure);
    "video", the video's own tracked mouth (``talkgs render --drive``; code-path models only).

    A reference whose own soundtrack is confidently out of sync with its mouth (``prepare.sync``, the
    estimate ``talkgs prepare`` makes for a subject) has its audio shifted by that offset first, as a
    subject's is: otherwise the reference's own sync error would read as the model's lag.
    """
    import torch

    from talkgs.eval.landmark_metrics import LandmarkTracker, mouth_opening
    from talkgs.prepare.sync import energy_envelope, estimate_offset, shift_audio
    from talkgs.render.driver import TalkingRenderer, read_speech
    from talkgs.utils import log, media

    if drive not in ("audio", "video"):
        raise ValueError(f"drive must be 'audio' or 'video', got {drive!r}")
    cfg = cfg or DriveRefConfig()
    video = Path(video)
    samples = read_speech(video)
    renderer = TalkingRenderer(source, device=device)
    n = renderer.num_frames(samples)
    info = media.probe_video(video)
    reference = mouth_openings(video, (info.width, info.height), renderer.fps)  # [T] at the subject's fps
    sr = media.SAMPLE_RATE
    energy = energy_envelope(samples, sr, len(reference), renderer.fps)
    offset = estimate_offset(_fill_gaps(reference), energy, renderer.fps, cfg.reference_max_offset)
    applied = offset.frames if offset.confident else 0
    samples = shift_audio(samples, applied, sr, renderer.fps)
    tracker = LandmarkTracker()
    with torch.no_grad():
        features = renderer.codes_from_video(video, n) if drive == "video" else renderer.encode(samples, n)
        for frame in log.progress(renderer.frames(features), total=n, desc="render", unit="frame"):
            tracker.add(frame)
    rendered = mouth_opening(tracker.result())
    # Secondary check (it uses the phone recogniser): do the lips meet on the driving audio's p/b/m?
    segments, _ = align_phones(samples)
    closes = {}
    for name, opening in (("rendered", rendered), ("reference", reference)):
        closed = bilabial_closures(opening, segments, renderer.fps, closure_threshold(opening, cfg.lipsync)[0],
                                   cfg.lipsync.closure_tolerance_frames)
        closes[name] = round(float(closed.mean()), 3) if len(closed) else None
    return {"video": str(video), "fps": renderer.fps, "drive": drive, "reference_av_offset_frames": offset.frames,
            "reference_av_offset_confident": offset.confident, "reference_av_offset_applied_frames": applied,
            **drive_ref_metrics(rendered, reference, cfg), "bilabial_closure": closes["rendered"],
            "bilabial_closure_reference": closes["reference"], "rendered_opening": _rounded(rendered),
            "reference_opening": _rounded(reference)}


def _rounded(x: np.ndarray) -> list[float | None]:
    return [round(float(v), 4) if np.isfinite(v) else None for v in x]
