"""Camera and head tracking: robust bundle adjustment of a per-subject rigid landmark template.

No morphable model is involved. The steps:

1. Template: the robust (median) mean of MediaPipe's per-frame 3D landmarks of the rigid points
   (``topology.RIGID``: forehead, nose, eye corners, cheekbones) after similarity alignment.
2. Focal-length prior: ``f0`` from a plausible field of view of the source frame, as a Gaussian on
   log f. MediaPipe's landmarks are nearly weak-perspective, so the data alone pin the focal length
   down poorly; on real clips the fit RMSE changes by a few hundredths of a pixel over a 6x range.
3. Per-frame PnP (SQPnP) of the template with ``f0``.
4. Levenberg-Marquardt bundle adjustment of the focal length, the template (Gaussian prior around
   its initialisation, which also fixes the 7-DoF gauge) and every pose, with Huber IRLS weights
   and the per-frame pose blocks eliminated by a batched Schur complement.
5. Cuts: frames whose landmarks jump in a way the neighbouring frames' motion does not explain.
6. Zero-phase Whittaker smoothing of the poses within each segment between cuts.
7. Every frame's full landmark set, similarity-aligned onto the template (pose removed, expression
   kept), and the per-landmark median shape.

Conventions
-----------
- Camera: OpenCV, x right, y down, z forward; pixels in output (crop) pixels, ``fx = fy = focal``,
  principal point as given (the source frame centre mapped into the crop).
- World = canonical head space: the head is still and the camera moves. A head point ``X`` is at
  ``x_cam = R @ X + t`` in the camera of a frame.
- Canonical head axes: with ``R = I`` the face looks straight at the camera, x toward the image
  right, y down, z away from the camera (into the head). x runs along the eye corners from the
  subject's right eye to the left one; "straight" means z is the normal of the best-fitting plane
  through the rigid points (taken perpendicular to x). Both are measured on MediaPipe's mean shape
  at the start, and the fitted template is rotated back onto it, so the focal length cannot tilt
  the axes.
- Origin at the centroid of the rigid template points; units are metres, with the scale set by
  ``TrackingConfig.eye_width_m`` = distance between the outer eye corners (33, 263).
- Reprojection errors are Euclidean distances of 2D points in output pixels; an RMSE is the root
  mean square of those distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from talkgs.data.topology import LEFT_EYE_CORNERS, NUM_LANDMARKS, RIGHT_EYE_CORNERS, RIGID
from talkgs.errors import TalkgsError
from talkgs.prepare.config import TrackingConfig
from talkgs.prepare.flow import fuse_tracks

MIN_FRAMES = 5
"""Fewer frames constrain the focal length and the template little beyond their priors, and leave
the cut detector without neighbouring frames to compare with."""
NOSE_TIP = 4
"""Landmark in front of the face plane: orients the canonical z axis away from the camera."""
REL_TOL = 1e-6
"""The bundle adjustment stops when an accepted step lowers the cost by less than this fraction."""

_RIGID = np.asarray(RIGID)
_POS = {index: i for i, index in enumerate(RIGID)}  # landmark id -> row of the rigid template
_OUTER = (_POS[RIGHT_EYE_CORNERS[0]], _POS[LEFT_EYE_CORNERS[0]])
_INNER = (_POS[RIGHT_EYE_CORNERS[1]], _POS[LEFT_EYE_CORNERS[1]])


@dataclass
class TrackResult:
    """Tracked camera and head poses of one video (see the module docstring for conventions)."""

    K: np.ndarray  # [3, 3] float64 intrinsics in output pixels (fx = fy = focal)
    R: np.ndarray  # [F, 3, 3] head-to-camera rotation
    t: np.ndarray  # [F, 3] head-to-camera translation, metres
    template: np.ndarray  # [478, 3] all landmarks in canonical head space (metres), median shape
    landmarks3d: np.ndarray  # [F, 478, 3] per-frame landmarks in head space (pose removed), metres
    rmse_px: float  # reprojection RMSE of the rigid points after BA and smoothing, output pixels
    rmse_raw_px: float  # the same before pose smoothing (equal when smoothing is off)
    cuts: list[int] = field(default_factory=list)  # frames i with a cut between frame i-1 and i
    iterations: int = 0  # Levenberg-Marquardt iterations the bundle adjustment used

    @property
    def focal(self) -> float:
        return float(self.K[0, 0])


def track_head(points2d: np.ndarray, points3d: np.ndarray, principal_point: tuple[float, float],
               source_width_px: float, cfg: TrackingConfig, flow: np.ndarray | None = None,
               flow_valid: np.ndarray | None = None) -> TrackResult:
    """Track the camera intrinsics and the head pose of every frame.

    Args:
        points2d: [F, 478, 2] MediaPipe landmarks in output pixels (x right, y down).
        points3d: [F, 478, 3] MediaPipe's per-frame 3D landmarks in output pixels (x, y, z * width).
        principal_point: (cx, cy) in output pixels: the source frame centre mapped into the crop.
        source_width_px: width of the source frame in output pixels; sets the focal-length prior.
        cfg: tracking thresholds.
        flow: [F, P, 2] optional KLT displacement of each rigid point (``topology.RIGID`` order) from
            frame i-1 to frame i, in output pixels (row 0 unused); fused with the landmark positions
            before the bundle adjustment (``flow.fuse_tracks``).
        flow_valid: [F, P] bool, which flow entries to trust (required with ``flow``).
    """
    p2 = np.asarray(points2d, dtype=np.float64)
    p3 = np.asarray(points3d, dtype=np.float64)
    if p2.ndim != 3 or p2.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"points2d must be [F, {NUM_LANDMARKS}, 2], got {p2.shape}")
    if p3.ndim != 3 or p3.shape[1:] != (NUM_LANDMARKS, 3):
        raise ValueError(f"points3d must be [F, {NUM_LANDMARKS}, 3], got {p3.shape}")
    if p2.shape[0] != p3.shape[0]:
        raise ValueError(f"points2d has {p2.shape[0]} frames but points3d has {p3.shape[0]}")
    if p2.shape[0] < MIN_FRAMES:
        raise ValueError(f"tracking needs at least {MIN_FRAMES} frames, got {p2.shape[0]}")
    if not (np.isfinite(p2).all() and np.isfinite(p3).all()):
        raise ValueError("points2d and points3d must be finite (fill frames without a face first)")
    pp = np.asarray(principal_point, dtype=np.float64)
    if pp.shape != (2,) or not np.isfinite(pp).all():
        raise ValueError(f"principal_point must be two finite numbers, got {principal_point!r}")
    if not (math.isfinite(source_width_px) and source_width_px > 0):
        raise ValueError(f"source_width_px must be positive, got {source_width_px!r}")

    landmarks = np.ascontiguousarray(p2[:, _RIGID])  # [F, P, 2] (OpenCV needs contiguous rows)
    cuts = detect_cuts(landmarks, cfg.cut_sigma, cfg.cut_min_px)
    obs = landmarks
    if flow is not None:
        if flow_valid is None or flow.shape != landmarks.shape or flow_valid.shape != landmarks.shape[:2]:
            raise ValueError(f"flow must be [F, {len(RIGID)}, 2] with flow_valid [F, {len(RIGID)}], got "
                             f"{np.shape(flow)} and {np.shape(flow_valid)}")
        obs = np.ascontiguousarray(fuse_tracks(landmarks, np.asarray(flow, np.float64), flow_valid, cuts,
                                               cfg.flow_weight))
    template0 = _canonicalise(_procrustes_mean(p3[:, _RIGID]), cfg.eye_width_m)  # [P, 3]
    f0 = 0.5 * source_width_px / math.tan(math.radians(cfg.focal_prior_fov_deg) / 2)
    R0, t0 = _init_poses(template0, obs, f0, pp)
    focal, template, R_raw, t_raw, iterations = _bundle_adjust(obs, template0, R0, t0, f0, pp, cfg)

    # The template prior fixes the gauge only approximately: restore the conventions exactly,
    # keeping the axes of the initial template so that the focal length cannot tilt them.
    centre = template.mean(0)
    Q = similarity_align(template[None], template0)[1][0]
    scale = cfg.eye_width_m / np.linalg.norm(template[_OUTER[1]] - template[_OUTER[0]])
    template = scale * (template - centre) @ Q.T
    t_raw = scale * (R_raw @ centre + t_raw)
    R_raw = R_raw @ Q.T

    R, t = smooth_poses(R_raw, t_raw, cuts, cfg.smooth_rotation, cfg.smooth_translation)

    s, Rs, Ts = similarity_align(p3[:, _RIGID], template)
    landmarks3d = s[:, None, None] * p3 @ Rs.transpose(0, 2, 1) + Ts[:, None]  # [F, 478, 3]
    full = np.median(landmarks3d, axis=0)  # [478, 3]
    full[_RIGID] = template

    K = np.array([[focal, 0.0, pp[0]], [0.0, focal, pp[1]], [0.0, 0.0, 1.0]])
    return TrackResult(
        K=K, R=R, t=t, template=full, landmarks3d=landmarks3d,
        rmse_px=reprojection_rmse(template, R, t, K, landmarks),
        rmse_raw_px=reprojection_rmse(template, R_raw, t_raw, K, landmarks),
        cuts=cuts, iterations=iterations,
    )


# --- rotations and alignment -------------------------------------------------------------------

def _hat(w: np.ndarray) -> np.ndarray:
    """Cross-product matrices [..., 3, 3] of vectors w [..., 3]."""
    z = np.zeros(w.shape[:-1])
    return np.stack([np.stack([z, -w[..., 2], w[..., 1]], -1),
                     np.stack([w[..., 2], z, -w[..., 0]], -1),
                     np.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def rotation_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] of rotation vectors w [..., 3] (batched Rodrigues)."""
    theta2 = (w * w).sum(-1)[..., None, None]
    theta = np.sqrt(theta2)
    small = theta2 < 1e-12
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta2 / 24, (1.0 - np.cos(safe)) / (safe * safe))
    W = _hat(w)
    return np.eye(3) + a * W + b * (W @ W)


def rotation_log(R: np.ndarray) -> np.ndarray:
    """Rotation vectors [..., 3] of rotations R [..., 3, 3] below 180 degrees."""
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    sin = np.sin(theta)
    small = sin < 1e-8
    k = np.where(small, 0.5 + theta * theta / 12, theta / (2 * np.where(small, 1.0, sin)))
    v = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    return k[..., None] * v


def similarity_align(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity per frame (Umeyama) mapping src [F, N, 3] onto dst [N, 3] or [F, N, 3].

    Returns s [F], R [F, 3, 3], T [F, 3] with ``dst ~ s * R @ src + T``.
    """
    mu_s = src.mean(-2)  # [F, 3]
    mu_d = dst.mean(-2)  # [3] or [F, 3]
    a = src - mu_s[:, None]
    b = np.broadcast_to(dst - mu_d[..., None, :], a.shape)
    U, S, Vt = np.linalg.svd(np.einsum("fni,fnj->fij", b, a))
    d = np.sign(np.linalg.det(U @ Vt))  # [F] a reflection is never the answer
    D = np.ones((len(d), 3))
    D[:, 2] = d
    R = (U * D[:, None]) @ Vt
    s = (S * D).sum(-1) / (a * a).sum((1, 2))
    T = mu_d - s[:, None] * np.einsum("fij,fj->fi", R, mu_s)
    return s, R, T


def _procrustes_mean(p3: np.ndarray) -> np.ndarray:
    """Robust mean shape [P, 3] of per-frame point sets p3 [F, P, 3] after similarity alignment."""
    ref = p3[0]
    for _ in range(2):
        s, R, T = similarity_align(p3, ref)
        ref = np.median(s[:, None, None] * p3 @ R.transpose(0, 2, 1) + T[:, None], axis=0)
    return ref


def _canonicalise(X: np.ndarray, eye_width_m: float) -> np.ndarray:
    """Rigid template X [P, 3] (right-handed, any pose and scale) in canonical head space [P, 3]."""
    centre = X.mean(0)
    Y = X - centre
    x = (Y[_OUTER[1]] - Y[_OUTER[0]]) + (Y[_INNER[1]] - Y[_INNER[0]])
    x /= np.linalg.norm(x)
    # The plane normal is the least-spread direction across the eye-corner line.
    Yp = Y - np.outer(Y @ x, x)
    cov = Yp.T @ Yp
    z = np.linalg.eigh(cov + 2 * np.trace(cov) * np.outer(x, x))[1][:, 0]  # x itself excluded
    if Y[_POS[NOSE_TIP]] @ z > 0:
        z = -z
    Q = np.stack([x, np.cross(z, x), z])  # rows: the canonical axes
    return eye_width_m / np.linalg.norm(Y[_OUTER[1]] - Y[_OUTER[0]]) * Y @ Q.T


# --- pose initialisation and bundle adjustment ---------------------------------------------------

def _init_poses(template: np.ndarray, obs: np.ndarray, focal: float, pp: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of the template [P, 3] against obs [F, P, 2]: R [F, 3, 3], t [F, 3]."""
    K = np.array([[focal, 0.0, pp[0]], [0.0, focal, pp[1]], [0.0, 0.0, 1.0]])
    rvecs = np.empty((len(obs), 3))
    tvecs = np.empty((len(obs), 3))
    for i, uv in enumerate(obs):
        ok, rvec, tvec = cv2.solvePnP(template, uv, K, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok or tvec[2, 0] <= 0:
            raise TalkgsError(f"frame {i}: the face landmarks do not fit a rigid head (PnP failed)")
        rvecs[i], tvecs[i] = rvec[:, 0], tvec[:, 0]
    return rotation_exp(rvecs), tvecs


def _project(focal: float, pp: np.ndarray, X: np.ndarray, R: np.ndarray, t: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotated template Xr [F, P, 3], camera points Xc [F, P, 3] and pixels [F, P, 2]."""
    Xr = X[None] @ R.transpose(0, 2, 1)
    Xc = Xr + t[:, None]
    uv = focal * Xc[..., :2] / Xc[..., 2:] + pp
    return Xr, Xc, uv


def _bundle_adjust(obs: np.ndarray, X0: np.ndarray, R: np.ndarray, t: np.ndarray, f0: float,
                   pp: np.ndarray, cfg: TrackingConfig
                   ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, int]:
    """Levenberg-Marquardt over (log focal, template [P, 3], poses [F, 6]) with Huber IRLS weights.

    The per-frame 6x6 pose blocks are eliminated by a batched Schur complement, leaving a dense
    system in 1 + 3P unknowns. Returns focal, template [P, 3], R [F, 3, 3], t [F, 3], iterations.
    """
    F, P = obs.shape[:2]
    n = 1 + 3 * P
    k = cfg.huber_px
    wf = 1.0 / cfg.focal_prior_sigma**2
    wt = 1.0 / cfg.template_prior_m**2
    logf0 = math.log(f0)
    rows = 1 + 3 * np.arange(P)[:, None, None] + np.arange(3)[:, None]  # [P, 3, 1] template rows

    def robust_cost(logf, X, R, t):
        Xc = X[None] @ R.transpose(0, 2, 1) + t[:, None]
        if (Xc[..., 2] <= 1e-6).any():
            return math.inf
        r = np.linalg.norm(math.exp(logf) * Xc[..., :2] / Xc[..., 2:] + pp - obs, axis=-1)
        rho = np.where(r <= k, 0.5 * r * r, k * r - 0.5 * k * k).sum()
        return rho + 0.5 * wf * (logf - logf0) ** 2 + 0.5 * wt * ((X - X0) ** 2).sum()

    logf, X = logf0, X0.copy()
    cost = robust_cost(logf, X, R, t)
    lam, nu = 1e-4, 2.0
    iterations = 0
    linearised = False
    while iterations < cfg.iterations:
        if not linearised:
            focal = math.exp(logf)
            Xr, Xc, uv = _project(focal, pp, X, R, t)
            r = uv - obs  # [F, P, 2]
            norm = np.linalg.norm(r, axis=-1)
            w = np.where(norm <= k, 1.0, k / np.maximum(norm, 1e-12))  # [F, P] Huber IRLS
            iz = 1.0 / Xc[..., 2]
            fz = focal * iz
            Jp = np.zeros((F, P, 2, 3))  # d pixel / d camera point
            Jp[..., 0, 0] = fz
            Jp[..., 1, 1] = fz
            Jp[..., 0, 2] = -fz * Xc[..., 0] * iz
            Jp[..., 1, 2] = -fz * Xc[..., 1] * iz
            # Left update R <- exp([dw]x) R: d Xc / d dw = -[Xr]x, so each row is Xr x row.
            # t is updated through (a, b, m) = (f tx / tz, f ty / tz, log(f / tz)): the image of the
            # head origin and its magnification, which the focal length then leaves nearly unchanged.
            # This takes the focal-depth valley out of the damped system (far fewer iterations).
            dt = np.zeros((F, 3, 3))  # d t / d (a, b, m)
            dt[:, 0, 0] = dt[:, 1, 1] = t[:, 2] / focal
            dt[:, :, 2] = -t
            Jpose = np.concatenate([np.cross(Xr[:, :, None], Jp), Jp @ dt[:, None]], -1)  # [F, P, 2, 6]
            Js = Jp @ R[:, None]  # [F, P, 2, 3]
            Jf = uv - pp + Jp[..., 2] * t[:, None, 2:]  # [F, P, 2] d pixel / d log focal (tz ~ f)
            wr = w[..., None] * r
            wJpose = w[..., None, None] * Jpose
            wJs = w[..., None, None] * Js
            wJf = w[..., None] * Jf

            C = wJpose.reshape(F, 2 * P, 6).transpose(0, 2, 1) @ Jpose.reshape(F, 2 * P, 6)  # [F, 6, 6]
            g_pose = np.einsum("fpki,fpk->fi", Jpose, wr)  # [F, 6]
            B = np.empty((F, n, 6))
            B[:, 0] = np.einsum("fpk,fpki->fi", wJf, Jpose)
            B[:, 1:] = (wJs.transpose(0, 1, 3, 2) @ Jpose).reshape(F, 3 * P, 6)
            A = np.zeros((n, n))
            A[0, 0] = (wJf * Jf).sum() + wf
            A[0, 1:] = A[1:, 0] = np.einsum("fpk,fpki->pi", wJf, Js).ravel()
            blocks = np.einsum("fpki,fpkj->pij", wJs, Js) + wt * np.eye(3)  # [P, 3, 3]
            A[rows, rows.transpose(0, 2, 1)] = blocks
            g_a = np.concatenate([[(Jf * wr).sum() + wf * (logf - logf0)],
                                  np.einsum("fpki,fpk->pi", Js, wr).ravel() + wt * (X - X0).ravel()])
            dA = np.diag(A).copy()
            dC = np.diagonal(C, axis1=1, axis2=2).copy()
            linearised = True

        Ad = A.copy()
        Ad[np.arange(n), np.arange(n)] += lam * dA
        Cd = C.copy()
        Cd[:, np.arange(6), np.arange(6)] += lam * dC
        Cinv = np.linalg.inv(Cd)  # [F, 6, 6]; batched inverses of 6x6 blocks beat batched solves
        Y = B @ Cinv  # [F, n, 6]
        Cg = (Cinv @ g_pose[..., None])[..., 0]  # [F, 6]
        S = Ad - np.tensordot(Y, B, axes=([0, 2], [0, 2]))
        da = np.linalg.solve(S, -g_a + np.einsum("fai,fi->a", Y, g_pose))
        db = -Cg - np.einsum("fai,a->fi", Y, da)  # [F, 6]
        iterations += 1

        logf_new, X_new = logf + da[0], X + da[1:].reshape(P, 3)
        R_new = rotation_exp(db[:, :3]) @ R
        offset = focal * t[:, :2] / t[:, 2:] + db[:, 3:5]  # [F, 2] (a, b) after the step
        e = t[:, 2] / focal * np.exp(-db[:, 5])  # [F] tz / f = exp(-m) after the step
        t_new = np.concatenate([offset * e[:, None], math.exp(logf_new) * e[:, None]], -1)
        cost_new = robust_cost(logf_new, X_new, R_new, t_new)
        # Gain ratio against the decrease the damped quadratic model predicts (Nielsen's rule).
        predicted = 0.5 * (lam * (dA * da * da).sum() + lam * (dC * db * db).sum()
                           - g_a @ da - (g_pose * db).sum())
        gain = (cost - cost_new) / max(predicted, 1e-300)
        if cost_new < cost:
            converged = cost - cost_new < REL_TOL * cost
            logf, X, R, t, cost = logf_new, X_new, R_new, t_new, cost_new
            lam *= max(1 / 3, 1 - (2 * gain - 1) ** 3)
            nu = 2.0
            linearised = False
            if converged:
                break
        else:
            lam *= nu
            nu *= 2
    return math.exp(logf), X, R, t, iterations


# --- cuts, smoothing and diagnostics ------------------------------------------------------------

def detect_cuts(obs: np.ndarray, sigma: float, min_px: float) -> list[int]:
    """Frames i [list] whose landmarks obs [F, N, 2] jump from frame i-1 in a way motion cannot explain.

    Each frame-to-frame displacement is compared with the median of its four neighbouring
    displacements (per point and coordinate), so a fast but continuous head turn is not a cut. The
    mean unexplained displacement must exceed its median by ``sigma`` robust standard deviations
    (1.4826 MAD) and be at least ``min_px`` pixels.
    """
    step = np.diff(obs, axis=0)  # [F-1, N, 2]
    n = len(step)
    if n < 3:
        return []
    padded = np.pad(step, ((2, 2), (0, 0), (0, 0)), mode="reflect")
    expected = np.median(np.stack([padded[:n], padded[1:n + 1], padded[3:n + 3], padded[4:]]), axis=0)
    jump = np.linalg.norm(step - expected, axis=-1).mean(-1)  # [F-1]
    med = np.median(jump)
    spread = 1.4826 * np.median(np.abs(jump - med))
    return [int(i) + 1 for i in np.flatnonzero(jump > max(med + sigma * spread, min_px))]


def whittaker(y: np.ndarray, lam: float) -> np.ndarray:
    """Whittaker-Eilers smoothing of y [n, c] along axis 0: min |z - y|^2 + lam |D2 z|^2.

    Solves the pentadiagonal system (I + lam D2^T D2) z = y by a banded LDL^T factorisation. The
    smoother is symmetric in time, so it adds no lag.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 3 or lam <= 0:
        return y.copy()
    d0 = np.ones(n)
    d1 = np.zeros(n - 1)
    d2 = np.full(n - 2, lam)
    for j, cj in enumerate((1.0, -2.0, 1.0)):  # each row of D2 is (1, -2, 1) at columns i..i+2
        d0[j:n - 2 + j] += lam * cj * cj
    d1[:n - 2] += lam * -2.0
    d1[1:] += lam * -2.0
    diag = np.empty(n)
    l1 = np.zeros(n)  # L[i+1, i]
    l2 = np.zeros(n)  # L[i+2, i]
    a0, a1, a2 = d0.tolist(), d1.tolist() + [0.0], d2.tolist() + [0.0, 0.0]
    dm1 = dm2 = l1m1 = l2m1 = l2m2 = 0.0
    for i in range(n):
        di = a0[i] - l1m1 * l1m1 * dm1 - l2m2 * l2m2 * dm2
        l1i = (a1[i] - l2m1 * l1m1 * dm1) / di
        l2i = a2[i] / di
        diag[i], l1[i], l2[i] = di, l1i, l2i
        dm2, dm1, l1m1, l2m2, l2m1 = dm1, di, l1i, l2m1, l2i
    u = y.copy()
    for i in range(1, n):
        u[i] -= l1[i - 1] * u[i - 1]
        if i >= 2:
            u[i] -= l2[i - 2] * u[i - 2]
    z = u / diag.reshape((n,) + (1,) * (y.ndim - 1))
    for i in range(n - 2, -1, -1):
        z[i] -= l1[i] * z[i + 1]
        if i + 2 < n:
            z[i] -= l2[i] * z[i + 2]
    return z


def _segments(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def smooth_poses(R: np.ndarray, t: np.ndarray, cuts: list[int], lam_rotation: float,
                 lam_translation: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero-phase smoothing of poses R [F, 3, 3], t [F, 3] within each segment between cuts.

    Rotations are smoothed as rotation vectors relative to the segment's chordal mean rotation.
    """
    R_out, t_out = R.copy(), t.copy()
    for a, b in _segments(len(R), cuts):
        U, _, Vt = np.linalg.svd(R[a:b].sum(0))
        mean = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
        w = rotation_log(R[a:b] @ mean.T)  # [n, 3]
        R_out[a:b] = rotation_exp(whittaker(w, lam_rotation)) @ mean
        t_out[a:b] = whittaker(t[a:b], lam_translation)
    return R_out, t_out


def reprojection_rmse(X: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, obs: np.ndarray) -> float:
    """RMS Euclidean reprojection error in pixels of points X [P, 3] against obs [F, P, 2]."""
    _, _, uv = _project(float(K[0, 0]), K[:2, 2], X, R, t)
    return float(np.sqrt(((uv - obs) ** 2).sum(-1).mean()))
