"""The talking head: face and mouth Gaussians, their motion fields and what drives them.

As in TalkingGaussian, the face and the inside of the mouth are separate branches with their own
persistent Gaussians. The face moves with the drive signal and the blink signals, the mouth interior
with the drive signal alone. Untrained motion fields return zero offsets, so a fresh TalkingHead
renders exactly the static head.

Two drives (``HeadConfig.drive``):

- ``"audio"``, TalkingGaussian's direct path: each branch has its own audio net from the audio
  features to the fields, learned end to end.
- ``"code"``: the fields follow the mouth code (``talkgs.model.mouth_code``). Training feeds each
  frame's tracked code; new speech gets its code from ``SpeechToCode``, another person's video from
  ``MouthBasis.transfer``. The ``features`` of ``deform`` are then either speech evidence [F, 2, D]
  or a code track [F, C].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from talkgs.model.audio_net import AudioNet, AudioNetConfig
from talkgs.model.gaussians import PARAM_NAMES, GaussianModel
from talkgs.model.hashgrid import HashGridConfig
from talkgs.model.motion import FaceMotionField, MotionDeltas, MotionFieldConfig, MouthMotionField, apply_deltas
from talkgs.model.mouth_code import MouthBasis, MouthCodeConfig, SpeechToCode

DRIVES = ("audio", "code")


@dataclass
class HeadConfig:
    drive: str = "code"
    """What moves the fields: "code" (the mouth code, from tracking while fitting and from ``SpeechToCode`` for
    new speech) or "audio" (the audio nets, TalkingGaussian's direct path, learned end to end from the subject's
    voice). The code path is the default since session 11: driven by six other speakers' real videos, the
    anchor's mouth follows theirs at a median 0.42 against 0.28 on the direct path and the demo's at 0.52 against
    0.25, and on the anchor's own held-out voice ``mouth_open_corr`` is 0.52 against 0.40 (docs/lip_sync.md). The
    direct path follows the 20-s demo's own voice better (0.69 against 0.06 on its 45 held-out frames) and streams
    with 11 frames of latency against 34."""
    code: MouthCodeConfig = field(default_factory=MouthCodeConfig)
    """The mouth code and its speech model (``drive = "code"`` only)."""
    audio_encoders: tuple[str, ...] = ("whisper",)
    """Audio features of the subject folder, concatenated per step: the speech model's evidence on the code
    path, the audio nets' input on the direct path. The code path reads block 3 of Whisper base's encoder
    (``talkgs.audio.whisper``; session 14): before rendering, with the public-domain prior, the anchor's speech
    model follows 30 other speakers' real mouths at a median 0.68 against 0.53 for pocketsphinx's visemes with the
    speaker-normalised cepstra, and the demo's own held-out frames at 0.71 against 0.19 (docs/lip_sync.md, tenth
    round). For the direct path log-mel alone (``[mel]``) predicts held-out mouth opening best of the encoders
    available without downloaded weights: the phone one-hots are too often wrong on a short clip, and adding them
    cuts the held-out correlation on the demo subject from 0.58 to 0.20 (tools/research/probe_audio.py)."""
    audio: AudioNetConfig = field(default_factory=AudioNetConfig)
    motion: MotionFieldConfig = field(default_factory=lambda: MotionFieldConfig(
        hashgrid=HashGridConfig(levels=8, log2_table=12, max_resolution=256)))
    """The default grid is smaller than the hash grid's own default: it runs on every training step
    on CPU, and 8 levels up to 256 cells over the head box resolve the lips (about 2.5 mm)."""
    expression: tuple[str, ...] = ("blink_left", "blink_right")
    """Per-frame signals of the subject (``schema.EXPRESSION_CHANNELS``) fed to the face field next to the
    audio. Only signals that exist at render time belong here: blinks can be replayed, removed or
    synthesised for any speech, but the mouth signals of the training video say nothing about new audio,
    and a field that leaned on them would not move the lips when driven by speech alone."""
    mouth_points: int = 1500
    """Initial Gaussians of the mouth interior."""
    mouth_depth_m: float = 0.025
    """The mouth Gaussians start this deep behind the lips (teeth and tongue sit just behind them)."""
    jaw_carry_m: float = 0.004
    """Code path: the mouth interior below the lips' meeting line (lower teeth, tongue) moves with the jaw
    that the code describes, the part above it (upper teeth) stays with the skull, and the mouth field
    learns only what is left. The carry rises from 0 to 1 over this height (metres) about the line, which
    lies between the incisors' edges. Without it the field, starting from zero offsets, never learned to
    move the teeth: fitted on the anchor, the interior stayed a still, blurred average (offsets under 1 mm
    at a 15-mm opening). With it and the mouth stage's "open" sampling the interior takes the teeth's
    structure and the held-out mouth PSNR rises 0.2 dB (docs/lip_sync.md). 0 turns it off."""

    def __post_init__(self) -> None:
        if self.drive not in DRIVES:
            raise ValueError(f"HeadConfig.drive must be one of {', '.join(DRIVES)}, got {self.drive!r}")
        if self.jaw_carry_m < 0:
            raise ValueError(f"HeadConfig.jaw_carry_m must be >= 0, got {self.jaw_carry_m}")


@dataclass
class Deformation:
    """B frames' Gaussians of both branches, as ``TalkingHead.deform`` moves them.

    ``face`` and ``mouth`` hold the activated Gaussians (``GaussianModel.activated()``'s keys), every
    entry with a leading [B]; frame b's entries are ready for ``talkgs.render.rasterize``.
    """

    face: dict[str, Tensor]  # means [B, N, 3], quats [B, N, 4], scales [B, N, 3], opacities [B, N], colors [B, N, K, 3]
    mouth: dict[str, Tensor]  # the same keys, [B, M, ...]
    face_deltas: MotionDeltas | None  # offsets [B, N, ...]; None: the face did not move
    mouth_deltas: MotionDeltas | None  # d_means [B, M, 3]; None: the mouth did not move

    @property
    def num_frames(self) -> int:
        return int(self.face["means"].shape[0])

    def frame(self, b: int) -> Deformation:
        """Frame ``b`` alone, as a one-frame deformation (views, no copies)."""
        def one(d: MotionDeltas | None) -> MotionDeltas | None:
            if d is None:
                return None
            return dataclasses.replace(d, **{k: getattr(d, k)[b:b + 1] for k in ("d_means", "d_quats", "d_scales",
                                                                                   "carried")
                                             if getattr(d, k) is not None})
        return Deformation({k: v[b:b + 1] for k, v in self.face.items()},
                           {k: v[b:b + 1] for k, v in self.mouth.items()}, one(self.face_deltas),
                           one(self.mouth_deltas))


def _still(model: GaussianModel, batch: int) -> dict[str, Tensor]:
    """The activated Gaussians of ``model`` repeated (as views) for ``batch`` frames."""
    return {k: v.expand(batch, *v.shape) for k, v in model.activated().items()}


class TalkingHead(nn.Module):
    """All trainable parts of a fitted subject.

    Args:
        face, mouth: the two branches' Gaussians.
        audio_dim: D of the concatenated per-step audio features.
        expr_mean, expr_std: [E] normalisation of the expression signals (from the training frames).
    """

    def __init__(self, face: GaussianModel, mouth: GaussianModel, audio_dim: int, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.face = face
        self.mouth = mouth
        if cfg.drive == "audio":
            self.audio_face = AudioNet(audio_dim, cfg.audio)
            self.audio_mouth = AudioNet(audio_dim, cfg.audio)
            signal = cfg.audio.out_dim
        else:
            self.mouth_code = MouthBasis(cfg.code)
            self.speech = SpeechToCode(audio_dim, cfg.code)
            signal = cfg.code.components
        motion = dataclasses.replace(cfg.motion, audio_dim=signal, expr_dim=len(cfg.expression))
        self.face_motion = FaceMotionField(motion)
        self.mouth_motion = MouthMotionField(motion)
        self.register_buffer("expr_mean", torch.zeros(motion.expr_dim))  # [E]
        self.register_buffer("expr_std", torch.ones(motion.expr_dim))  # [E]

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks by name. The code path's speech model is solved in closed form instead."""
        audio = {"audio_face": self.audio_face, "audio_mouth": self.audio_mouth} if self.cfg.drive == "audio" else {}
        return {**audio, "face_motion": self.face_motion, "mouth_motion": self.mouth_motion}

    def branch_networks(self, branch: str) -> list[nn.Module]:
        """The networks that move ``branch`` ("face" or "mouth"): its field and, on the audio path, its audio net."""
        nets = self.networks()
        return [nets[k] for k in (f"audio_{branch}", f"{branch}_motion") if k in nets]

    @property
    def right_context(self) -> int:
        """Frames of audio features after frame i that its motion reads (a stream's look-ahead)."""
        return self.audio_face.right_context if self.cfg.drive == "audio" else self.speech.right_context

    @property
    def left_context(self) -> int:
        """Frames of audio features before frame i that its motion reads."""
        return self.audio_face.left_context if self.cfg.drive == "audio" else self.speech.left_context

    @torch.no_grad()
    def set_input_stats(self, features: Tensor, expression: Tensor) -> None:
        """Standardise the audio features [F, 2, D] (audio path) and expressions [F, E] with training-frame
        statistics."""
        if self.cfg.drive == "audio":
            self.audio_face.set_feature_stats(features)
            self.audio_mouth.set_feature_stats(features)
        self.expr_mean.copy_(expression.mean(0))
        self.expr_std.copy_(expression.std(0).clamp_min(1e-3))

    def signal(self, features: Tensor, index: Tensor, branch: str) -> Tensor:
        """[B, A] what drives ``branch`` in frames ``index`` [B]: its audio net's embedding of the audio
        features [F, 2, D], or the mouth code (from a code track [F, C], or predicted from speech
        evidence [F, 2, D])."""
        if self.cfg.drive == "audio":
            return (self.audio_face if branch == "face" else self.audio_mouth)(features, index)
        if features.ndim == 2:
            c = self.cfg.code.components
            if features.shape[1] != c:
                raise ValueError(f"a code track must be [F, {c}], got {tuple(features.shape)}")
            return features[index.to(device=features.device, dtype=torch.long)]
        return self.speech(features, index)

    def face_deltas(self, features: Tensor, index: Tensor, expression: Tensor,
                    points: Tensor | None = None, signal: Tensor | None = None) -> MotionDeltas:
        """Face offsets at the face Gaussians, or at ``points`` [M, 3] (canonical positions) when given.

        Args:
            features: [F, 2, D] audio features of the sequence, or a code track [F, C] (``signal``).
            index: [1] the frame, or [B] frames.
            expression: [E] that frame's ``cfg.expression`` channels (offsets [N, ...]), or [B, E] for
                the B frames (offsets [B, N, ...]).
        """
        audio = self.signal(features, index, "face") if signal is None else signal  # [B, A]
        if expression.ndim == 1:
            audio = audio[0]
        expr = (expression - self.expr_mean) / self.expr_std
        return self.face_motion(self.face.params["means"].detach() if points is None else points, audio, expr)

    def mouth_deltas(self, features: Tensor, index: Tensor, signal: Tensor | None = None) -> MotionDeltas:
        """Mouth offsets (d_means [B, M, 3]) of frames ``index`` [B] of ``features`` (``signal``)."""
        audio = self.signal(features, index, "mouth") if signal is None else signal  # [B, A]
        means = self.mouth.params["means"].detach()
        deltas = self.mouth_motion(means, audio)
        if self.cfg.drive != "code" or self.cfg.jaw_carry_m == 0:
            return deltas
        carry = self.mouth_code.jaw_carry(means, self.cfg.jaw_carry_m)  # [M]
        carried = carry[:, None] * self.mouth_code.jaw_displacement(audio)[..., None, :]  # [B, M, 3] or [M, 3]
        return dataclasses.replace(deltas, d_means=deltas.d_means + carried, carried=carried)

    def deform(
        self,
        features: Tensor | None,  # [F, 2, D] audio features, or [F, C] codes (``signal``); None: no motion
        index: Tensor,  # [B] frames of ``features``
        expression: Tensor,  # [B, E] the frames' ``cfg.expression`` channels
        face_motion: bool = True,
        mouth_motion: bool = True,
    ) -> Deformation:
        """The face and mouth Gaussians of B frames: the audio- and expression-driven half of a frame.

        It does not depend on the camera: a viewer keeps it while the camera moves. A branch whose
        motion is off (or with ``features`` None) shows its canonical Gaussians, exactly as fitted.
        """
        if index.ndim != 1 or expression.ndim != 2 or expression.shape[0] != index.shape[0]:
            raise ValueError(f"index must be [B] and expression [B, E], got {tuple(index.shape)} and "
                             f"{tuple(expression.shape)}")
        b = index.shape[0]
        face_motion = face_motion and features is not None
        mouth_motion = mouth_motion and features is not None
        # On the code path both branches follow the same code: predict it once.
        shared = self.signal(features, index, "face") if self.cfg.drive == "code" and (face_motion or mouth_motion) \
            else None
        face_d = self.face_deltas(features, index, expression, signal=shared) if face_motion else None
        mouth_d = self.mouth_deltas(features, index, signal=shared) if mouth_motion else None
        return Deformation(
            face=_still(self.face, b) if face_d is None else apply_deltas(self.face, face_d),
            mouth=_still(self.mouth, b) if mouth_d is None else apply_deltas(self.mouth, mouth_d),
            face_deltas=face_d, mouth_deltas=mouth_d,
        )

    # -- flat tensors for checkpoints and saving -----------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], audio_dim: int, cfg: HeadConfig) -> TalkingHead:
        """Rebuild from ``tensors()``; the Gaussian counts come from the tensors (densification changes them)."""
        face = GaussianModel(**{k: tensors[f"face.params.{k}"] for k in PARAM_NAMES})
        mouth = GaussianModel(**{k: tensors[f"mouth.params.{k}"] for k in PARAM_NAMES})
        head = cls(face, mouth, audio_dim, cfg)
        if "speech.train_codes" in tensors:  # as many as the fit kept
            head.speech.train_codes = tensors["speech.train_codes"].clone()
            # A model fitted before the bilabial pull has neither: it loads without the pull.
            # A model fitted before the evidence projection read its evidence as it is.
            tensors = {"speech.closed_codes": head.speech.closed_codes, "speech.bilabial_column": torch.tensor(-1),
                       "speech.evidence_mean": head.speech.evidence_mean,
                       "speech.evidence_basis": head.speech.evidence_basis, **tensors}
            head.speech.closed_codes = tensors["speech.closed_codes"].clone()
        head.load_state_dict(tensors)
        return head
