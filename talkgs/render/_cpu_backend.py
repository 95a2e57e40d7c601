"""The rasterizer on compiled CPU kernels (``talkgs/csrc/rasterize.cpp``): the twin of ``_torch_backend``.

Same stages, same conventions, same outputs: the projection, the SH colours and the compositing are autograd
functions around the C++ forward and backward kernels, the tile binning has no gradient. float32 only; a camera
that needs gradients goes to the PyTorch projection and SH (the kernels hold the camera fixed).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from talkgs.render._torch_backend import (
    ALPHA_MIN,
    TILE,
    Projection,
    TileBins,
    _features,
    _project,
    _sh_towards_camera,
    _strategy_info,
)
from talkgs.utils.cpu_ext import load_cpu_ext


def cpu_kernels() -> ModuleType | None:
    """The compiled rasterizer module (built on first use), or None when it cannot be built here."""
    return load_cpu_ext("rasterize")


class _ProjectCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmat, K, width, height, near_plane, far_plane, ext):
        means2d, conics, depths, radii, extents = ext.project_forward(
            means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.detach().contiguous(),
            viewmat.contiguous(), K.contiguous(), width, height, near_plane, far_plane)
        ctx.save_for_backward(means, quats, scales, viewmat, K, radii)
        ctx.size, ctx.ext = (width, height), ext
        ctx.mark_non_differentiable(radii, extents)
        return means2d, conics, depths, radii, extents

    @staticmethod
    @once_differentiable
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii, _v_extents):
        means, quats, scales, viewmat, K, radii = ctx.saved_tensors
        v_means, v_quats, v_scales = ctx.ext.project_backward(
            means.contiguous(), quats.contiguous(), scales.contiguous(), viewmat.contiguous(), K.contiguous(),
            *ctx.size, radii, v_means2d.contiguous(), v_conics.contiguous(), v_depths.contiguous())
        return v_means, v_quats, v_scales, None, None, None, None, None, None, None, None


class _ShCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, coeffs, viewmat, degree, ext):
        ctx.save_for_backward(means, coeffs, viewmat)
        ctx.degree, ctx.ext = degree, ext
        return ext.sh_forward(means.contiguous(), coeffs.contiguous(), viewmat.contiguous(), degree)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_rgb):
        means, coeffs, viewmat = ctx.saved_tensors
        v_means, v_coeffs = ctx.ext.sh_backward(means.contiguous(), coeffs.contiguous(), viewmat.contiguous(),
                                                ctx.degree, v_rgb.contiguous())
        return v_means, v_coeffs, None, None, None


class _CompositeCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, background, radii, bins: TileBins, width, height, ext):
        args = (means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(), radii)
        out, alpha = ext.composite_forward(*args, background.contiguous(), bins.ids, bins.offsets, bins.counts,
                                           width, height)
        ctx.save_for_backward(*args, out, alpha)
        ctx.bins, ctx.size, ctx.ext = bins, (width, height), ext
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, v_out, v_alpha):
        means2d, conics, colors, opacities, radii, out, alpha = ctx.saved_tensors
        bins, c = ctx.bins, colors.shape[1]
        rows = ctx.ext.composite_backward(means2d, conics, colors, opacities, radii, bins.ids, bins.offsets,
                                          bins.counts, *ctx.size, out, alpha, v_out.contiguous(), v_alpha.contiguous())
        grads = torch.zeros(means2d.shape[0], rows.shape[1], dtype=rows.dtype)
        grads.index_add_(0, bins.ids, rows)  # a Gaussian's rows, one per tile it touches
        v_bg = ((1.0 - alpha) * v_out).sum((0, 1))
        v_opacities = grads[:, 5] / opacities.clamp_min(ALPHA_MIN)
        return grads[:, :2], grads[:, 2:5], grads[:, 6:6 + c], v_opacities, v_bg, None, None, None, None, None


def rasterize_cpu(ext: ModuleType, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                  viewmat: Tensor, K: Tensor, width: int, height: int, background: Tensor, sh_degree: int | None,
                  near_plane: float, far_plane: float) -> tuple[Tensor, Tensor, Tensor, dict]:
    """``rasterize_torch`` (same arguments and shapes, float32 CPU tensors) on the compiled kernels ``ext``:
    image [H, W, 3], alpha [H, W, 1], accumulated depth [H, W, 1] and the strategy info."""
    if viewmat.requires_grad or K.requires_grad:
        proj = _project(means, quats, scales, opacities, viewmat, K, width, height, near_plane, far_plane)
    else:
        proj = Projection(*_ProjectCpu.apply(means, quats, scales, opacities, viewmat, K, width, height,
                                             near_plane, far_plane, ext))
    means2d = proj.means2d[None]  # [1, N, 2]; the strategy reads its .grad
    # SH colours by the kernel, which holds the camera fixed; a camera that needs gradients takes the twin's.
    sh = (lambda m, c, v, d: _ShCpu.apply(m, c, v, d, ext)) if not viewmat.requires_grad else _sh_towards_camera
    feats, bg = _features(means, colors, viewmat, sh_degree, proj.depths, background, sh)
    ids, offsets, counts = ext.bin_tiles(proj.means2d.detach(), proj.conics.detach(), proj.depths.detach(),
                                         proj.radii, proj.extents, width, height)
    bins = TileBins(ids, offsets, counts, -(-width // TILE), -(-height // TILE))
    out, alpha = _CompositeCpu.apply(means2d[0], proj.conics, feats, opacities, bg, proj.radii, bins, width, height,
                                     ext)
    info = _strategy_info(means2d, proj, width, height)
    return out[..., :3], alpha, out[..., 3:], info
