"""The fit checks itself: no stage ships a picture worse than the static head.

After every stage with motion, the local error check (``talkgs.model.local_check``, the one ``talkgs eval``
runs) compares each held-out frame as the stage renders it with the static head as the still stages left it
(their face Gaussians, kept when the first motion stage starts; no motion), and with its own Gaussians without
motion (what ``talkgs eval`` compares with); the larger excess counts. The mouth code path is driven by each
frame's own tracked code here: where speech opens the jaw differently from the truth, the chin differs by design
(the lip-sync measures judge that), and mending it would only blur the jaw. A patch of the head outside the lips
that the stage made worse by more than the threshold is a blotch: a colour the motion stage gave a Gaussian, or a
Gaussian the motion reveals whose colour nothing supervised.

The fit mends it where it lies. The face Gaussians that paint the blotch are found by the gradient of the
blotch's error with respect to their colours and opacities (how much each contributes to those pixels); first
they get back the static head's colours and opacities; if that does not shrink the blotch, those that the static
head hardly shows are hidden (opacity to ``SelfCheckConfig.hidden_opacity``). A mend that does not shrink the
blotches is undone. What was done, and whether the check then
passes, goes into fit_report.json (``self_check``); a fit that still fails says so in one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from talkgs.model.gaussians import GaussianModel
from talkgs.model.local_check import local_excess_map, local_patch_px
from talkgs.train.config import SelfCheckConfig
from talkgs.train.context import FitContext
from talkgs.utils import log

#: The face Gaussians' parameters that the static head's snapshot keeps (what later stages may change).
APPEARANCE = ("sh0", "shN", "opacities")


def appearance(face: GaussianModel) -> dict[str, torch.Tensor]:
    """A copy of the face Gaussians' colours and opacities: the static head to compare later stages with."""
    return {k: face.params[k].detach().clone() for k in APPEARANCE}


@contextlib.contextmanager
def _swapped(face: GaussianModel, values: dict[str, torch.Tensor] | None) -> Iterator[None]:
    if values is None:
        yield
        return
    kept = {k: face.params[k].data for k in values}
    try:
        for k, v in values.items():
            face.params[k].data = v
        yield
    finally:
        for k, v in kept.items():
            face.params[k].data = v


def _excess_maps(stage, ctx: FitContext, static: dict[str, torch.Tensor] | None,
                 frames: np.ndarray) -> list[torch.Tensor]:
    """[H, W] local excess of the stage's render per frame of ``frames``: over the static head's render, and over
    its own Gaussians' without motion (``talkgs eval``'s baseline), whichever is larger."""
    maps = []
    with torch.no_grad():
        for i in frames:
            batch = ctx.batch(int(i))
            moving = stage.render(batch, tracked=True).image[0].clamp(0, 1)
            still = stage.render(batch, motion=False).image[0].clamp(0, 1)
            excess = local_excess_map(moving, still, batch.image, batch.labels)
            if static is not None:
                with _swapped(stage.head.face, static):
                    before = stage.render(batch, motion=False).image[0].clamp(0, 1)
                excess = torch.maximum(excess, local_excess_map(moving, before, batch.image, batch.labels))
            maps.append(excess)
    return maps


def _contributions(stage, ctx: FitContext, frame: int, region: torch.Tensor, motion: bool) -> torch.Tensor:
    """[N] how much each face Gaussian adds to the error of ``region`` [H, W] in the stage's render of ``frame``
    (with or without motion): the gradient magnitude of that error with respect to its colour and opacity."""
    face = stage.head.face
    params = [face.params["sh0"], face.params["opacities"]]
    kept = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        batch = ctx.batch(frame)
        with torch.enable_grad():
            image = stage.render(batch, motion=motion, tracked=True).image[0]
            err = ((image - batch.image).abs().mean(-1) * region).sum()
            g_sh0, g_opacity = torch.autograd.grad(err, params, allow_unused=True)
    finally:
        for p, k in zip(params, kept):
            p.requires_grad_(k)
    score = torch.zeros(face.num_gaussians, device=face.device)
    if g_sh0 is not None:
        score += g_sh0.abs().flatten(1).sum(1)
    if g_opacity is not None:
        score += g_opacity.abs().flatten()
    return score


def _total(maps: list[torch.Tensor], threshold: float) -> float:
    """How far the frames' worst patches lie above the threshold, summed."""
    return sum(max(0.0, float(m.max()) - threshold) for m in maps)


def _culprits(score: torch.Tensor, share: float) -> torch.Tensor:
    """Indices of the fewest Gaussians whose ``score`` [N] adds up to ``share`` of the total."""
    order = score.argsort(descending=True)
    total = float(score.sum())
    if total <= 0:
        return order[:0]
    count = int((score[order].cumsum(0) < share * total).sum()) + 1
    return order[:count]


def check_and_mend(stage, ctx: FitContext, static: dict[str, torch.Tensor] | None,
                   cfg: SelfCheckConfig) -> dict:
    """Run the local check on the held-out frames after ``stage``; mend what fails (module docstring).

    ``static``: the static head's face appearance (``appearance``), None to compare with the stage's own
    Gaussians without motion (when the snapshot is missing, e.g. a run resumed from an older checkpoint, or the
    face Gaussians changed in number since). Returns the report of what was found and done."""
    face = stage.head.face
    if static is not None and static["opacities"].shape[0] != face.num_gaussians:
        static = None
    frames = ctx.test_indices
    k = local_patch_px(ctx.resolution)
    grow = torch.nn.MaxPool2d(k, stride=1, padding=k // 2)
    maps = _excess_maps(stage, ctx, static, frames)
    worst = [float(m.max()) for m in maps]
    report = {"frames": len(frames), "threshold": cfg.threshold, "baseline": "static" if static else "no_motion",
              "over_before": int(sum(w > cfg.threshold for w in worst)), "worst_before": round(max(worst), 4),
              "restored": 0, "hidden": 0, "rounds": 0}
    restored: set[int] = set()
    hidden: set[int] = set()
    hide = float(np.log(cfg.hidden_opacity / (1 - cfg.hidden_opacity)))  # the opacity's logit
    for _ in range(cfg.rounds):
        over = [(int(i), m) for i, m in zip(frames, maps) if float(m.max()) > cfg.threshold]
        if not over:
            break
        report["rounds"] += 1
        moving_score = torch.zeros(face.num_gaussians, device=face.device)
        still_score = torch.zeros_like(moving_score)
        for i, m in over:
            region = grow((m > cfg.threshold).float()[None, None])[0, 0]
            moving_score += _contributions(stage, ctx, i, region, motion=True)
            with _swapped(face, static):
                still_score += _contributions(stage, ctx, i, region, motion=False)
        culprits = _culprits(moving_score, cfg.share)
        fresh = torch.tensor([int(g) for g in culprits if int(g) not in restored], dtype=torch.long,
                             device=face.device) if static is not None else culprits[:0]
        # Those the static head hardly shows: a Gaussian the motion reveals, whose colour nothing supervised.
        quiet = culprits[still_score[culprits] < cfg.static_share * moving_score[culprits]]
        # Each mend is kept only if the blotches shrink; the first that helps wins.
        for action, idx in (("restore", fresh), ("hide", quiet)):
            if not len(idx):
                continue
            saved = appearance(face)
            with torch.no_grad():
                if action == "restore":
                    for name in APPEARANCE:
                        face.params[name].data[idx] = static[name][idx]
                else:
                    face.params["opacities"].data[idx] = hide
            mended = _excess_maps(stage, ctx, static, frames)
            if _total(mended, cfg.threshold) < _total(maps, cfg.threshold):
                maps = mended
                (restored if action == "restore" else hidden).update(int(g) for g in idx)
                break
            with torch.no_grad():
                for name, v in saved.items():
                    face.params[name].data.copy_(v)
        else:
            break  # nothing helped
    worst = [float(m.max()) for m in maps]
    report.update({"restored": len(restored), "hidden": len(hidden),
                   "over_after": int(sum(w > cfg.threshold for w in worst)), "worst_after": round(max(worst), 4)})
    report["passed"] = report["over_after"] == 0
    if report["over_before"]:
        done = f"gave {len(restored)} Gaussians back their static colours and hid {len(hidden)}"
        log.info(f"self-check, stage {stage.name}: {report['over_before']} of {len(frames)} held-out frames had a "
                 f"blotch (local error up to {report['worst_before']:.3f} > {cfg.threshold}); {done}: "
                 f"{report['over_after']} left (worst {report['worst_after']:.3f})")
    return report
