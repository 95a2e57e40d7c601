"""Metrics that compare faces through MediaPipe landmarks found on rendered and real frames.

No SyncNet or other weights: the same Face Mesh that prepare uses finds the lips and eyelids on both
sequences, and the metrics compare what it finds.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from talkgs.data import topology as topo
from talkgs.prepare.config import FaceConfig
from talkgs.prepare.landmarks import FaceMeshDetector

#: Frames are enlarged to this side before landmark detection, so MediaPipe sees the same face size
#: whatever the render resolution; LMD is reported in pixels at this size (the usual 512).
DETECT_SIZE = 512

MOUTH = list(topo.LIPS_OUTER + topo.LIPS_INNER)


class LandmarkTracker:
    """Landmarks of a frame sequence, fed one frame at a time (tracking mode, so order matters)."""

    def __init__(self):
        self._detector = FaceMeshDetector(FaceConfig(max_faces=1))
        self._points: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        big = cv2.resize(frame, (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_CUBIC)
        faces = self._detector(big)
        self._points.append(faces[0][:, :2] if faces else np.full((478, 2), np.nan, np.float32))

    def result(self) -> np.ndarray:
        """[T, 478, 2] in pixels at DETECT_SIZE (NaN where no face was found); closes the detector."""
        self._detector.close()
        return np.stack(self._points) if self._points else np.zeros((0, 478, 2), np.float32)


def track_landmarks(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Landmarks [T, 478, 2] in pixels at DETECT_SIZE for a sequence of RGB frames (NaN where none)."""
    tracker = LandmarkTracker()
    for frame in frames:
        tracker.add(frame)
    return tracker.result()


def _ratio(pts: np.ndarray, pairs, corners) -> np.ndarray:
    gap = np.mean([np.linalg.norm(pts[:, u] - pts[:, d], axis=-1) for u, d in pairs], axis=0)
    return gap / np.linalg.norm(pts[:, corners[0]] - pts[:, corners[1]], axis=-1)


def mouth_opening(pts: np.ndarray) -> np.ndarray:
    """[T] inner-lip gap over the outer-eye-corner distance."""
    gap = np.linalg.norm(pts[:, topo.INNER_LIP_MID[0]] - pts[:, topo.INNER_LIP_MID[1]], axis=-1)
    return gap / np.linalg.norm(pts[:, topo.RIGHT_EYE_CORNERS[0]] - pts[:, topo.LEFT_EYE_CORNERS[0]], axis=-1)


def eye_opening(pts: np.ndarray) -> np.ndarray:
    """[T] mean eyelid gap over eye width of both eyes."""
    return 0.5 * (_ratio(pts, topo.RIGHT_LID_PAIRS, topo.RIGHT_EYE_CORNERS)
                  + _ratio(pts, topo.LEFT_LID_PAIRS, topo.LEFT_EYE_CORNERS))


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def landmark_metrics(rendered: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """LMD and the mouth/blink agreement of two landmark sequences [T, 478, 2] at DETECT_SIZE.

    - lmd_px: mean distance of the 40 lip landmarks, after aligning each pair of frames on the mouth
      centre (as in the LMD of the talking-head literature, which measures mouth shape, not head
      placement), in pixels at 512.
    - mouth_open_corr: Pearson correlation over time of the mouth opening.
    - mouth_open_spread: how far the rendered mouth opens and closes against the truth: the standard deviation
      of its opening over the truth's (a regression that mumbles toward an average mouth reads well below 1).
    - blink_agreement: Pearson correlation over time of the eye opening (None when the eyes of
      either sequence do not move).
    - landmark_frames: frames where both sequences have a face.
    """
    ok = np.isfinite(rendered).all((1, 2)) & np.isfinite(truth).all((1, 2))
    if not ok.any():
        return {"lmd_px": None, "mouth_open_corr": None, "mouth_open_spread": None, "blink_agreement": None,
                "landmark_frames": 0}
    r, t = rendered[ok][:, MOUTH], truth[ok][:, MOUTH]
    r = r - r.mean(1, keepdims=True)
    t = t - t.mean(1, keepdims=True)
    lmd = float(np.linalg.norm(r - t, axis=-1).mean())
    opened, opened_truth = mouth_opening(rendered[ok]), mouth_opening(truth[ok])
    spread = float(np.std(opened) / np.std(opened_truth)) if np.std(opened_truth) > 1e-9 else None
    return {
        "lmd_px": lmd,
        "mouth_open_corr": _corr(opened, opened_truth),
        "mouth_open_spread": spread,
        "blink_agreement": _corr(eye_opening(rendered[ok]), eye_opening(truth[ok])),
        "landmark_frames": int(ok.sum()),
    }
