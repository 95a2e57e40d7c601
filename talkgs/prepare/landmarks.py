"""Face landmarks for every frame, the subject among several faces, gaps, and the one crop.

MediaPipe Face Mesh (478 landmarks with irises) runs on the source frames. The subject is chosen
once, from the first frames, as the largest and most central face, then followed frame to frame.
Short gaps are interpolated; too many frames without the face stop prepare with the time ranges.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from talkgs.data import topology as topo
from talkgs.errors import TalkgsError
from talkgs.prepare.config import FaceConfig
from talkgs.utils import log


@contextlib.contextmanager
def quiet_native_logs():
    """Silence fd 2 while MediaPipe's C++ side runs: it logs TensorFlow-Lite banners and one-off
    warnings there that would break the progress bars. Python exceptions still propagate."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceMeshDetector:
    """Stateful (tracking-mode) MediaPipe Face Mesh; returns every face in source pixels."""

    def __init__(self, cfg: FaceConfig):
        with quiet_native_logs():
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False,
                max_num_faces=cfg.max_faces,
                refine_landmarks=True,
                min_detection_confidence=cfg.min_detection_confidence,
                min_tracking_confidence=cfg.min_tracking_confidence,
            )
            # The first call loads the TFLite graphs, which is where the banners are printed.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def __call__(self, frame: np.ndarray, scale: float = 1.0) -> list[np.ndarray]:
        """All faces in ``frame`` (uint8 [H, W, 3] RGB) as [478, 3] arrays (x, y, z*W) in pixels,
        multiplied by ``scale`` (to map detection-size pixels back to source pixels)."""
        h, w = frame.shape[:2]
        with quiet_native_logs():
            res = self._mesh.process(frame)
        faces = []
        for lm in res.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm.landmark], np.float32)
            faces.append(pts * scale)
        return faces

    def close(self) -> None:
        self._mesh.close()


def face_box(points: np.ndarray) -> np.ndarray:
    """[4] (x0, y0, x1, y1) of the face oval of landmarks ``points`` [478, >=2]."""
    oval = topo.polygon(points, topo.FACE_OVAL)
    return np.concatenate([oval.min(0), oval.max(0)])


def face_height(points: np.ndarray) -> float:
    """Forehead-to-chin distance of one face [478, >=2], in its pixels."""
    return float(np.linalg.norm(points[topo.FOREHEAD, :2] - points[topo.CHIN, :2]))


class SubjectFollower:
    """Choose the subject among the faces of the first frames, then follow it.

    Until ``selection_frames`` frames with a face have been seen, candidates are buffered; the
    subject is the face maximising size x centrality, summed over those frames. Afterwards each
    frame keeps the face nearest to the subject's last position, if it is within ``max_jump``
    face heights; otherwise the frame counts as having no face.
    """

    def __init__(self, cfg: FaceConfig, frame_size: tuple[int, int]):
        self.cfg = cfg
        self.w, self.h = frame_size
        self.max_faces_seen = 0
        self._last: np.ndarray | None = None  # [2] centre of the subject's face in the last frame
        self._buffer: list[list[np.ndarray]] = []

    def _score(self, pts: np.ndarray) -> float:
        x0, y0, x1, y1 = face_box(pts)
        area = (x1 - x0) * (y1 - y0) / (self.w * self.h)
        centre = np.array([(x0 + x1) / 2 / self.w - 0.5, (y0 + y1) / 2 / self.h - 0.5])
        return float(area * np.exp(-4.0 * np.sum(centre**2)))

    def _nearest(self, faces: list[np.ndarray]) -> np.ndarray | None:
        assert self._last is not None
        best, best_d = None, np.inf
        for pts in faces:
            d = np.linalg.norm(face_box(pts).reshape(2, 2).mean(0) - self._last) / max(face_height(pts), 1.0)
            if d < best_d:
                best, best_d = pts, d
        return best if best_d <= self.cfg.max_jump else None

    def push(self, faces: list[np.ndarray]) -> list[np.ndarray | None]:
        """Feed one frame's faces; returns the subject's landmarks for every frame now decided."""
        self.max_faces_seen = max(self.max_faces_seen, len(faces))
        if self._last is not None:
            chosen = self._nearest(faces) if faces else None
            if chosen is not None:
                self._last = face_box(chosen).reshape(2, 2).mean(0)
            return [chosen]
        self._buffer.append(faces)
        if sum(1 for f in self._buffer if f) >= self.cfg.selection_frames:
            return self.flush()
        return []

    def flush(self) -> list[np.ndarray | None]:
        """Decide the frames still buffered (at the end of a short video)."""
        if self._last is not None or not self._buffer:
            return []
        with_faces = [f for f in self._buffer if f]
        if not with_faces:
            out: list[np.ndarray | None] = [None] * len(self._buffer)
            self._buffer = []
            return out
        # Pick the subject in the first frame with faces, scoring each face by its best matches
        # over the buffered frames so a face that is big in one frame only does not win.
        first = with_faces[0]
        scores = np.zeros(len(first))
        for k, cand in enumerate(first):
            self._last = face_box(cand).reshape(2, 2).mean(0)
            for faces in with_faces:
                m = self._nearest(faces)
                if m is not None:
                    scores[k] += self._score(m)
                    self._last = face_box(m).reshape(2, 2).mean(0)
        subject = first[int(np.argmax(scores))]
        self._last = face_box(subject).reshape(2, 2).mean(0)
        if self.max_faces_seen > 1:
            x0, y0, x1, y1 = face_box(subject)
            log.info(
                f"several faces in the video; following the largest, most central one "
                f"(at x={0.5 * (x0 + x1):.0f}, y={0.5 * (y0 + y1):.0f} px in the first frames)"
            )
        buffered, self._buffer = self._buffer, []
        out = []
        for faces in buffered:
            chosen = self._nearest(faces) if faces else None
            if chosen is not None:
                self._last = face_box(chosen).reshape(2, 2).mean(0)
            out.append(chosen)
        return out


def _ranges(missing: np.ndarray, fps: float) -> str:
    """'1.20-2.40 s, 7.00-7.52 s' for the runs of True in ``missing``."""
    idx = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    spans = [f"{a / fps:.2f}-{b / fps:.2f} s" for a, b in zip(idx[::2], idx[1::2])]
    more = f" and {len(spans) - 6} more" if len(spans) > 6 else ""
    return ", ".join(spans[:6]) + more


def fill_gaps(landmarks: np.ndarray, found: np.ndarray, fps: float, cfg: FaceConfig) -> np.ndarray:
    """Interpolate frames without the face, or refuse when there are too many of them.

    Args:
        landmarks: [F, 478, 3], any values where ``found`` is False.
        found: [F] bool.
    Returns:
        [F, 478, 3] with gaps linearly interpolated in time (held at the ends).
    """
    n = len(found)
    if not found.any():
        raise TalkgsError("no face found in any frame of the video")
    missing = ~found
    frac = missing.mean()
    if frac > cfg.max_missing_fraction:
        raise TalkgsError(
            f"no face in {frac:.0%} of the frames (at most {cfg.max_missing_fraction:.0%} may lack one): "
            f"{_ranges(missing, fps)}; trim those parts of the video"
        )
    if not missing.any():
        return landmarks
    t = np.arange(n)
    flat = landmarks.reshape(n, -1).copy()
    good = np.flatnonzero(found)
    for c in range(flat.shape[1]):
        flat[missing, c] = np.interp(t[missing], good, flat[good, c])
    log.info(f"no face in {int(missing.sum())} frame(s) ({_ranges(missing, fps)}); interpolated")
    return flat.reshape(landmarks.shape)


@dataclass(frozen=True)
class Crop:
    """One square crop for the whole video, in source pixels, and the output size."""

    x: int
    y: int
    side: int
    out_size: int

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.out_size / self.side

    def to_output(self, pts: np.ndarray) -> np.ndarray:
        """Map [..., >=2] source-pixel coordinates (x, y, then optional z) into the output frame.

        Pixel centres are at integer + 0.5 in both frames, so coordinates (continuous, with 0 at
        the image's left edge) scale about the crop corner.
        """
        out = np.array(pts, np.float64, copy=True)
        out[..., 0] = (out[..., 0] - self.x) * self.scale
        out[..., 1] = (out[..., 1] - self.y) * self.scale
        if out.shape[-1] > 2:
            out[..., 2:] *= self.scale
        return out

    def ffmpeg_filter(self) -> str:
        return f"crop={self.side}:{self.side}:{self.x}:{self.y},scale={self.out_size}:{self.out_size}:flags=lanczos"


def choose_crop(landmarks: np.ndarray, frame_size: tuple[int, int], size: int, allow_upscale: bool,
                cfg: FaceConfig) -> Crop:
    """One square crop that holds the head, hair and shoulders in every frame.

    Args:
        landmarks: [F, 478, >=2] subject landmarks in source pixels (gaps filled).
        frame_size: (W, H) of the source frames.
    """
    w, h = frame_size
    oval = landmarks[:, list(topo.FACE_OVAL), :2]  # [F, 36, 2]
    lo = oval.min(1)  # [F, 2]
    hi = oval.max(1)
    fh = float(np.median(np.linalg.norm(landmarks[:, topo.FOREHEAD, :2] - landmarks[:, topo.CHIN, :2], axis=-1)))
    centre = np.median((lo + hi) / 2, axis=0)
    side = cfg.crop_scale * fh
    centre_y = centre[1] + cfg.crop_offset_y * side
    # The crop must also hold the union of the face boxes over the video, with a margin.
    margin = cfg.crop_motion_margin * fh
    ux0, uy0 = lo.min(0) - margin
    ux1, uy1 = hi.max(0) + margin
    need = 2 * max(centre[0] - ux0, ux1 - centre[0], centre_y - uy0, uy1 - centre_y)
    side = int(round(min(max(side, need), w, h)))
    x = int(round(np.clip(centre[0] - side / 2, 0, w - side)))
    y = int(round(np.clip(centre_y - side / 2, 0, h - side)))
    out = size
    if side < size and not allow_upscale:
        out = max(16, side - side % 2)
        log.info(f"the head crop is {side} px; writing {out} px frames instead of upscaling to {size} "
                 "(pass --allow-upscale to upscale)")
    return Crop(x=x, y=y, side=side, out_size=out)
