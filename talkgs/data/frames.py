"""A subject's frames at one resolution, on one device: what fitting and evaluation read per frame.

Frames and labels stream from the memory-mapped cache (``talkgs.data.cache``); the small per-frame
arrays (poses, expression signals, audio features) are tensors on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from talkgs.data import schema
from talkgs.data.cache import FrameCache, open_cache
from talkgs.data.subject import Subject, label_lookup, torso_layer
from talkgs.errors import TalkgsError
from talkgs.utils.camera import scale_intrinsics


def pick_device(name: str) -> torch.device:
    """The torch device of a config's ``device`` value: "auto" (CUDA when available), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TalkgsError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


@dataclass
class Batch:
    """One frame of the subject, at the frames' resolution R."""

    index: int
    image: torch.Tensor  # [R, R, 3] ground truth in [0, 1]
    labels: torch.Tensor  # [R, R] uint8 label ids
    under: torch.Tensor  # [R, R, 3] what lies under the head: the frame's torso layer over the plate
    viewmat: torch.Tensor  # [4, 4] head-to-camera
    K: torch.Tensor  # [3, 3] at resolution R


def label_table(ids, device: torch.device | str | None = None) -> torch.Tensor:  # [256] bool
    """A lookup table of the label ids ``ids`` for ``label_mask`` (``subject.label_lookup`` on ``device``)."""
    return torch.from_numpy(label_lookup(ids)).to(device)


def label_mask(labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:  # [H, W] uint8 -> [H, W] bool
    """Where ``labels`` holds one of the ids of ``table`` (``label_table``). A table lookup, not ``torch.isin``,
    which sorts: 0.2 ms against 1.6 ms for a 256-px frame, at every training step."""
    return table[labels.long()]


def expression_track(subject: Subject, channels: tuple[str, ...]) -> np.ndarray:
    """[F, E] the subject's per-frame values of the expression ``channels`` (``schema.EXPRESSION_CHANNELS``)."""
    unknown = [c for c in channels if c not in schema.EXPRESSION_CHANNELS]
    if unknown:
        raise TalkgsError(f"unknown expression channel(s) {', '.join(unknown)} (known: "
                          f"{', '.join(schema.EXPRESSION_CHANNELS)})")
    signals = subject.signals
    if not channels:
        return np.zeros((subject.num_frames, 0))
    return np.stack([signals[c] for c in channels], axis=-1)


class SubjectFrames:
    """A subject at ``resolution`` px on ``device``: frames streamed from a memory-mapped cache.

    Args:
        subject: the prepared subject.
        resolution: side of the frames in pixels (downscaled from the subject's own size).
        device: where the tensors live.
        encoders: audio encoders whose features are concatenated into ``features``.
        expression: the expression channels of ``expression``.
        neck_extension: how far each batch's torso layer continues the neck under the head
            (``data.subject.torso_layer``; ``FitConfig.neck_extension``).
        layer_background: the frame's own background is part of that layer (``FitConfig.replay_background``).
    """

    def __init__(self, subject: Subject, resolution: int, device: torch.device, encoders: tuple[str, ...] = (),
                 expression: tuple[str, ...] = (), neck_extension: float = 0.0, layer_background: bool = False):
        self.subject = subject
        self.device = device
        self.resolution = resolution
        self.cache: FrameCache = open_cache(subject, resolution)
        K = scale_intrinsics(subject.K, resolution / subject.size)
        self.K = torch.tensor(K, dtype=torch.float32, device=device)  # [3, 3]
        self.w2c = torch.tensor(subject.w2c, dtype=torch.float32, device=device)  # [F, 4, 4]
        plate = cv2.resize(subject.background, (resolution, resolution), interpolation=cv2.INTER_AREA)
        self.background = torch.tensor(plate, dtype=torch.float32, device=device) / 255.0  # [R, R, 3]
        self.neck_extension = neck_extension
        self.layer_background = layer_background
        self.train_indices = subject.train_indices
        self.test_indices = subject.test_indices
        expr = expression_track(subject, tuple(expression))
        self.expression = torch.tensor(expr, dtype=torch.float32, device=device)  # [F, E]
        #: Each encoder's columns of the last dimension of ``features``.
        self.feature_columns: dict[str, slice] = {}
        self.features = self._audio_features(tuple(encoders))  # [F, 2, D] or None

    def _audio_features(self, encoders: tuple[str, ...]) -> torch.Tensor | None:
        """The subject's features of ``encoders``, concatenated per step; None if it has no audio."""
        have = set(self.subject.audio_encoders)
        if not have:
            return None
        missing = [e for e in encoders if e not in have]
        if missing:
            raise TalkgsError(f"{self.subject.root} has no {', '.join(missing)} audio features (it has "
                              f"{', '.join(sorted(have))}); prepare it with --audio-encoder {','.join(encoders)}")
        if not encoders:
            return None
        feats = [np.asarray(self.subject.audio_features(e), np.float32) for e in encoders]
        starts = np.cumsum([0] + [f.shape[-1] for f in feats])
        self.feature_columns = {e: slice(int(a), int(b)) for e, a, b in zip(encoders, starts, starts[1:])}
        return torch.tensor(np.concatenate(feats, axis=-1), device=self.device)

    def require_audio(self, what: str) -> torch.Tensor:
        """The features; a clear error naming ``what`` needs them when the subject has no audio."""
        if self.features is None:
            raise TalkgsError(f"{what} needs audio, and {self.subject.root} has none (its video had no audio track)")
        return self.features

    def batch(self, index: int) -> Batch:
        frame, labels = np.array(self.cache.frames[index]), np.array(self.cache.labels[index])
        # The torso layer a fitted model stores for this frame, composited as its renderer composites it, so
        # that a replayed frame renders exactly as it trained.
        layer = torso_layer(frame, labels, self.neck_extension, self.layer_background)
        layer = torch.from_numpy(layer).to(self.device).float() / 255.0
        under = layer[..., :3] + (1 - layer[..., 3:]) * self.background
        image = torch.from_numpy(frame).to(self.device).float() / 255.0
        return Batch(index, image, torch.from_numpy(labels).to(self.device), under, self.w2c[index], self.K)
