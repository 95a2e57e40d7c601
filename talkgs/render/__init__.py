"""Rendering: differentiable Gaussian rasterization.

``rasterize`` renders 3D Gaussians into one camera with a pure-PyTorch backend (CPU or CUDA) or
gsplat's CUDA kernels; both follow gsplat's classic conventions, documented in
:mod:`talkgs.render.rasterizer`. Importing this package does not import gsplat.
"""

from talkgs.render.compositing import composite, torso_under
from talkgs.render.rasterizer import RenderOutput, has_gsplat_cuda, rasterize

__all__ = ["RenderOutput", "composite", "has_gsplat_cuda", "rasterize", "torso_under"]
