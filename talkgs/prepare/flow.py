"""Optical flow of the rigid landmarks, fused with MediaPipe's positions over time.

MediaPipe gets each frame's landmarks right on average but wobbles by a fraction of a pixel from
one frame to the next. Pyramidal Lucas-Kanade (KLT) measures how the same skin points move between
two frames to a few hundredths of a pixel, but drifts over long spans. Solving for the point tracks
that agree with both (absolute positions from MediaPipe, frame-to-frame motion from KLT) keeps
MediaPipe's accuracy and KLT's steadiness. The solve is a least-squares problem over the whole
sequence, so it is zero-phase: no lag, unlike a causal filter.
"""

from __future__ import annotations

import cv2
import numpy as np

#: KLT window side in pixels at detection resolution and pyramid levels (levels cover fast motion).
KLT_WINDOW = 21
KLT_LEVELS = 3
KLT_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)


def klt(prev_gray: np.ndarray, gray: np.ndarray, points: np.ndarray, fb_max_px: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """Track ``points`` [P, 2] (continuous pixel coordinates) from ``prev_gray`` into ``gray``.

    Returns (displacement [P, 2], valid [P] bool). A track is valid when KLT converged both ways and
    tracking back lands within ``fb_max_px`` of the start (forward-backward check).
    """
    p0 = (np.asarray(points, np.float32) - 0.5).reshape(-1, 1, 2)  # OpenCV puts pixel centres at integers
    kw = dict(winSize=(KLT_WINDOW, KLT_WINDOW), maxLevel=KLT_LEVELS, criteria=KLT_CRITERIA)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev_gray, gray, p0, None, **kw)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(gray, prev_gray, p1, None, **kw)
    fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=-1)
    valid = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < fb_max_px)
    return (p1 - p0).reshape(-1, 2).astype(np.float64), valid


def fuse_tracks(obs: np.ndarray, flow: np.ndarray, valid: np.ndarray, cuts: list[int], weight: float
                ) -> np.ndarray:
    """Point tracks that fit MediaPipe positions and KLT motion together.

    Minimises, for every point and coordinate, sum_i (x_i - obs_i)^2 + weight * sum_i v_i (x_i -
    x_{i-1} - flow_i)^2, where v_i is the validity of frame i's flow (zero at cuts). ``weight`` is
    the ratio of the two noise variances (MediaPipe over KLT). The normal equations are
    tridiagonal and are solved for all series at once.

    Args:
        obs: [F, P, 2] landmark positions.
        flow: [F, P, 2] displacement from frame i-1 to frame i (row 0 unused).
        valid: [F, P] whether flow row i can be trusted.
        cuts: frames i with a cut between frame i-1 and i.
    Returns:
        [F, P, 2] fused positions.
    """
    n = obs.shape[0]
    if flow.shape != obs.shape or valid.shape != obs.shape[:2]:
        raise ValueError(f"obs {obs.shape}, flow {flow.shape} and valid {valid.shape} do not match")
    if n < 2 or weight <= 0:
        return obs.copy()
    w = weight * valid.astype(np.float64)  # [F, P]
    w[0] = 0.0
    w[[c for c in cuts if 0 < c < n]] = 0.0
    w = w[..., None]  # [F, P, 1]: same weight for x and y
    # Row i of the system: (1 + w_i + w_{i+1}) x_i - w_i x_{i-1} - w_{i+1} x_{i+1} = obs_i + w_i d_i - w_{i+1} d_{i+1}
    w_next = np.concatenate([w[1:], np.zeros_like(w[:1])])
    diag = 1.0 + w + w_next
    rhs = obs + w * flow - w_next * np.concatenate([flow[1:], np.zeros_like(flow[:1])])
    # Thomas algorithm, vectorised over the P x 2 series.
    c = np.zeros_like(diag)
    d = np.zeros_like(rhs)
    c[0] = -w_next[0] / diag[0]
    d[0] = rhs[0] / diag[0]
    for i in range(1, n):
        denom = diag[i] + w[i] * c[i - 1]
        c[i] = -w_next[i] / denom
        d[i] = (rhs[i] + w[i] * d[i - 1]) / denom
    x = np.empty_like(rhs)
    x[-1] = d[-1]
    for i in range(n - 2, -1, -1):
        x[i] = d[i] - c[i] * x[i + 1]
    return x


class MotionCheck:
    """How well tracked motion agrees with the image motion, measured where tracking did not look.

    For each pair of consecutive frames, KLT tracks ``topology.MOTION_CHECK`` (skin points on the
    nose and cheeks that the tracker never used) and compares that image motion with (a) the
    motion the tracked head pose predicts and (b) the motion of MediaPipe's own landmarks. The
    mean disagreement in pixels is the jitter of each.
    """

    def __init__(self, fb_max_px: float):
        self.fb_max_px = fb_max_px
        self._pose: list[np.ndarray] = []
        self._landmarks: list[np.ndarray] = []

    def add(self, prev_gray: np.ndarray, gray: np.ndarray, pose_prev: np.ndarray, pose_cur: np.ndarray,
            lm_prev: np.ndarray, lm_cur: np.ndarray) -> None:
        """pose_*: [P, 2] the points projected with the two frames' poses; lm_*: [P, 2] landmarks."""
        # One KLT call for both point sets: building the image pyramids is most of its cost.
        d, v = klt(prev_gray, gray, np.concatenate([pose_prev, lm_prev]), self.fb_max_px)
        err = np.linalg.norm(d - np.concatenate([pose_cur - pose_prev, lm_cur - lm_prev]), axis=-1)
        p = len(pose_prev)
        self._pose.append(err[:p][v[:p]])
        self._landmarks.append(err[p:][v[p:]])

    def result(self) -> dict[str, float | None]:
        """Mean frame-to-frame motion error in pixels of the tracked head and of the raw landmarks."""

        def mean(parts):
            parts = [p for p in parts if len(p)]
            return round(float(np.concatenate(parts).mean()), 4) if parts else None

        return {"tracked_head": mean(self._pose), "raw_landmarks": mean(self._landmarks)}


class CameraMotion:
    """The camera's own motion: how the background moves between consecutive frames (KLT on corners of the
    background, median displacement), measured where the background shows.

    The fit models the head relative to the camera, so a handheld camera moves nothing of the head; what it moves
    is the background and the torso, which the renderer replays from the frames. The background plate, though, is
    one picture for the whole video: a moving camera smears it, and a render that shows the plate (a new pose, a
    still torso) shows that smear.
    """

    #: Corners tracked per frame pair, and the fewest that make a measurement.
    corners = 200
    min_points = 8
    #: Frames are measured at most this large (the shifts are scaled back): corner detection on a 512-px frame cost
    #: 10 ms, a third of prepare's frame pass.
    max_side = 256

    def __init__(self, fb_max_px: float, margin_px: int):
        self.fb_max_px = fb_max_px
        self.margin_px = margin_px
        self.shifts: list[np.ndarray] = []  # [2] per measured frame pair
        self.frames: list[int] = []

    def add(self, i: int, prev_gray: np.ndarray, gray: np.ndarray, background: np.ndarray) -> None:
        """Frame ``i`` against ``i - 1``; ``background`` [H, W] bool: pixels of the background in frame i - 1."""
        f = min(1.0, self.max_side / max(gray.shape))
        if f < 1.0:
            size = (round(gray.shape[1] * f), round(gray.shape[0] * f))
            prev_gray, gray = (cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in (prev_gray, gray))
            background = cv2.resize(background.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        k = 2 * max(1, round(self.margin_px * f)) + 1  # corners near the person move with them, not with the camera
        mask = cv2.erode(background.astype(np.uint8), np.ones((k, k), np.uint8))
        pts = cv2.goodFeaturesToTrack(prev_gray, self.corners, 0.01, 5, mask=mask)
        if pts is None or len(pts) < self.min_points:
            return
        d, v = klt(prev_gray, gray, pts.reshape(-1, 2) + 0.5, self.fb_max_px * f)
        if v.sum() >= self.min_points:
            self.shifts.append(np.median(d[v], 0) / f)
            self.frames.append(i)

    def per_frame(self, frames: int) -> np.ndarray:
        """[F] the shift's length in pixels at each measured frame, 0 elsewhere."""
        out = np.zeros(frames)
        if self.shifts:
            out[self.frames] = np.linalg.norm(np.asarray(self.shifts), axis=-1)
        return out

    def result(self, moving_px: float) -> dict:
        """The report: per-frame shift statistics in pixels, the path's extent, and whether the camera moves (its
        95th-percentile shift per frame above ``moving_px``)."""
        if not self.shifts:
            return {"measured_frames": 0, "median_px": None, "p95_px": None, "extent_px": None, "moving": None}
        d = np.asarray(self.shifts)  # [M, 2]
        step = np.linalg.norm(d, axis=-1)
        path = np.cumsum(d, 0)
        p95 = float(np.percentile(step, 95))
        return {"measured_frames": len(d), "median_px": round(float(np.median(step)), 3), "p95_px": round(p95, 3),
                "extent_px": round(float(np.ptp(path, 0).max()), 1), "moving": bool(p95 > moving_px)}
