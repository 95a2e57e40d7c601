"""Per-frame label maps: person from MediaPipe Selfie Segmentation, face regions from landmarks.

Label ids are ``talkgs.data.schema.Label``. The split between head and body follows the jaw line
in the face's own frame (so a tilted head is handled): person pixels above the lower jaw line,
extended level beyond the jaw angles, are head (hair, ears, head top); below it lie the neck (a
band under the chin) and the torso.
"""

from __future__ import annotations

import cv2
import numpy as np

from talkgs.data import topology as topo
from talkgs.data.schema import Label
from talkgs.prepare.config import MaskConfig
from talkgs.prepare.landmarks import quiet_native_logs


class PersonSegmenter:
    """MediaPipe Selfie Segmentation (general model): person probability per pixel."""

    def __init__(self):
        with quiet_native_logs():
            import mediapipe as mp

            self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
            self._seg.process(np.zeros((64, 64, 3), np.uint8))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Person probability float32 [H, W] of an RGB uint8 [H, W, 3] frame."""
        with quiet_native_logs():
            return self._seg.process(frame).segmentation_mask

    def close(self) -> None:
        self._seg.close()


def _fill(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """Boolean mask [H, W] of a polygon [P, 2] in continuous pixel coordinates."""
    mask = np.zeros(shape, np.uint8)
    # cv2 puts pixel centres at integers: shift by -0.5 and use 4 fractional bits for sub-pixel edges.
    pts = np.round((poly - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


class LabelMapper:
    """Turns (person probability, landmarks) of a frame into a uint8 label map."""

    def __init__(self, size: int, cfg: MaskConfig):
        self.cfg = cfg
        self.size = size

    def __call__(self, person_prob: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Label map uint8 [S, S].

        Args:
            person_prob: float [S, S] person probability.
            points: [478, >=2] landmarks in output pixels.
        """
        s = self.size
        if person_prob.shape != (s, s) or points.shape[0] != topo.NUM_LANDMARKS:
            raise ValueError(f"expected person_prob [{s}, {s}] and points [478, 2+], got "
                             f"{person_prob.shape} and {points.shape}")
        cfg = self.cfg
        p = np.asarray(points, np.float64)[:, :2]
        person = person_prob > cfg.person_threshold

        # Face frame: "down" runs from forehead to chin, "across" to the image right when upright.
        chin = p[topo.CHIN]
        down = chin - p[topo.FOREHEAD]
        face_h = float(np.linalg.norm(down)) + 1e-6
        down /= face_h
        across = np.array([-down[1], down[0]])
        if across[0] < 0:
            across = -across
        to_image = lambda a, b: chin + np.multiply.outer(a, down) + np.multiply.outer(b, across)  # noqa: E731

        # Everything below the lower jaw line, held level beyond the jaw angles, as one polygon that
        # reaches far outside the image.
        jaw = p[list(topo.LOWER_JAW)] - chin
        ja, jb = jaw @ down, jaw @ across
        order = np.argsort(jb)
        ja, jb = ja[order], jb[order]
        far = 4.0 * s
        below = _fill((s, s), np.concatenate([
            to_image(np.array([ja[0]]), np.array([-far])), to_image(ja, jb),
            to_image(np.array([ja[-1], far, far]), np.array([far, far, -far])),
        ]))
        oval_b = (p[list(topo.FACE_OVAL)] - chin) @ across
        half = cfg.neck_half_width * float(oval_b.max() - oval_b.min())
        top, bottom = float(ja.min()), cfg.neck_length * face_h
        band = to_image(np.array([top, top, bottom, bottom]), np.array([-half, half, half, -half]))
        neck = below & _fill((s, s), band)

        labels = np.zeros((s, s), np.uint8)
        labels[person & below] = Label.TORSO
        labels[person & neck] = Label.NECK
        labels[person & ~below] = Label.HAIR
        labels[_fill((s, s), topo.polygon(p, topo.FACE_OVAL))] = Label.FACE
        labels[_fill((s, s), topo.polygon(p, topo.RIGHT_EYE)) | _fill((s, s), topo.polygon(p, topo.LEFT_EYE))] = (
            Label.EYES
        )
        labels[_fill((s, s), topo.polygon(p, topo.LIPS_OUTER))] = Label.LIPS
        labels[_fill((s, s), topo.polygon(p, topo.LIPS_INNER))] = Label.MOUTH
        return labels
