"""Layering of the separately rendered face and mouth branches over the background and torso (TalkingGaussian).

The mouth interior (teeth, tongue) is its own set of Gaussians, rendered into its own layer and placed under the
face layer. Kept apart, the face Gaussians never have to explain the inside of the mouth: when the lips open they
move aside and reveal the mouth layer instead of blending into it, so the teeth stay sharp and the face branch
never smears a blur over the inside of the mouth. The mouth branch, moved by audio alone, keeps the teeth rigid
while the jaw talks.
"""

from __future__ import annotations

from torch import Tensor

from talkgs.render.rasterizer import RenderOutput


def _check_layer(name: str, layer: RenderOutput, under: Tensor) -> None:
    h, w = under.shape[:2]
    if tuple(layer.image.shape) != (h, w, 3) or tuple(layer.alpha.shape) != (h, w, 1):
        raise ValueError(f"{name} must have image [{h}, {w}, 3] and alpha [{h}, {w}, 1] like under, got "
                         f"{tuple(layer.image.shape)} and {tuple(layer.alpha.shape)}")


def composite(
    face: RenderOutput,  # image [H, W, 3] premultiplied, alpha [H, W, 1]
    mouth: RenderOutput | None,  # same shapes; None: no mouth layer
    under: Tensor,  # [H, W, 3] background and torso
) -> Tensor:  # [H, W, 3]
    """The face layer over the mouth layer over ``under``, differentiable w.r.t. all three.

    Both layers must be rendered on a black background (the rasterizer's default), so their images are colours
    premultiplied by their alpha: ``mouth_over = mouth.image + (1 - mouth.alpha) * under``, then
    ``face.image + (1 - face.alpha) * mouth_over``. Without a mouth layer the face goes directly over ``under``.

    Raises:
        ValueError: shapes that are not [H, W, 3] images and [H, W, 1] alphas of one size.
    """
    if under.ndim != 3 or under.shape[2] != 3:
        raise ValueError(f"under must have shape [H, W, 3], got {tuple(under.shape)}")
    _check_layer("face", face, under)
    below = under
    if mouth is not None:
        _check_layer("mouth", mouth, under)
        below = mouth.image + (1 - mouth.alpha) * under
    return face.image + (1 - face.alpha) * below
