"""Rendering: differentiable Gaussian rasterization and the talking head's one forward pass.

``rasterize`` renders 3D Gaussians into one camera (``rasterize_batch``: B frames, one gsplat call) with a
pure-PyTorch backend (CPU or CUDA), compiled CPU kernels (C++/OpenMP, built on first use) or gsplat's CUDA kernels;
all follow gsplat's classic conventions, documented in :mod:`talkgs.render.rasterizer`. ``render_frames``
(:mod:`talkgs.render.forward`) deforms, rasterizes and composites B frames of a talking head: training,
evaluation, ``talkgs render`` and the viewer all draw through it. Importing this package does not import gsplat.
"""

from talkgs.render.compositing import composite
from talkgs.render.forward import FrameOutput, draw, render_frames
from talkgs.render.rasterizer import RenderOutput, has_gsplat_cuda, rasterize, rasterize_batch

__all__ = ["FrameOutput", "RenderOutput", "composite", "draw", "has_gsplat_cuda", "rasterize", "rasterize_batch",
           "render_frames"]
