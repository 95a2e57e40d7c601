"""Initial points of the static head, from a prepared subject.

Two sources, both in canonical head space:
- the face: points spread over the triangles of the tracked landmark template (MediaPipe's mesh),
  coloured by the training frames that see each point;
- hair, ears and the head top: head-mask pixels outside the face, cast from their camera onto a rough
  skull ellipsoid sized from the face, coloured by those pixels.
The optimisation moves and densifies them; the initial points only need to be roughly in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from talkgs.data import topology as topo
from talkgs.data.schema import Label


@dataclass
class InitConfig:
    face_points: int = 3000
    """Points sampled on the tracked landmark mesh (face surface), coloured from the frames."""
    hair_points: int = 3000
    """Points where head-mask pixels outside the face (hair, ears, head top) meet a head ellipsoid."""
    init_frames: int = 8
    """Training frames, spread evenly, whose pixels colour and place the initial points."""
    init_opacity: float = 0.1
    """Opacity of every initial Gaussian (the usual 3DGS start)."""
    scale_multiplier: float = 1.0
    """Initial scale = this x the mean distance to the 3 nearest initial points."""
    ellipsoid_margin: float = 1.15
    """The head ellipsoid is the face's extent times this, so hair that stands off the skull fits."""


def mesh_triangles() -> np.ndarray:
    """[T, 3] triangles of MediaPipe's face mesh (the 3-cliques of its tessellation edges).

    Shipped as package data (tests/test_foundation.py derives it from MediaPipe again), so that fitting
    needs no MediaPipe: a subject prepared on one machine fits on a GPU server that only has torch.
    """
    with resources.files("talkgs.data").joinpath("face_mesh_triangles.npy").open("rb") as f:
        return np.load(f).astype(np.int64)


def _project(points: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [P, 2] and camera depths [P] of head-space points [P, 3]."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-pixel colours [P, C] of continuous pixel coordinates uv [P, 2] (clamped to the image)."""
    h, w = image.shape[:2]
    x = np.clip(np.floor(uv[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.floor(uv[:, 1]).astype(int), 0, h - 1)
    return image[y, x]


def face_points(template: np.ndarray, n: int, frames: list[np.ndarray], w2cs: list[np.ndarray], K: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points [n, 3] on the template mesh and their colours [n, 3] in [0, 1].

    A point takes the median colour over the frames; talking-head footage is near-frontal, so the
    median outvotes the few frames where the point is hidden (a cheek behind the nose).
    """
    tris = mesh_triangles()
    a, b, c = (template[tris[:, k]] for k in range(3))  # [T, 3] each
    cross = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(cross, axis=-1)
    pick = rng.choice(len(tris), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)  # uniform over each triangle
    pts = (1 - s)[:, None] * a[pick] + (s * (1 - r2))[:, None] * b[pick] + (s * r2)[:, None] * c[pick]
    colours = np.full((len(frames), n, 3), np.nan)
    for k, (frame, w2c) in enumerate(zip(frames, w2cs)):
        uv, z = _project(pts, w2c, K)
        ok = z > 0
        colours[k, ok] = _sample(frame, uv[ok]) / 255.0
    rgb = np.nanmedian(colours, axis=0)
    return pts, np.nan_to_num(rgb, nan=0.5)


def head_ellipsoid(template: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(centre [3], radii [3]) of a rough skull around the face, in head space (y down, z into the head)."""
    oval = template[list(topo.FACE_OVAL)]
    width = float(oval[:, 0].max() - oval[:, 0].min())
    top, chin = float(template[topo.FOREHEAD, 1]), float(template[topo.CHIN, 1])
    face_h = chin - top
    radii = margin * np.array([0.5 * width, 0.75 * face_h, 0.6 * width])
    front = float(np.median(template[list(topo.RIGID), 2]))
    centre = np.array([oval[:, 0].mean(), 0.5 * (top + chin) - 0.15 * face_h, front + 0.8 * radii[2]])
    return centre, radii


def hair_points(template: np.ndarray, n: int, frames: list[np.ndarray], labels: list[np.ndarray],
                w2cs: list[np.ndarray], K: np.ndarray, margin: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` points [n', 3] where hair/ear pixels' rays enter the skull ellipsoid, and their colours."""
    centre, radii = head_ellipsoid(template, margin)
    pts, rgb = [], []
    Kinv = np.linalg.inv(K)
    per_frame = max(1, n // max(len(frames), 1))
    for frame, lab, w2c in zip(frames, labels, w2cs):
        ys, xs = np.nonzero(lab == Label.HAIR)
        if len(xs) == 0:
            continue
        take = rng.choice(len(xs), size=min(per_frame, len(xs)), replace=False)
        uv = np.stack([xs[take] + 0.5, ys[take] + 0.5, np.ones(len(take))], -1)
        R, t = w2c[:3, :3], w2c[:3, 3]
        origin = -R.T @ t
        dirs = (uv @ Kinv.T) @ R  # [P, 3] head-space ray directions
        # Ray-ellipsoid intersection in the ellipsoid's unit-sphere coordinates.
        o = (origin - centre) / radii
        d = dirs / radii
        qa = np.sum(d * d, -1)
        qb = 2 * d @ o
        qc = o @ o - 1
        disc = qb * qb - 4 * qa * qc
        hit = disc > 0
        s = (-qb[hit] - np.sqrt(disc[hit])) / (2 * qa[hit])
        pts.append(origin + s[:, None] * dirs[hit])
        rgb.append(frame[ys[take][hit], xs[take][hit]] / 255.0)
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(pts)[:n], np.concatenate(rgb)[:n]


def initial_points(template: np.ndarray, frames: list[np.ndarray], labels: list[np.ndarray], w2cs: list[np.ndarray],
                   K: np.ndarray, cfg: InitConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 3], rgb [N, 3]) for ``GaussianModel.from_points``.

    Args:
        template: [478, 3] landmark template in head space.
        frames, labels: a few training frames [R, R, 3] uint8 and label maps [R, R] at training size.
        w2cs: their [4, 4] head-to-camera transforms; K: [3, 3] intrinsics at training size.
    """
    rng = np.random.default_rng(seed)
    fp, fc = face_points(template, cfg.face_points, frames, w2cs, K, rng)
    hp, hc = hair_points(template, cfg.hair_points, frames, labels, w2cs, K, cfg.ellipsoid_margin, rng)
    return np.concatenate([fp, hp]).astype(np.float32), np.concatenate([fc, hc]).astype(np.float32)


def mouth_points(template: np.ndarray, n: int, open_m: float, depth_m: float, frames: list[np.ndarray],
                 w2cs: list[np.ndarray], K: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points [n, 3] filling the mouth cavity behind the lips, and their colours [n, 3].

    The cavity is an elliptic slab: as wide as the inner lip contour, from a little above the lips'
    meeting line to ``open_m`` below it (the widest opening of the video), and from just behind the
    lips to ``depth_m`` deep. Colours are the median, over the given (open-mouth) frames, of the pixels
    the points project to.
    """
    inner = template[list(topo.LIPS_INNER)]
    cx, half_w = 0.5 * (inner[:, 0].min() + inner[:, 0].max()), 0.5 * (inner[:, 0].max() - inner[:, 0].min())
    top, bottom = inner[:, 1].mean() - 0.25 * open_m, inner[:, 1].mean() + open_m
    front = float(inner[:, 2].mean())
    u = rng.uniform(-1, 1, (4 * n, 2))
    u = u[(u**2).sum(-1) <= 1][:n]  # inside the unit disc
    pts = np.stack([cx + half_w * u[:, 0], 0.5 * (top + bottom) + 0.5 * (bottom - top) * u[:, 1],
                    front + 0.003 + rng.uniform(0, depth_m - 0.003, len(u))], -1)
    colours = np.full((len(frames), len(pts), 3), np.nan)
    for k, (frame, w2c) in enumerate(zip(frames, w2cs)):
        uv, z = _project(pts, w2c, K)
        ok = z > 0
        colours[k, ok] = _sample(frame, uv[ok]) / 255.0
    return pts.astype(np.float32), np.nan_to_num(np.nanmedian(colours, axis=0), nan=0.2).astype(np.float32)
