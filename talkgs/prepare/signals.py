"""Expression signals from landmarks, replacing OpenFace action units.

All distances are measured on the per-frame landmarks in canonical head space (head pose removed by
the tracker), so turning the head does not read as blinking or smiling. Ratios are divided by the
outer-eye-corner distance, which makes them unitless and comparable across subjects.
"""

from __future__ import annotations

import numpy as np

from talkgs.data import topology as topo
from talkgs.prepare.config import SignalConfig


def _dist(pts: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(pts[:, i] - pts[:, j], axis=-1)


def eye_ratio(pts3d: np.ndarray, lid_pairs, corners) -> np.ndarray:
    """[F] mean eyelid gap over eye width for landmarks [F, 478, 3]."""
    gap = np.mean([_dist(pts3d, u, d) for u, d in lid_pairs], axis=0)
    return gap / np.maximum(_dist(pts3d, *corners), 1e-9)


def normalise_openness(ratio: np.ndarray, cfg: SignalConfig) -> np.ndarray:
    """Map an eye ratio [F] to openness in [0, 1] for this subject (1 = open, 0 = shut)."""
    open_ = np.percentile(ratio, cfg.open_percentile)
    closed = min(np.percentile(ratio, cfg.closed_percentile), cfg.closed_ratio_max * open_)
    return np.clip((ratio - closed) / max(open_ - closed, 1e-9), 0.0, 1.0)


def compute_signals(pts3d: np.ndarray, pts2d: np.ndarray, cfg: SignalConfig) -> dict[str, np.ndarray]:
    """Per-frame signals.

    Args:
        pts3d: [F, 478, 3] landmarks in canonical head space (pose removed).
        pts2d: [F, 478, 2+] landmarks in output pixels (for the lip boxes).
    Returns:
        blink_left, blink_right: [F] eye openness in [0, 1] (1 open). Named after the subject's eyes.
        mouth_open: [F] inner-lip gap / eye width.
        lip_spread: [F] mouth-corner distance / eye width.
        brow_raise: [F] brow-to-upper-lid height / eye width.
        lips_bbox: [F, 4] (x0, y0, x1, y1) of the outer lip contour in output pixels.
        expression: [F, 5] the five scalar signals in schema.EXPRESSION_CHANNELS order.
    """
    if pts3d.ndim != 3 or pts3d.shape[1:] != (topo.NUM_LANDMARKS, 3):
        raise ValueError(f"pts3d must be [F, 478, 3], got {pts3d.shape}")
    if pts2d.shape[:2] != pts3d.shape[:2]:
        raise ValueError(f"pts2d {pts2d.shape} does not match pts3d {pts3d.shape}")
    eye_w = _dist(pts3d, topo.RIGHT_EYE_CORNERS[0], topo.LEFT_EYE_CORNERS[0])  # [F]
    right = normalise_openness(eye_ratio(pts3d, topo.RIGHT_LID_PAIRS, topo.RIGHT_EYE_CORNERS), cfg)
    left = normalise_openness(eye_ratio(pts3d, topo.LEFT_LID_PAIRS, topo.LEFT_EYE_CORNERS), cfg)
    mouth = _dist(pts3d, *topo.INNER_LIP_MID) / eye_w
    spread = _dist(pts3d, *topo.MOUTH_CORNERS) / eye_w
    upper_lids = [u for u, _ in topo.RIGHT_LID_PAIRS + topo.LEFT_LID_PAIRS]
    # Image y points down in head space as well, so "above" is a smaller y.
    brow_y = pts3d[:, list(topo.RIGHT_BROW + topo.LEFT_BROW), 1].mean(1)
    lid_y = pts3d[:, upper_lids, 1].mean(1)
    brow = (lid_y - brow_y) / eye_w
    lips = pts2d[:, list(topo.LIPS_OUTER), :2]
    bbox = np.concatenate([lips.min(1), lips.max(1)], axis=-1)
    out = {
        "blink_left": left,
        "blink_right": right,
        "mouth_open": mouth,
        "lip_spread": spread,
        "brow_raise": brow,
        "lips_bbox": bbox,
    }
    out = {k: v.astype(np.float32) for k, v in out.items()}
    out["expression"] = np.stack([out[k] for k in ("blink_left", "blink_right", "mouth_open", "lip_spread",
                                                    "brow_raise")], axis=-1)
    return out
