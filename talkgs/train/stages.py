"""Training stages. A stage says what is rendered, what is trained and what the loss is; the generic
trainer does the rest. Each kind is registered in ``STAGES`` under the name ``StageConfig.name`` uses.

TalkingGaussian's order: the static head (warm-up), the mouth interior branch, the face branch with
incremental sampling, and a final fuse of both over the real background and torso.
"""

from __future__ import annotations

import numpy as np
import torch

from talkgs.data import topology as topo
from talkgs.data.frames import Batch, label_mask, label_table
from talkgs.data.schema import HEAD_LABELS, Label
from talkgs.model.gaussians import PARAM_NAMES, GaussianModel
from talkgs.model.losses import dssim, masked_l1, psnr
from talkgs.model.motion import MotionDeltas
from talkgs.model.talking_head import TalkingHead
from talkgs.render.forward import FrameOutput, render_frames
from talkgs.train.config import StageConfig
from talkgs.train.context import FitContext

#: Landmarks of the landmark loss: what speech and blinks move (lips, jaw line, eyelids).
LANDMARK_LOSS_IDS = list(dict.fromkeys(topo.LIPS_OUTER + topo.LIPS_INNER + topo.LOWER_JAW + topo.LEFT_EYE
                                       + topo.RIGHT_EYE))


def landmark_anchors(points: torch.Tensor, means: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([M, k] indices, [M, k] weights summing to 1): the ``k`` Gaussians (canonical ``means`` [N, 3]) nearest each
    of ``points`` [M, 3], inverse-distance weighted; a point moves by their offsets' weighted sum."""
    dist, idx = torch.cdist(points, means).topk(min(k, means.shape[0]), largest=False)  # [M, k]
    w = 1.0 / dist.clamp_min(1e-4)
    return idx, w / w.sum(1, keepdim=True)


class Stage:
    """The static head: persistent Gaussians seen through the tracked cameras.

    The head is face skin, hair, ears and the top of the neck, composited over the frame's torso
    layer and the background plate. The mouth interior is left out (its own branch renders it): it
    is excluded from the colour loss and the head must stay transparent there.

    Subclasses change what moves, what is trained and where the loss looks.
    """

    name = "static"
    #: The branch whose render output drives the alpha loss and densification.
    primary = "face"
    #: Which branches are rendered, and whether their motion fields are applied.
    face_motion = False
    #: False: the face is left out of the training renders (not of evaluation).
    face_layer = True
    mouth = False
    mouth_motion = False
    #: The parameters of ``gaussians()`` that the stage trains.
    params: tuple[str, ...] = PARAM_NAMES
    #: Whether the trained Gaussians start with SH degree 0 and gain a band every ``sh_degree_every``
    #: steps (fitting from scratch), or show all their bands from the first step (fitted already).
    warm_up_sh = True

    @classmethod
    def draws(cls) -> dict[str, bool]:
        """What a head fitted up to this stage draws (``FittedModel.draws``)."""
        return {"mouth": cls.mouth, "face_motion": cls.face_motion, "mouth_motion": cls.mouth_motion}

    def __init__(self, ctx: FitContext, cfg: StageConfig, head: TalkingHead):
        self.ctx = ctx
        self.cfg = cfg
        self.head = head
        self._head_labels = label_table(HEAD_LABELS, ctx.device)
        #: [B] more training frames for this step's landmark loss, drawn by ``sample``.
        self.landmark_extra: torch.Tensor | None = None
        if self.face_motion or self.mouth_motion:
            ctx.require_audio(f"stage {self.name}")

    # -- what is trained ------------------------------------------------------------------------------
    def gaussians(self) -> GaussianModel | None:
        """The Gaussians this stage optimises and densifies (None: they stay fixed)."""
        return self.head.face

    def networks(self) -> list[torch.nn.Module]:
        """The networks this stage trains."""
        return []

    def sample(self, step: int, gen: torch.Generator) -> int:
        """The training frame of ``step``."""
        train = self.ctx.train_indices
        if self.cfg.sampler == "open":
            if "_open_weights" not in self.__dict__:
                opening = np.clip(self.ctx.mouth_open[train], 1e-3, None)  # a closed mouth is still drawn, rarely
                self._open_weights = torch.as_tensor(opening, dtype=torch.float64)
            return int(train[int(torch.multinomial(self._open_weights, 1, generator=gen))])
        return int(train[int(torch.randint(len(train), (1,), generator=gen))])

    # -- rendering and loss -------------------------------------------------------------------------
    def masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """[R, R, 1] float masks: colour-loss weight, head (PSNR region), alpha target and its weight."""
        labels = batch.labels
        head = label_mask(labels, self._head_labels)
        mouth = labels == Label.MOUTH
        # Covered pixels (a hand in front of the face) say nothing about the head: neither its colour nor its shape.
        seen = labels != Label.OCCLUDED
        colour = (torch.ones_like(mouth) if self.mouth else ~mouth) & seen
        # Neck pixels are "don't care" for alpha: the head may cover the top of the neck there.
        return {
            "colour": colour[..., None].float(),
            "head": head[..., None].float(),
            "alpha_target": head[..., None].float(),
            "alpha_weight": ((labels != Label.NECK) & seen)[..., None].float(),
            "mouth": mouth[..., None].float(),
        }

    def render(self, batch: Batch, sh_degree: int | None = None, training: bool = False,
               motion: bool = True, tracked: bool = False) -> FrameOutput:
        """One frame through the head's forward pass (``talkgs.render.render_frames``), B = 1.

        ``training``: the picture the loss sees, without the layers the stage leaves out while training
        (``face_layer``); otherwise every layer, as evaluation and validation show it.
        ``motion``: False renders the fitted Gaussians without their motion fields (evaluation's baseline).
        ``tracked``: the mouth code path is driven by the frame's own tracked code, as in training, not by speech
        (the fit's self-check: a mouth that speech opens differently from the truth is not an artifact).
        ``sh_degree``: the SH bands of the Gaussians this stage fits from scratch (its warm-up schedule,
        ``warm_up_sh``); Gaussians fitted already always show all their bands.
        """
        ctx, head = self.ctx, self.head
        trained = self.gaussians() if self.warm_up_sh else None
        degrees = {name: sh_degree for name, model in (("face", head.face), ("mouth", head.mouth)) if model is trained}
        index = torch.tensor([batch.index], device=ctx.device)
        return render_frames(
            head, ctx.drive(training or tracked), index, ctx.expression[index], batch.viewmat[None], batch.K,
            batch.under[None],
            face=self.face_layer or not training, mouth=self.mouth, face_motion=self.face_motion and motion,
            mouth_motion=self.mouth_motion and motion, sh_degree=degrees, backend=ctx.cfg.backend)

    def loss(self, batch: Batch, out: FrameOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The stage's loss on the B = 1 ``render`` of ``batch``, and the figures to log."""
        image = out.image[0]
        layer = self.primary_layer(out)
        m = self.masks(batch)
        w = self.cfg.loss
        # Pixels outside the colour mask take the ground truth in the prediction, so SSIM ignores them too.
        pred = torch.where(m["colour"] > 0, image, batch.image)
        l1 = masked_l1(pred, batch.image, m["colour"])
        d = dssim(pred, batch.image, w.ssim_window)
        a = masked_l1(layer.alpha, m["alpha_target"], m["alpha_weight"])
        loss = w.l1 * l1 + w.dssim * d + w.alpha * a + w.offsets * self._offsets(out)
        logs = {"l1": l1.item(), "dssim": d.item(), "alpha": a.item()}
        if self.face_motion and w.landmarks > 0 and bool(self.ctx.landmarks_found[batch.index]):
            lm = self._landmark_loss(batch, out.face_deltas)
            loss = loss + w.landmarks * lm
            logs["landmarks_px"] = lm.item()
        with torch.no_grad():
            # The progress bar's PSNR, over what the stage fits: the mouth stage trains without the face
            # layer, so its head PSNR would read about 6 dB; a closed mouth has no pixels to score.
            region = m["mouth"] if self.primary == "mouth" else m["head"]
            if region.any():
                logs["psnr"] = psnr(image, batch.image, region).item()
        return loss, logs

    def primary_layer(self, out: FrameOutput):
        """The ``RenderOutput`` of the ``primary`` branch in a B = 1 render (alpha loss, densification)."""
        return (out.face if self.primary == "face" else out.mouth)[0]

    def _landmark_loss(self, batch: Batch, face_deltas: MotionDeltas) -> torch.Tensor:
        """Mean pixel distance between the tracked landmarks and the template landmarks moved by the
        offsets of the face Gaussians around them (``LossConfig.landmarks``), over the rendered frame
        and the ``landmark_extra`` frames."""
        ctx = self.ctx
        idx, weight = self._anchors()  # [M, k]
        offsets = [face_deltas.d_means[:, idx]]  # [1, M, k, 3]
        frames = torch.tensor([batch.index], device=ctx.device)
        extra = self.landmark_extra
        if extra is not None and len(extra):
            # The field is evaluated at the anchor Gaussians only: a point's offset does not depend on
            # the other points.
            anchors, inverse = idx.unique(return_inverse=True)
            d = self.head.face_deltas(ctx.drive(True), extra, ctx.expression[extra],
                                      points=self.head.face.params["means"].detach()[anchors]).d_means  # [B, U, 3]
            offsets.append(d[:, inverse])  # [B, M, k, 3]
            frames = torch.cat([frames, extra])
        moved = ctx.template[LANDMARK_LOSS_IDS] + (torch.cat(offsets) * weight[..., None]).sum(2)  # [B+1, M, 3]
        view = ctx.w2c[frames]  # [B+1, 4, 4]
        cam = torch.einsum("bij,bmj->bmi", view[:, :3, :3], moved) + view[:, None, :3, 3]
        uv = cam @ ctx.K.T
        uv = uv[..., :2] / uv[..., 2:].clamp_min(1e-6)
        return (uv - ctx.landmarks[frames][:, LANDMARK_LOSS_IDS]).norm(dim=-1).mean()

    def _anchors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([M, k] indices, [M, k] weights): the face Gaussians nearest each loss landmark (the canonical
        means are fixed while the face field trains, so this is computed once per stage)."""
        if "_anchor_cache" not in self.__dict__:
            self._anchor_cache = landmark_anchors(self.ctx.template[LANDMARK_LOSS_IDS],
                                                  self.head.face.params["means"].detach(),
                                                  self.cfg.loss.landmark_neighbours)
        return self._anchor_cache

    def _offsets(self, out: FrameOutput) -> torch.Tensor:
        deltas = [d for d in (out.mouth_deltas, out.face_deltas) if d is not None]
        # Only what the fields learn: the jaw's movement that the code prescribes is not an offset to shrink.
        learned = [(d.d_means if d.carried is None else d.d_means - d.carried, d.d_quats, d.d_scales) for d in deltas]
        terms = [t.abs().mean() for parts in learned for t in parts if t is not None]
        return torch.stack(terms).sum() if terms else torch.zeros((), device=self.ctx.device)


class MouthStage(Stage):
    """The mouth interior (teeth, tongue, the dark cavity): its own Gaussians, moved by audio alone.

    Rendered alone over the torso and background, as TalkingGaussian trains its inside-mouth branch:
    under the static face, whose lips are an average of open and closed, the teeth of an open mouth
    would be hidden and get almost no gradient. The loss looks at the mouth-interior pixels only, and
    the mouth Gaussians must cover them.
    """

    name = "mouth"
    primary = "mouth"
    face_layer = False
    mouth = True
    mouth_motion = True

    def gaussians(self) -> GaussianModel | None:
        return self.head.mouth

    def networks(self) -> list[torch.nn.Module]:
        return self.head.branch_networks("mouth")

    def masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        m = super().masks(batch)
        inside = m["mouth"]
        outside = ((batch.labels == Label.BACKGROUND) | (batch.labels == Label.TORSO))[..., None].float()
        return {**m, "colour": inside, "alpha_target": inside, "alpha_weight": inside + outside}


class FaceStage(Stage):
    """The face branch: audio- and expression-driven offsets of the face Gaussians.

    Trained on every pixel of the composite (the mouth branch is in place now), with TalkingGaussian's
    incremental sampling when the stage config asks for it.

    The face Gaussians' colours and opacities train too, their geometry does not. The static head
    hides Gaussians behind the lips whose colour nothing saw; when the lips part, the motion reveals
    them. Left untrained, one such Gaussian showed as a magenta spot under the lower lip of the demo fit
    in every moving frame (issue 13); trained here, whatever the motion reveals gets the colour of what
    the frames show there.
    """

    name = "face"
    face_motion = True
    mouth = True
    mouth_motion = True
    params = ("opacities", "sh0", "shN")
    warm_up_sh = False

    def gaussians(self) -> GaussianModel | None:
        return self.head.face

    def networks(self) -> list[torch.nn.Module]:
        return self.head.branch_networks("face")

    def sample(self, step: int, gen: torch.Generator) -> int:
        """The frame to render; also draws the ``landmark_extra`` frames of the landmark loss."""
        frame = self._sample_render(step, gen)
        extra = self.cfg.loss.landmark_frames - 1
        if self.cfg.loss.landmarks > 0 and extra > 0:
            pool = self._landmark_pool()
            self.landmark_extra = pool[torch.randint(len(pool), (extra,), generator=gen)].to(self.ctx.device)
        return frame

    def _landmark_pool(self) -> torch.Tensor:
        """Training frames whose landmarks were found (computed once per stage)."""
        if "_pool" not in self.__dict__:
            train = torch.as_tensor(self.ctx.train_indices)
            self._pool = train[self.ctx.landmarks_found.cpu()[train]]
        return self._pool

    def _sample_render(self, step: int, gen: torch.Generator) -> int:
        cfg = self.cfg
        progress = step / max(cfg.iterations, 1)
        if cfg.sampler != "incremental" or progress >= cfg.incremental_fraction:
            return super().sample(step, gen)
        # First half of the incremental part: a window over mouth opening; then over eye openness.
        q = progress / cfg.incremental_fraction
        order = self._order("mouth_open" if q < 0.5 else "eye_open")
        q = (q % 0.5) * 2
        window = max(1, int(round(cfg.sample_window * len(order))))
        start = int(round(q * (len(order) - window)))
        return int(order[start + int(torch.randint(window, (1,), generator=gen))])

    def _order(self, signal: str) -> np.ndarray:
        """Training frames sorted by ``signal`` (computed once per stage)."""
        cache = self.__dict__.setdefault("_orders", {})
        if signal not in cache:
            train = self.ctx.train_indices
            cache[signal] = train[np.argsort(getattr(self.ctx, signal)[train], kind="stable")]
        return cache[signal]


class FuseStage(FaceStage):
    """Both branches together over the real background and torso: every network is fine-tuned."""

    name = "fuse"

    def networks(self) -> list[torch.nn.Module]:
        return list(self.head.networks().values())


STAGES = {cls.name: cls for cls in (Stage, MouthStage, FaceStage, FuseStage)}
