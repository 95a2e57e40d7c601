"""Training-resolution copies of a subject's frames and labels, memory-mapped from disk.

Fitting samples frames in random order, which a video decoder cannot seek to cheaply. The frames are
therefore decoded once, in one streaming pass, into raw uint8 arrays on disk at the training
resolution. The arrays are memory-mapped, so only the frames in use occupy RAM (the page cache
decides), and nothing ever holds the whole video. The cache is rebuilt when the subject changes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from talkgs.data import schema
from talkgs.data.subject import Subject
from talkgs.utils import log


@dataclass
class FrameCache:
    """frames [F, R, R, 3] uint8 RGB and labels [F, R, R] uint8, memory-mapped, at resolution R."""

    frames: np.ndarray
    labels: np.ndarray
    resolution: int


def _stamp(subject: Subject) -> dict:
    """What the cache depends on: if any of it changes, the cache is rebuilt."""
    stat = lambda name: (subject.root / name).stat()  # noqa: E731
    return {
        "frames": [stat(schema.FRAMES).st_size, stat(schema.FRAMES).st_mtime_ns],
        "labels": [stat(schema.LABELS_VIDEO).st_size, stat(schema.LABELS_VIDEO).st_mtime_ns],
        "num_frames": subject.num_frames,
    }


def open_cache(subject: Subject, resolution: int) -> FrameCache:
    """The cache of ``subject`` at ``resolution`` px, built on first use."""
    folder = subject.root / schema.CACHE_DIR
    base = folder / f"{resolution}"
    meta_path = Path(f"{base}.json")
    shape = (subject.num_frames, resolution, resolution)
    stamp = _stamp(subject)
    if not (meta_path.is_file() and json.loads(meta_path.read_text()) == stamp):
        folder.mkdir(parents=True, exist_ok=True)
        _build(subject, resolution, base, shape)
        meta_path.write_text(json.dumps(stamp))
    return FrameCache(
        frames=np.memmap(f"{base}.rgb", np.uint8, "r", shape=(*shape, 3)),
        labels=np.memmap(f"{base}.labels", np.uint8, "r", shape=shape),
        resolution=resolution,
    )


def _build(subject: Subject, resolution: int, base: Path, shape: tuple[int, int, int]) -> None:
    # Written under temporary names and renamed at the end: an interrupted build is never used.
    tmp_rgb, tmp_lab = Path(f"{base}.rgb.tmp"), Path(f"{base}.labels.tmp")
    frames = np.memmap(tmp_rgb, np.uint8, "w+", shape=(*shape, 3))
    labels = np.memmap(tmp_lab, np.uint8, "w+", shape=shape)
    size = (resolution, resolution)
    resize = subject.size != resolution
    n = 0
    for i, (frame, lab) in enumerate(log.progress(zip(subject.frames(), subject.labels()), total=shape[0],
                                                  desc=f"caching frames at {resolution}px", unit="frame")):
        frames[i] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if resize else frame
        labels[i] = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST) if resize else lab
        n += 1
    if n != shape[0]:
        raise RuntimeError(f"{subject.root}: decoded {n} frames, the manifest says {shape[0]}")
    frames.flush()
    labels.flush()
    del frames, labels
    os.replace(tmp_rgb, f"{base}.rgb")
    os.replace(tmp_lab, f"{base}.labels")
