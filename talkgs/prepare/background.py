"""The clean background plate: each pixel's median over frames where it is background.

Pixels never seen as background (always behind the person) are inpainted with OpenCV. Frames are
sampled evenly through the video, so the memory used is bounded by ``samples``, not by the length.
"""

from __future__ import annotations

import cv2
import numpy as np

from talkgs.data.schema import Label
from talkgs.prepare.config import BackgroundConfig


def sample_indices(num_frames: int, samples: int) -> np.ndarray:
    """[min(samples, F)] frame indices spread evenly over the video."""
    k = min(samples, num_frames)
    return np.unique(np.linspace(0, num_frames - 1, k).round().astype(np.int64))


class BackgroundPlate:
    """Accumulates sampled frames, then ``finish()`` gives the plate."""

    #: Rows processed at once by the masked median, which bounds its working memory.
    ROWS_PER_CHUNK = 64

    def __init__(self, size: int, cfg: BackgroundConfig):
        self.size = size
        self.cfg = cfg
        self._frames: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        k = 2 * cfg.person_margin_px + 1
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))

    def add(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """Frame uint8 [S, S, 3] and its labels uint8 [S, S]."""
        not_bg = (labels != Label.BACKGROUND).astype(np.uint8)
        self._valid.append(cv2.dilate(not_bg, self._kernel) == 0)
        self._frames.append(frame.copy())

    def finish(self) -> tuple[np.ndarray, float]:
        """(plate uint8 [S, S, 3], fraction of plate pixels that had to be inpainted)."""
        s = self.size
        if not self._frames:
            raise ValueError("no frames were added to the background plate")
        frames = np.stack(self._frames)  # [N, S, S, 3]
        valid = np.stack(self._valid)  # [N, S, S]
        count = valid.sum(0)  # [S, S]
        plate = np.zeros((s, s, 3), np.uint8)
        # Masked median by sorting: invalid samples become 256 and sort after every valid one, so
        # the median of the k valid samples sits at ranks (k-1)//2 and k//2.
        lo = np.maximum(count - 1, 0) // 2
        hi = count // 2
        for r0 in range(0, s, self.ROWS_PER_CHUNK):
            r1 = min(s, r0 + self.ROWS_PER_CHUNK)
            chunk = frames[:, r0:r1].astype(np.uint16)
            chunk[~valid[:, r0:r1]] = 256
            chunk.sort(axis=0)
            a = np.take_along_axis(chunk, lo[None, r0:r1, :, None].repeat(3, -1), 0)[0]
            b = np.take_along_axis(chunk, np.minimum(hi, len(frames) - 1)[None, r0:r1, :, None].repeat(3, -1), 0)[0]
            med = (a.astype(np.float32) + b) / 2
            plate[r0:r1] = np.where(count[r0:r1, :, None] > 0, med, 0).round().astype(np.uint8)
        holes = (count == 0).astype(np.uint8)
        if holes.any():
            plate = cv2.inpaint(plate, holes, self.cfg.inpaint_radius_px, cv2.INPAINT_TELEA)
        return plate, float(holes.mean())
