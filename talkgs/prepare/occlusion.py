"""What covers the face: a hand, a microphone, hair, anything the face itself does not look like.

Phone footage has hands passing in front of the face. MediaPipe still places its landmarks under the hand, so
the label maps call those pixels face, and the fit learns the hand's colour into the face's Gaussians (and the
motion fields learn to reveal it). Two detectors, both run in prepare's first pass:

- **Appearance** (any occluder): every frame's face is resampled into one texture (the face mesh's triangles laid
  out flat, ``talkgs/data/face_layout.npy``), so a texel is the same point of the skin in every frame. The median
  over frames is the face as it usually looks; a texel far from it, beyond what it varies anyway (eyelids, lips
  and shadows vary, so each texel gets its own threshold), is covered in that frame. Triangles mostly covered
  are painted ``Label.OCCLUDED``.
- **Hands** (MediaPipe Hands, shipped in the mediapipe package): a hand whose landmarks are found is painted
  over the head as its landmarks' hull, widened by a finger's width.

A frame whose face was not found at all counts as covered everywhere, and so does a frame whose face is mostly
covered (``OcclusionConfig.max_face_fraction``): under a hand that large MediaPipe's landmarks follow the hand, so
prepare interpolates that frame's landmarks, and so its head pose, from the frames around it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from talkgs.data import topology as topo
from talkgs.data.schema import Label
from talkgs.prepare.config import OcclusionConfig
from talkgs.prepare.landmarks import quiet_native_logs

#: Labels an occluder is painted over: the head the Gaussians model (the torso layer is replayed as filmed).
COVERABLE = (Label.HAIR, Label.FACE, Label.LIPS, Label.EYES, Label.MOUTH)


def runs(hit: np.ndarray) -> list[tuple[int, int]]:
    """The [start, end) stretches of consecutive True in ``hit`` [F]."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(hit).astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def _data(name: str) -> np.ndarray:
    with resources.files("talkgs.data").joinpath(name).open("rb") as f:
        return np.load(f)


class FaceTexture:
    """Resamples a frame's face into a ``side`` x ``side`` texture laid out by the face mesh's triangles."""

    @staticmethod
    def triangle_ids() -> np.ndarray:
        """[T, 3] the face mesh's triangles (landmark ids)."""
        return _data("face_mesh_triangles.npy").astype(np.int64)

    def __init__(self, side: int):
        self.side = side
        self.triangles = self.triangle_ids()  # [T, 3]
        layout = _data("face_layout.npy").astype(np.float64) * side  # [478, 2] texel units
        ids = np.zeros((side, side), np.int32)  # triangle id + 1 per texel, 0: outside the mesh
        for k, tri in enumerate(self.triangles):
            cv2.fillPoly(ids, [np.round((layout[tri] - 0.5) * 16).astype(np.int32)], k + 1, cv2.LINE_8, shift=4)
        self.texels = np.flatnonzero(ids)  # [N] flat texel indices inside the mesh
        self.triangle_of = ids.ravel()[self.texels] - 1  # [N]
        ys, xs = np.divmod(self.texels, side)
        centre = np.stack([xs + 0.5, ys + 0.5], -1)  # [N, 2]
        a, b, c = (layout[self.triangles[self.triangle_of, k]] for k in range(3))
        m = np.stack([b - a, c - a], -1)  # [N, 2, 2]
        uv = np.linalg.solve(m, (centre - a)[..., None])[..., 0]
        self.bary = np.concatenate([1 - uv.sum(-1, keepdims=True), uv], -1)  # [N, 3]
        self.triangle_texels = np.bincount(self.triangle_of, minlength=len(self.triangles))  # [T]

    def sample(self, frame: np.ndarray, points: np.ndarray) -> np.ndarray:
        """uint8 [side, side, 3] texture of ``frame`` [H, W, 3] whose landmarks are ``points`` [478, >=2] (pixels,
        continuous coordinates); black outside the mesh."""
        corners = np.asarray(points, np.float64)[self.triangles[self.triangle_of], :2]  # [N, 3, 2]
        pos = (self.bary[..., None] * corners).sum(1) - 0.5  # cv2 puts pixel centres at integers
        maps = np.full((2, self.side * self.side), -1.0, np.float32)
        maps[:, self.texels] = pos.T
        return cv2.remap(frame, maps[0].reshape(self.side, self.side), maps[1].reshape(self.side, self.side),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class HandFinder:
    """MediaPipe Hands (video mode): the landmarks [21, 2] of each hand in a frame, in its pixels."""

    def __init__(self, cfg: OcclusionConfig):
        with quiet_native_logs():
            import mediapipe as mp

            self._hands = mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=0,
                                                   min_detection_confidence=cfg.hand_confidence,
                                                   min_tracking_confidence=cfg.hand_confidence)

    def __call__(self, frame: np.ndarray) -> list[np.ndarray]:
        with quiet_native_logs():
            found = self._hands.process(frame).multi_hand_landmarks or []
        h, w = frame.shape[:2]
        return [np.array([[p.x * w, p.y * h] for p in hand.landmark], np.float32) for hand in found]

    def close(self) -> None:
        self._hands.close()


@dataclass
class Occlusions:
    """What covers the face in every frame (``OcclusionFinder.finish``)."""

    triangles: np.ndarray  # [F, T] bool: face-mesh triangles covered
    hands: list[list[np.ndarray]]  # per frame, each hand's landmarks [21, 2] in source pixels
    face_fraction: np.ndarray  # [F] share of the face texture found covered (1: the face was not found)

    def any(self, i: int) -> bool:
        return bool(self.triangles[i].any() or self.hands[i])


class OcclusionFinder:
    """Collects every frame's face texture (on disk, not in memory) and hands during the landmark pass; ``finish``
    decides what is covered."""

    def __init__(self, cfg: OcclusionConfig):
        self.cfg = cfg
        self.texture = FaceTexture(cfg.texture_px)
        self._dir = tempfile.TemporaryDirectory(prefix="talkgs-occlusion-")
        self._file = open(Path(self._dir.name) / "textures.u8", "wb")
        self._hands = HandFinder(cfg) if cfg.hands else None
        self.hands: list[list[np.ndarray]] = []
        self.found: list[bool] = []
        self.hand_share: list[float] = []  # per decided frame, the share of the face oval under a found hand

    def add_texture(self, frame: np.ndarray, points: np.ndarray | None, scale: float = 1.0) -> None:
        """The next decided frame: ``frame`` (at ``1 / scale`` of the source) and its landmarks in source pixels
        (None: no face)."""
        blank = np.zeros((self.texture.side, self.texture.side, 3), np.uint8)
        tex = blank if points is None else self.texture.sample(frame, np.asarray(points)[:, :2] / scale)
        self._file.write(tex.tobytes())
        j = len(self.found)
        self.found.append(points is not None)
        hands = self.hands[j] if j < len(self.hands) else []
        self.hand_share.append(_hand_share(frame.shape[:2], np.asarray(points)[:, :2] / scale,
                                           [h / scale for h in hands]) if points is not None and hands else 0.0)

    def add_hands(self, frame: np.ndarray, scale: float = 1.0) -> None:
        """The next frame read (frames arrive in order): its hands, in source pixels."""
        self.hands.append([h * scale for h in self._hands(frame)] if self._hands is not None else [])

    def finish(self) -> Occlusions:
        self._file.close()
        if self._hands is not None:
            self._hands.close()
        cfg, tex = self.cfg, self.texture
        found = np.array(self.found, bool)
        n, side = len(found), tex.side
        try:
            raw = np.memmap(Path(self._dir.name) / "textures.u8", np.uint8, "r", shape=(max(n, 1), side * side, 3))
            covered, fraction = _covered_triangles(raw[:n], found, tex, cfg, np.array(self.hand_share))
            del raw
        finally:
            self._dir.cleanup()
        hands = (self.hands + [[]] * n)[:n]
        return Occlusions(covered, hands, fraction)


def _hand_share(shape: tuple[int, int], points: np.ndarray, hands: list[np.ndarray]) -> float:
    """The share of the face oval (``points`` [478, 2]) that the hulls of ``hands`` cover, in a frame ``shape``."""
    oval = np.zeros(shape, np.uint8)
    cv2.fillPoly(oval, [np.round((points[list(topo.FACE_OVAL)] - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    hand = np.zeros(shape, np.uint8)
    for h in hands:
        cv2.fillConvexPoly(hand, cv2.convexHull(np.round((h - 0.5) * 16).astype(np.int32)), 1, cv2.LINE_8, 4)
    return float((oval & hand).sum() / max(int(oval.sum()), 1))


def _covered_triangles(raw: np.ndarray, found: np.ndarray, tex: FaceTexture, cfg: OcclusionConfig,
                       hand_share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([F, T] covered triangles, [F] covered share of the face) from the frames' textures [F, side^2, 3] and the
    share of each face under a found hand [F]. A mostly covered face (``OcclusionConfig.max_face_fraction``) is
    covered everywhere: its landmarks are MediaPipe's guess."""
    n = len(found)
    texels = tex.texels
    covered = np.zeros((n, len(tex.triangles)), bool)
    fraction = np.where(found, 0.0, 1.0)
    covered[~found] = True
    seen = np.flatnonzero(found)
    if len(seen) < 3:
        return covered, fraction
    fraction[seen] = hand_share[seen]

    def colours(i: int) -> np.ndarray:  # [N, 3] float
        return raw[i][texels].astype(np.float32)

    # The face as it usually looks: the per-texel median of evenly spaced frames, each scaled to the clip's
    # typical exposure and white balance first.
    level = np.median(np.stack([np.median(colours(i), 0) for i in seen]), 0)  # [3]
    picks = seen[np.linspace(0, len(seen) - 1, min(cfg.reference_frames, len(seen))).round().astype(int)]
    sample = np.stack([(x := colours(i)) * (level / np.maximum(np.median(x, 0), 1.0)) for i in picks])  # [P, N, 3]
    reference = np.median(sample, 0)  # [N, 3]

    def normalised(i: int) -> np.ndarray:
        # A frame's exposure against the reference: the median ratio over the texels, which an occluder covering
        # less than half the face does not move (the frame's own median would: a light hand darkens the rest).
        x = colours(i)
        return x * np.median(reference / np.maximum(x, 1.0), 0)

    spread = np.median(np.abs(np.stack([normalised(i) for i in picks]) - reference).mean(-1) / 255.0, 0)  # [N]
    side = tex.side
    full = np.full(side * side, np.inf, np.float32)  # texels outside the mesh are never covered
    full[texels] = np.maximum(cfg.min_difference, cfg.spread_factor * 1.4826 * spread)
    full = full.reshape(side, side)
    half = np.maximum(0.75 * cfg.min_difference, 0.5 * full)
    kernel = np.ones((3, 3), np.uint8)
    for i in seen:
        diff = np.zeros(side * side, np.float32)
        diff[texels] = np.abs(normalised(i) - reference).mean(-1) / 255.0
        diff = diff.reshape(side, side)
        sure = cv2.morphologyEx((diff > full).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        if sure.sum() < cfg.min_face_fraction * len(texels):
            continue
        # Hysteresis: an occluder's edge and the parts of it that look more like skin join the texels that are
        # surely covered when they are at least half as far from the usual face.
        _, parts = cv2.connectedComponents((diff > half).astype(np.uint8), connectivity=8)
        seeds = np.unique(parts[sure > 0])
        over = np.isin(parts, seeds[seeds > 0]).ravel()[texels]
        fraction[i] = max(fraction[i], float(over.mean()))
        per_triangle = np.bincount(tex.triangle_of, over.astype(np.float64), len(tex.triangles))
        covered[i] = (per_triangle >= cfg.triangle_fraction * tex.triangle_texels) & (tex.triangle_texels > 0)
    covered[fraction > cfg.max_face_fraction] = True
    return covered, fraction


def paint(labels: np.ndarray, points: np.ndarray, triangles: np.ndarray, hands: list[np.ndarray],
          triangle_ids: np.ndarray, cfg: OcclusionConfig) -> np.ndarray:
    """``labels`` [S, S] with the covered head pixels set to ``Label.OCCLUDED``.

    Args:
        points: [478, >=2] the frame's landmarks in output pixels; triangles: [T] bool covered triangles;
        hands: each hand's landmarks [21, 2] in output pixels; triangle_ids: [T, 3] the face mesh's triangles.
    """
    mask = np.zeros(labels.shape, np.uint8)
    p = np.asarray(points, np.float64)[:, :2]
    polys = [np.round((p[tri] - 0.5) * 16).astype(np.int32) for tri in triangle_ids[triangles]]
    if polys:
        cv2.fillPoly(mask, polys, 1, cv2.LINE_8, shift=4)
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))  # the seams between painted triangles
    for hand in hands:
        hull = cv2.convexHull(np.round((hand - 0.5) * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, shift=4)
        extent = float(np.ptp(hand, 0).max())
        r = max(1, int(round(cfg.hand_margin * extent)))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    out = labels.copy()
    out[(mask > 0) & np.isin(labels, COVERABLE)] = Label.OCCLUDED
    return out
