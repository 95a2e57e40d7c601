"""Optical flow of landmarks and its fusion with MediaPipe positions."""

from __future__ import annotations

import numpy as np
from conftest import DEMO

from talkgs.prepare.flow import fuse_tracks, klt
from talkgs.utils import media


def test_fuse_tracks_solves_the_normal_equations():
    rng = np.random.default_rng(0)
    n, weight, cuts = 30, 7.0, [12]
    obs = rng.normal(size=(n, 3, 2))
    flow = rng.normal(size=(n, 3, 2))
    valid = rng.random((n, 3)) > 0.2
    fused = fuse_tracks(obs, flow, valid, cuts, weight)
    for p in range(3):
        w = weight * valid[:, p].astype(float)
        w[0] = 0.0
        w[cuts] = 0.0
        # Dense form: (I + D^T W D) x = obs + D^T W d, with (D x)_i = x_i - x_{i-1} for i >= 1.
        D = np.zeros((n - 1, n))
        D[np.arange(n - 1), np.arange(1, n)] = 1.0
        D[np.arange(n - 1), np.arange(n - 1)] = -1.0
        A = np.eye(n) + D.T @ np.diag(w[1:]) @ D
        for c in range(2):
            x = np.linalg.solve(A, obs[:, p, c] + D.T @ (w[1:] * flow[1:, p, c]))
            np.testing.assert_allclose(fused[:, p, c], x, atol=1e-10)


def test_fusion_keeps_the_positions_and_the_motion():
    rng = np.random.default_rng(1)
    n, cut = 400, 200
    f = np.arange(n)
    truth = 20 * np.sin(2 * np.pi * f / 60) + np.where(f >= cut, 40.0, 0.0)
    truth = np.stack([truth, 0.5 * truth], -1)[:, None]  # [F, 1, 2]
    obs = truth + rng.normal(scale=0.5, size=truth.shape)  # MediaPipe-like wobble
    flow = np.zeros_like(truth)
    flow[1:] = np.diff(truth, axis=0) + rng.normal(scale=0.05, size=truth[1:].shape)
    flow[cut] = 0.0  # nonsense at the cut, which the fusion must not use
    valid = np.ones(truth.shape[:2], bool)
    fused = fuse_tracks(obs, flow, valid, [cut], 25.0)
    step_err = lambda x: np.abs(np.delete(np.diff(x - truth, axis=0), cut - 1, axis=0)).mean()  # noqa: E731
    assert step_err(fused) < 0.25 * step_err(obs)  # motion: KLT's precision
    assert np.abs(fused - truth).mean() < np.abs(obs - truth).mean()  # positions: no drift
    assert np.abs(fused[cut - 1:cut + 1] - truth[cut - 1:cut + 1]).max() < 1.5  # the jump stays sharp


def test_klt_measures_subpixel_motion():
    import cv2

    frame = next(iter(media.read_frames(DEMO, (256, 256), fps=25)))
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    shift = np.array([0.3, -0.7])
    moved = cv2.warpAffine(gray, np.array([[1, 0, shift[0]], [0, 1, shift[1]]]), (256, 256),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    ys, xs = np.mgrid[80:180:20, 80:180:20]
    pts = np.stack([xs.ravel(), ys.ravel()], -1).astype(float) + 0.5
    d, valid = klt(gray, moved, pts, 0.5)
    assert valid.mean() > 0.9
    assert np.abs(np.median(d[valid], axis=0) - shift).max() < 0.05
