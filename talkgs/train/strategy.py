"""Densification through gsplat's own strategy, with a cap on the number of Gaussians."""

from __future__ import annotations

from dataclasses import dataclass

from gsplat.strategy import DefaultStrategy

from talkgs.train.config import DensifyConfig


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy that stops growing at ``cap_max`` Gaussians.

    A cap bounds CPU time and memory; gsplat's DefaultStrategy has none (its MCMCStrategy does, but
    relocates instead of splitting, which suits sparse scenes less than a head).
    """

    cap_max: int = 30000

    def _grow_gs(self, params, optimizers, state, step):
        if len(params["means"]) >= self.cap_max:
            return 0, 0
        return super()._grow_gs(params, optimizers, state, step)


def make_strategy(cfg: DensifyConfig) -> CappedDefaultStrategy:
    return CappedDefaultStrategy(
        prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start_iter,
        refine_stop_iter=cfg.refine_stop_iter, refine_every=cfg.refine_every, reset_every=cfg.reset_every,
        cap_max=cfg.max_gaussians, verbose=False,
    )
