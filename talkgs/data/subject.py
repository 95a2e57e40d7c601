"""Read a subject folder written by ``talkgs prepare``.

Frames and label maps are streamed from their videos on demand; nothing here holds the whole video.
Small per-frame arrays (poses, landmarks, signals, audio features) are loaded when first asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from talkgs.data import schema
from talkgs.errors import TalkgsError
from talkgs.utils import media


class Subject:
    """A prepared subject.

    Camera convention: OpenCV (x right, y down, z forward); world = the canonical head space in
    metres, so the head is still and the camera moves. ``w2c[i]`` maps head space to camera i.
    Pixel coordinates are continuous with 0 at the image's left/top edge (pixel centres at +0.5).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / schema.MANIFEST
        if not manifest.is_file():
            raise TalkgsError(f"{self.root} is not a prepared subject (no {schema.MANIFEST}); run talkgs prepare")
        try:
            self.meta = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            raise TalkgsError(f"{manifest} is damaged (not valid JSON); prepare the subject again") from None
        version = self.meta.get("format_version")
        # Every older format reads as it was written (format 1 has no occlusions); a newer one may mean more.
        if not isinstance(version, int) or not 1 <= version <= schema.FORMAT_VERSION:
            raise TalkgsError(
                f"{self.root} has subject format {version}, this talkgs reads 1 to {schema.FORMAT_VERSION}; "
                "prepare the subject again"
            )
        # The preview is for people; a subject works without it.
        needed = [f for f in self.meta["files"] if not f.startswith(schema.PREVIEW_DIR + "/")]
        missing = [f for f in needed if not (self.root / f).is_file()]
        if missing:
            raise TalkgsError(f"{self.root} is incomplete: missing {', '.join(missing)}")

    # -- scalars -----------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def size(self) -> int:
        """Side of the square frames in pixels."""
        return int(self.meta["size"])

    @property
    def test_range(self) -> tuple[int, int]:
        """Held-out frames [start, end)."""
        a, b = self.meta["split"]["test"]
        return int(a), int(b)

    @property
    def train_indices(self) -> np.ndarray:
        a, b = self.meta["split"]["train"]
        return np.arange(a, b)

    @property
    def test_indices(self) -> np.ndarray:
        return np.arange(*self.test_range)

    @property
    def audio_encoders(self) -> list[str]:
        return list(self.meta["audio"]["encoders"])

    # -- per-frame arrays ------------------------------------------------------------------------------
    @cached_property
    def _cameras(self) -> dict[str, np.ndarray]:
        with np.load(self.root / schema.CAMERAS) as z:
            return {k: z[k] for k in z.files}

    @property
    def K(self) -> np.ndarray:
        """[3, 3] intrinsics in output pixels."""
        return self._cameras["K"]

    @property
    def w2c(self) -> np.ndarray:
        """[F, 4, 4] head-space-to-camera transforms (OpenCV)."""
        return self._cameras["w2c"]

    @property
    def template(self) -> np.ndarray:
        """[478, 3] landmark template in canonical head space (metres)."""
        return self._cameras["template"]

    @property
    def cuts(self) -> np.ndarray:
        """[C] frames c with a camera cut between frame c - 1 and c."""
        return self._cameras["cuts"]

    @cached_property
    def landmarks(self) -> np.ndarray:
        """[F, 478, 3] MediaPipe landmarks in output pixels (x, y, and relative depth z)."""
        with np.load(self.root / schema.LANDMARKS) as z:
            return z["points"]

    @cached_property
    def canonical_landmarks(self) -> np.ndarray:
        """[F, 478, 3] the landmarks in canonical head space (head pose removed), metres."""
        with np.load(self.root / schema.LANDMARKS) as z:
            if "canonical" not in z.files:
                raise TalkgsError(f"{self.root} was prepared by an older talkgs without canonical landmarks; "
                                  f"run talkgs prepare on its video again")
            return z["canonical"]

    @cached_property
    def landmarks_found(self) -> np.ndarray:
        """[F] bool: MediaPipe found the face in that frame (elsewhere the landmarks are interpolated)."""
        with np.load(self.root / schema.LANDMARKS) as z:
            return z["found"]

    @cached_property
    def camera_moving(self) -> bool:
        """Whether ``talkgs prepare`` found the camera moving (prepare_report.json: camera_motion; False for a subject
        prepared before that was measured)."""
        report = self.root / schema.REPORT
        if not report.is_file():
            return False
        return bool((json.loads(report.read_text()).get("camera_motion") or {}).get("moving"))

    @cached_property
    def signals(self) -> dict[str, np.ndarray]:
        """blink_left/right, mouth_open, lip_spread, brow_raise [F]; lips_bbox [F, 4]; expression [F, 5]."""
        with np.load(self.root / schema.SIGNALS) as z:
            return {k: z[k] for k in z.files}

    def audio_features(self, encoder: str) -> np.ndarray:
        """[F, 2, D] features of ``encoder`` (memory-mapped)."""
        if encoder not in self.meta["audio"]["encoders"]:
            have = ", ".join(self.audio_encoders) or "none"
            raise TalkgsError(f"{self.root} has no {encoder!r} audio features (it has: {have})")
        return np.load(self.root / schema.audio_features(encoder), mmap_mode="r")

    def audio(self) -> tuple[np.ndarray, int]:
        """(float32 [S] mono samples, sample rate) of the offset-corrected audio."""
        if not self.meta["audio"].get("file"):
            raise TalkgsError(f"{self.root} has no audio (its video had no audio track)")
        return media.read_wav(self.root / schema.AUDIO)

    @cached_property
    def background(self) -> np.ndarray:
        """[S, S, 3] uint8 clean background plate."""
        import cv2

        img = cv2.imread(str(self.root / schema.BACKGROUND), cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    # -- streamed images -------------------------------------------------------------------------------
    def frames(self, start: int = 0) -> Iterator[np.ndarray]:
        """Yield uint8 [S, S, 3] RGB frames from ``start`` on."""
        return media.read_frames(self.root / schema.FRAMES, (self.size, self.size), start_frame=start)

    def labels(self, start: int = 0) -> Iterator[np.ndarray]:
        """Yield uint8 [S, S] label maps (``schema.Label``) from ``start`` on."""
        return media.read_labels(self.root / schema.LABELS_VIDEO, (self.size, self.size), start_frame=start)


def label_lookup(ids) -> np.ndarray:  # [256] bool
    """A lookup table of the label ids ``ids``: ``table[labels]`` is where ``labels`` holds one of them. Faster than
    np.isin, which sorts; torso_layer runs at every training step (``SubjectFrames.batch``)."""
    table = np.zeros(256, bool)
    table[[int(i) for i in ids]] = True
    return table


_TORSO_TABLE, _HEAD_TABLE = label_lookup(schema.TORSO_LABELS), label_lookup(schema.HEAD_LABELS)
_UNDER_TABLE = label_lookup((*schema.TORSO_LABELS, schema.Label.BACKGROUND))


def torso_layer(frame: np.ndarray, labels: np.ndarray, neck_extension: float = 0.0,
                background: bool = False) -> np.ndarray:
    """The torso/neck layer of one frame, for compositing under the head: uint8 [S, S, 4] RGBA.

    It is the frame's own torso and neck pixels (alpha 255), derived on demand from frames.mp4 and
    labels.mkv rather than stored a second time. ``neck_extension`` > 0 continues the neck up under the head
    for that fraction of S: each column's head pixels that far above its top neck pixel take that pixel's
    colour. A render of new speech lays its own jaw over a replayed frame's torso; where the new chin sits
    higher than the replayed one, it then uncovers neck skin instead of the background plate (a seam of
    background colour under the chin, seen on the demo). The head covers those pixels wherever it lies as
    in the replayed frame.

    ``background``: the frame's own background pixels belong to the layer too (a moving camera, whose background
    the one plate cannot show; ``FitConfig.replay_background``).
    """
    if frame.shape[:2] != labels.shape or frame.shape[-1] != 3:
        raise ValueError(f"frame [S, S, 3] and labels [S, S] expected, got {frame.shape} and {labels.shape}")
    alpha = (_UNDER_TABLE if background else _TORSO_TABLE)[labels][..., None]  # [S, S, 1]
    rgba = np.concatenate([frame * alpha, alpha * np.uint8(255)], axis=-1)
    reach = int(round(neck_extension * labels.shape[0]))
    neck = labels == schema.Label.NECK
    cols = np.flatnonzero(neck.any(0))  # [W'] columns with neck
    if reach > 0 and len(cols):
        top = np.argmax(neck[:, cols], axis=0)  # [W'] first neck row of each
        lo, hi = max(int(top.min()) - reach, 0), int(top.max())  # only this band of rows can change
        rows = np.arange(lo, hi)[:, None]
        under = (rows < top) & (rows >= top - reach) & _HEAD_TABLE[labels[lo:hi, cols]]  # [hi - lo, W']
        ys, xs = np.nonzero(under)
        rgba[lo + ys, cols[xs], :3] = frame[top[xs], cols[xs]]
        rgba[lo + ys, cols[xs], 3] = 255
    return rgba
