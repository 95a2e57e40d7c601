"""Training stages. A stage says what is rendered and what the loss is; the trainer does the rest.

Each stage kind is a class registered in ``STAGES`` under the name that ``StageConfig.name`` uses.
"""

from __future__ import annotations

import torch

from talkgs.data.schema import HEAD_LABELS, Label
from talkgs.model.gaussians import GaussianModel
from talkgs.model.losses import dssim, masked_l1, psnr
from talkgs.render import rasterize
from talkgs.train.config import StageConfig
from talkgs.train.context import Batch, FitContext


class StaticStage:
    """The canonical head: persistent Gaussians seen through the tracked cameras.

    The head is face skin, hair, ears and the top of the neck, composited over the frame's torso
    layer and the background plate. The mouth interior is left out (its own branch renders it later):
    it is excluded from the colour loss and the head must stay transparent there.
    """

    name = "static"

    def __init__(self, ctx: FitContext, cfg: StageConfig, model: GaussianModel):
        self.ctx = ctx
        self.cfg = cfg
        self.model = model
        device = ctx.device
        self._head = torch.tensor([int(lb) for lb in HEAD_LABELS], device=device)

    def masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """[R, R, 1] float masks: colour-loss weight, head (PSNR region), alpha target and its weight."""
        labels = batch.labels
        head = torch.isin(labels, self._head)
        mouth = labels == Label.MOUTH
        # Neck pixels are "don't care" for alpha: the head may cover the top of the neck there.
        alpha_weight = labels != Label.NECK
        return {
            "colour": (~mouth)[..., None].float(),
            "head": head[..., None].float(),
            "alpha_target": head[..., None].float(),
            "alpha_weight": alpha_weight[..., None].float(),
        }

    def render(self, batch: Batch, sh_degree: int | None = None):
        g = self.model.activated()
        out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], batch.viewmat, batch.K,
                        self.ctx.resolution, self.ctx.resolution, backend=self.ctx.cfg.backend, sh_degree=sh_degree)
        composite = out.image + (1.0 - out.alpha) * batch.under
        return composite, out

    def loss(self, batch: Batch, composite: torch.Tensor, out) -> tuple[torch.Tensor, dict[str, float]]:
        m = self.masks(batch)
        w = self.cfg.loss
        # Mouth pixels take the ground truth in the prediction, so SSIM ignores them too.
        pred = torch.where(m["colour"] > 0, composite, batch.image)
        l1 = masked_l1(pred, batch.image, m["colour"])
        d = dssim(pred, batch.image, w.ssim_window)
        a = masked_l1(out.alpha, m["alpha_target"], m["alpha_weight"])
        loss = w.l1 * l1 + w.dssim * d + w.alpha * a
        with torch.no_grad():
            p = psnr(composite, batch.image, m["head"])
        return loss, {"l1": l1.item(), "dssim": d.item(), "alpha": a.item(), "psnr_head": p.item()}


STAGES = {StaticStage.name: StaticStage}
