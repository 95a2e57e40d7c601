"""CappedDefaultStrategy: gsplat's DefaultStrategy with a cap, driven by the torch rasterizer's info on CPU."""

from __future__ import annotations

import dataclasses
import inspect

import torch
from gsplat.strategy import DefaultStrategy

from talkgs.render import rasterize
from talkgs.train.config import DensifyConfig
from talkgs.train.strategy import NO_GROWTH, CappedDefaultStrategy, make_strategy

UPGRADE_HINT = (
    "talkgs.train.strategy relies on this part of gsplat's DefaultStrategy; the installed gsplat changed it. "
    "Adapt CappedDefaultStrategy.step_post_backward (and NO_GROWTH) to the new gsplat, or install a gsplat "
    "version this test passes with (1.5.3 is tested)."
)


def test_gsplat_public_api_relied_on_is_there():
    params = list(inspect.signature(DefaultStrategy.step_post_backward).parameters)
    assert params == ["self", "params", "optimizers", "state", "step", "info", "packed"], (
        f"DefaultStrategy.step_post_backward{inspect.signature(DefaultStrategy.step_post_backward)}: {UPGRADE_HINT}"
    )
    fields = {f.name for f in dataclasses.fields(DefaultStrategy)}
    missing = sorted(set(NO_GROWTH) - fields)
    assert not missing, f"DefaultStrategy has no field(s) {missing}: {UPGRADE_HINT}"


def test_no_private_gsplat_method_is_overridden():
    """gsplat's private helpers (_grow_gs, _prune_gs, _update_state) change signature between releases."""
    private = [n for n in vars(CappedDefaultStrategy) if n.startswith("_") and not n.startswith("__")]
    assert private == [], f"CappedDefaultStrategy overrides gsplat's private {private}; use its public API"


def test_make_strategy_takes_the_config():
    s = make_strategy(DensifyConfig(max_gaussians=123, refine_every=7, grow_grad2d=0.5))
    assert (s.cap_max, s.refine_every, s.grow_grad2d) == (123, 7, 0.5)


def _scene(n: int = 64, seed: int = 0):
    """n Gaussians in front of a 48x48 camera, every one visible, as trainable parameters."""
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterDict({
        "means": torch.rand(n, 3, generator=g) * torch.tensor([0.6, 0.6, 0.2]) - torch.tensor([0.3, 0.3, 0.1]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.full((n, 3), 0.03).log(),  # above grow_scale3d below: visible Gaussians split
        "opacities": torch.zeros(n),  # sigmoid 0.5
        "colors": torch.rand(n, 3, generator=g),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    viewmat = torch.eye(4)
    viewmat[2, 3] = 2.0
    K = torch.tensor([[60.0, 0.0, 24.0], [0.0, 60.0, 24.0], [0.0, 0.0, 1.0]])
    return params, optimizers, viewmat, K


def _train_step(strategy, params, optimizers, state, step, viewmat, K):
    out = rasterize(params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
                    params["colors"], viewmat, K, 48, 48, backend="torch")
    strategy.step_pre_backward(params, optimizers, state, step, out.info)
    (out.image.sum() + out.alpha.sum()).backward()
    for opt in optimizers.values():
        opt.step()
    strategy.step_post_backward(params, optimizers, state, step, out.info, packed=False)
    for opt in optimizers.values():
        opt.zero_grad()


def _strategy(cls, **kw):
    # Refine at every step from step 1; any visible Gaussian with a gradient grows (splits: scale 0.03
    # > grow_scale3d); nothing is pruned by size before reset_every.
    return cls(refine_start_iter=0, refine_every=1, reset_every=10_000, grow_grad2d=1e-12, grow_scale3d=0.01,
               verbose=False, **kw)


def test_growth_stops_at_the_cap():
    params, optimizers, viewmat, K = _scene(64)
    strategy = _strategy(CappedDefaultStrategy, cap_max=80)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)

    _train_step(strategy, params, optimizers, state, 1, viewmat, K)
    n1 = len(params["means"])
    assert n1 >= 80, f"below the cap the strategy grows as gsplat's does: 64 -> {n1}"

    # At the cap: no growth, while pruning still runs.
    with torch.no_grad():
        params["opacities"][:5] = -12.0  # opacity 6e-6 < prune_opa
    _train_step(strategy, params, optimizers, state, 2, viewmat, K)
    assert len(params["means"]) == n1 - 5, "at the cap nothing may grow, and transparent Gaussians are pruned"
    for step in (3, 4, 5):
        _train_step(strategy, params, optimizers, state, step, viewmat, K)
        assert len(params["means"]) == n1 - 5, f"step {step}: the cap must hold"
    assert all(len(p) == n1 - 5 for p in params.values())
    assert all(opt.param_groups[0]["params"][0] is params[k] for k, opt in optimizers.items())
    assert state["grad2d"].shape == (n1 - 5,)
    assert strategy.grow_grad2d == 1e-12, "the strategy's own thresholds are left as they were"

    # The control: the same step without the cap does grow, so the cap is what stopped it above.
    uncapped = _strategy(DefaultStrategy)
    _train_step(uncapped, params, optimizers, state, 6, viewmat, K)
    assert len(params["means"]) > n1 - 5
