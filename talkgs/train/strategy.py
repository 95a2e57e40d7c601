"""Densification through gsplat's own strategy, with a cap on the number of Gaussians.

Only gsplat's public API is used: the ``DefaultStrategy`` dataclass fields and its
``step_post_backward`` callback. Private helpers (``_grow_gs``, ``_prune_gs``, ...) change signature
between gsplat releases, so nothing here overrides or calls them. tests/test_strategy.py checks that
the fields and callback relied on are still there and that growth stops at the cap on CPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gsplat.strategy import DefaultStrategy

from talkgs.train.config import DensifyConfig

#: The public DefaultStrategy fields that gate growth: a Gaussian duplicates or splits only when its
#: mean 2D gradient exceeds ``grow_grad2d`` (or, while ``step < refine_scale2d_stop_iter``, when its
#: screen radius exceeds ``grow_scale2d``). Infinite thresholds mean no Gaussian grows.
NO_GROWTH = {"grow_grad2d": math.inf, "grow_scale2d": math.inf}


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy that stops growing at ``cap_max`` Gaussians.

    A cap bounds CPU time and memory; gsplat's DefaultStrategy has none (its MCMCStrategy does, but
    relocates instead of splitting, which suits sparse scenes less than a head). A refinement step that
    starts with ``cap_max`` or more Gaussians grows none (pruning, statistics and opacity resets go on as
    usual); one that starts below the cap grows as gsplat decides, so the count may end above the cap
    by at most what that one step adds.
    """

    cap_max: int = 30000

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        strategy = self
        if len(params["means"]) >= self.cap_max:
            # The same strategy with growth switched off through its public thresholds, for this call.
            strategy = dataclasses.replace(self, **NO_GROWTH)
        return DefaultStrategy.step_post_backward(strategy, params, optimizers, state, step, info, packed=packed)


def make_strategy(cfg: DensifyConfig) -> CappedDefaultStrategy:
    return CappedDefaultStrategy(
        prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start_iter,
        refine_stop_iter=cfg.refine_stop_iter, refine_every=cfg.refine_every, reset_every=cfg.reset_every,
        cap_max=cfg.max_gaussians, verbose=False,
    )
