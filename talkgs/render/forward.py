"""The one forward pass of a talking head: audio and expression -> deformed Gaussians -> composited frames.

Training stages, ``talkgs eval``, ``talkgs render`` (new speech and held-out frames), the streaming
API, the viewer and ``tools/bench_render.py`` all draw frames through ``render_frames`` (or its two
halves, ``TalkingHead.deform`` and ``draw``, which it composes), so a frame is made the same way
everywhere:

1. ``TalkingHead.deform``: the audio nets embed each frame's audio window; the face field moves the
   face Gaussians by audio and expression, the mouth field moves the mouth-interior Gaussians by
   audio. It does not depend on the camera.
2. ``draw``: each branch is rasterized into its own layer on black (premultiplied colour and alpha),
   then composited: face over mouth over ``under`` (the torso layer over the background).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from talkgs.model.motion import MotionDeltas
from talkgs.model.talking_head import Deformation, TalkingHead
from talkgs.render.compositing import composite
from talkgs.render.rasterizer import RenderOutput, rasterize_batch


@dataclass
class FrameOutput:
    """B composited frames, their layers and the deformation that made them."""

    image: Tensor  # [B, H, W, 3] face over mouth over under
    face: list[RenderOutput]  # B face layers (image [H, W, 3] premultiplied, alpha, depth, info)
    mouth: list[RenderOutput] | None  # B mouth layers; None when the mouth branch is not drawn
    deformation: Deformation

    @property
    def face_deltas(self) -> MotionDeltas | None:  # offsets [B, N, ...]
        return self.deformation.face_deltas

    @property
    def mouth_deltas(self) -> MotionDeltas | None:  # d_means [B, M, 3]
        return self.deformation.mouth_deltas


def _blank(under: Tensor) -> RenderOutput:
    """An empty layer the size of ``under`` [H, W, 3]: nothing drawn, fully transparent."""
    clear = torch.zeros_like(under[..., :1])
    return RenderOutput(image=torch.zeros_like(under), alpha=clear, depth=clear.clone(), info={})


def _check(deformation: Deformation, viewmats: Tensor, Ks: Tensor, under: Tensor) -> int:
    b = deformation.num_frames
    if viewmats.shape != (b, 4, 4):
        raise ValueError(f"viewmats must be [B, 4, 4] with B = {b} frames, got {tuple(viewmats.shape)}")
    if Ks.shape != (b, 3, 3) and Ks.shape != (3, 3):
        raise ValueError(f"Ks must be [B, 3, 3] or [3, 3] with B = {b}, got {tuple(Ks.shape)}")
    if under.ndim != 4 or under.shape[0] != b or under.shape[3] != 3:
        raise ValueError(f"under must be [B, H, W, 3] with B = {b}, got {tuple(under.shape)}")
    return b


def draw(
    deformation: Deformation,  # B frames' Gaussians (``TalkingHead.deform``)
    viewmats: Tensor,  # [B, 4, 4] world-to-camera (OpenCV)
    Ks: Tensor,  # [B, 3, 3] or [3, 3] intrinsics at the output size
    under: Tensor,  # [B, H, W, 3] what lies under the head
    face: bool = True,
    mouth: bool = True,
    sh_degree: dict[str, int | None] | None = None,
    backend: str = "auto",
) -> FrameOutput:
    """Rasterize each branch of B frames into its own layer and composite them over ``under``.

    Args:
        face, mouth: draw that branch; a face that is not drawn is an empty layer (the mouth and
            ``under`` show through), a mouth that is not drawn is no layer at all.
        sh_degree: SH bands (minus one) per branch, e.g. {"face": 1} during a warm-up; a branch not
            named shows all the bands it has.
        backend: the rasterizer (``talkgs.render.rasterize``).

    Returns:
        ``FrameOutput`` with image [B, H, W, 3] and the per-frame layers.
    """
    b = _check(deformation, viewmats, Ks, under)
    h, w = int(under.shape[1]), int(under.shape[2])
    degrees = sh_degree or {}
    Ks = Ks.expand(b, 3, 3) if Ks.ndim == 2 else Ks

    def layers(g: dict[str, Tensor], branch: str) -> list[RenderOutput]:
        return rasterize_batch(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks, w, h,
                               backend=backend, sh_degree=degrees.get(branch))

    # Every frame has its own Gaussians; gsplat draws the B frames of a branch in one call.
    faces = layers(deformation.face, "face") if face else [_blank(under[i]) for i in range(b)]
    mouths = layers(deformation.mouth, "mouth") if mouth else None
    images = [composite(faces[i], mouths[i] if mouth else None, under[i]) for i in range(b)]
    return FrameOutput(image=torch.stack(images), face=faces, mouth=mouths, deformation=deformation)


def render_frames(
    head: TalkingHead,
    features: Tensor | None,  # [F, 2, D] audio features of the sequence; None: no motion
    index: Tensor,  # [B] frames of ``features``
    expression: Tensor,  # [B, E] the frames' expression channels (``HeadConfig.expression``)
    viewmats: Tensor,  # [B, 4, 4] world-to-camera
    Ks: Tensor,  # [B, 3, 3] or [3, 3]
    under: Tensor,  # [B, H, W, 3]
    face: bool = True,
    mouth: bool = True,
    face_motion: bool = True,
    mouth_motion: bool = True,
    sh_degree: dict[str, int | None] | None = None,
    backend: str = "auto",
) -> FrameOutput:
    """B frames of a talking head: ``TalkingHead.deform`` then ``draw`` (module docstring).

    ``face_motion`` / ``mouth_motion`` False draw that branch's fitted Gaussians without its motion
    field (what the static and mouth stages train, and evaluation's no-motion baseline). Gradients
    flow to every parameter that requires them.
    """
    deformation = head.deform(features, index, expression, face_motion=face_motion and face,
                              mouth_motion=mouth_motion and mouth)
    return draw(deformation, viewmats, Ks, under, face=face, mouth=mouth, sh_degree=sh_degree, backend=backend)
