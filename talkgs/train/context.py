"""What every stage needs from the subject, at training resolution, on the training device."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from talkgs.data import schema
from talkgs.data.cache import FrameCache, open_cache
from talkgs.data.subject import Subject
from talkgs.render.compositing import torso_under
from talkgs.train.config import FitConfig


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from talkgs.errors import TalkgsError

        raise TalkgsError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


@dataclass
class Batch:
    """One training or validation frame."""

    index: int
    image: torch.Tensor  # [R, R, 3] ground truth in [0, 1]
    labels: torch.Tensor  # [R, R] uint8 label ids
    under: torch.Tensor  # [R, R, 3] what lies under the head: the frame's torso layer over the plate
    viewmat: torch.Tensor  # [4, 4] head-to-camera
    K: torch.Tensor  # [3, 3] at training resolution


class FitContext:
    """Subject data at training resolution: frames streamed from a memory-mapped cache."""

    def __init__(self, subject: Subject, cfg: FitConfig):
        self.subject = subject
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.resolution = cfg.resolution
        self.cache: FrameCache = open_cache(subject, cfg.resolution)
        scale = cfg.resolution / subject.size
        K = subject.K.copy()
        K[:2] *= scale  # pixel coordinates scale about the image corner (continuous convention)
        self.K = torch.tensor(K, dtype=torch.float32, device=self.device)
        self.w2c = torch.tensor(subject.w2c, dtype=torch.float32, device=self.device)  # [F, 4, 4]
        plate = cv2.resize(subject.background, (cfg.resolution, cfg.resolution), interpolation=cv2.INTER_AREA)
        self.background = torch.tensor(plate, dtype=torch.float32, device=self.device) / 255.0  # [R, R, 3]
        self._torso_labels = torch.tensor(schema.TORSO_LABELS, device=self.device)
        self.train_indices = subject.train_indices
        self.test_indices = subject.test_indices
        # Scene scale for learning rates and densification thresholds: the camera's distance.
        self.scene_scale = float(np.median(np.linalg.norm(subject.w2c[:, :3, 3], axis=-1)))
        signals = subject.signals
        self.mouth_open = signals["mouth_open"]  # [F]
        self.eye_open = np.minimum(signals["blink_left"], signals["blink_right"])  # [F]
        unknown = [c for c in cfg.head.expression if c not in schema.EXPRESSION_CHANNELS]
        if unknown:
            from talkgs.errors import TalkgsError

            raise TalkgsError(f"unknown expression channel(s) {', '.join(unknown)} in head.expression (known: "
                              f"{', '.join(schema.EXPRESSION_CHANNELS)})")
        expr = np.stack([signals[c] for c in cfg.head.expression], axis=-1) if cfg.head.expression else \
            np.zeros((subject.num_frames, 0))
        self.expression = torch.tensor(expr, dtype=torch.float32, device=self.device)  # [F, E]
        # Tracked landmarks at training resolution: the targets of the landmark loss.
        marks = subject.landmarks_found
        self.landmarks = torch.tensor(subject.landmarks[..., :2] * scale, dtype=torch.float32,
                                      device=self.device)  # [F, 478, 2]
        self.landmarks_found = torch.tensor(marks, device=self.device)  # [F]
        self.template = torch.tensor(subject.template, dtype=torch.float32, device=self.device)  # [478, 3]
        self.features = self._audio_features(cfg.head.audio_encoders)  # [F, 2, D] or None

    def _audio_features(self, encoders) -> torch.Tensor | None:
        """The subject's features of ``encoders``, concatenated per step; None if it has no audio."""
        have = set(self.subject.audio_encoders)
        if not have:
            return None
        missing = [e for e in encoders if e not in have]
        if missing:
            from talkgs.errors import TalkgsError

            raise TalkgsError(f"{self.subject.root} has no {', '.join(missing)} audio features (it has "
                              f"{', '.join(sorted(have))}); prepare it with --audio-encoder {','.join(encoders)}")
        feats = [np.asarray(self.subject.audio_features(e), np.float32) for e in encoders]
        return torch.tensor(np.concatenate(feats, axis=-1), device=self.device)

    def require_audio(self, stage: str) -> torch.Tensor:
        if self.features is None:
            from talkgs.errors import TalkgsError

            raise TalkgsError(f"stage {stage} needs audio, and {self.subject.root} has none (its video had no "
                              "audio track)")
        return self.features

    def batch(self, index: int) -> Batch:
        frame = torch.from_numpy(np.array(self.cache.frames[index])).to(self.device)
        labels = torch.from_numpy(np.array(self.cache.labels[index])).to(self.device)
        image = frame.float() / 255.0
        under = torso_under(image, labels, self.background, self._torso_labels)
        return Batch(index, image, labels, under, self.w2c[index], self.K)
