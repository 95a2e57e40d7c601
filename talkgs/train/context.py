"""What every stage needs from the subject, at training resolution, on the training device."""

from __future__ import annotations

import numpy as np
import torch

from talkgs.data.frames import SubjectFrames, pick_device
from talkgs.data.subject import Subject
from talkgs.train.config import FitConfig
from talkgs.utils import log


def replays_background(cfg: FitConfig, subject: Subject) -> bool:
    """``FitConfig.replay_background`` resolved for ``subject``."""
    return cfg.replay_background == "always" or (cfg.replay_background == "auto" and subject.camera_moving)


class FitContext(SubjectFrames):
    """The subject's frames at the fit's resolution, plus what only training reads: the scene scale,
    the sampling signals and the tracked landmarks of the landmark loss."""

    def __init__(self, subject: Subject, cfg: FitConfig):
        super().__init__(subject, cfg.resolution, pick_device(cfg.device), tuple(cfg.head.audio_encoders),
                         tuple(cfg.head.expression), cfg.neck_extension, replays_background(cfg, subject))
        self.cfg = cfg
        # Scene scale for learning rates and densification thresholds: the camera's distance.
        self.scene_scale = float(np.median(np.linalg.norm(subject.w2c[:, :3, 3], axis=-1)))
        signals = subject.signals
        self.mouth_open = signals["mouth_open"]  # [F]
        self.eye_open = np.minimum(signals["blink_left"], signals["blink_right"])  # [F]
        scale = cfg.resolution / subject.size
        # Tracked landmarks at training resolution: the targets of the landmark loss.
        self.landmarks = torch.tensor(subject.landmarks[..., :2] * scale, dtype=torch.float32,
                                      device=self.device)  # [F, 478, 2]
        found = subject.landmarks_found.copy()
        #: Training frames whose tracked mouth can be trusted (not covered): the mouth code and speech model's.
        self.mouth_train_indices = self.train_indices
        if "occluded" in signals:  # subjects prepared before occlusions were looked for have none
            covered, mouth = signals["occluded"], signals["mouth_occluded"].astype(bool)
            keep = covered[self.train_indices] <= cfg.max_occluded
            if not keep.all():
                log.info(f"{int((~keep).sum())} training frames are more than {cfg.max_occluded:.0%} covered "
                         "(prepare_report.json: occlusion): left out of the fit")
            self.train_indices = self.train_indices[keep]
            self.mouth_train_indices = self.train_indices[~mouth[self.train_indices]]
            found &= ~mouth
        self.landmarks_found = torch.tensor(found, device=self.device)  # [F] the landmark loss's frames
        self.template = torch.tensor(subject.template, dtype=torch.float32, device=self.device)  # [478, 3]
        #: [F, C] the tracked mouth codes that drive training renders (``HeadConfig.drive = "code"``;
        #: set by the trainer once the head's basis exists), else None.
        self.codes: torch.Tensor | None = None

    def drive(self, training: bool) -> torch.Tensor | None:
        """What drives the motion fields: the tracked codes while training the code path; otherwise
        the audio features (on the code path, held-out frames get their codes from speech)."""
        return self.codes if training and self.codes is not None else self.features
