"""Multi-resolution hash-grid encodings (Instant-NGP style) in 2D, and the tri-plane encoding built from them.

TalkingGaussian-style deformation fields query features of 3D points through three 2D hash grids over the xy, yz
and xz planes: 2D tables collide far less than a 3D one of the same size.

Each level ``l`` of a :class:`HashGrid2D` splits [0, 1]^2 into ``R_l x R_l`` cells, ``R_l = floor(base * s^l)``
with the per-level scale ``s`` growing the resolution geometrically from ``base_resolution`` to ``max_resolution``.
A point's feature at a level is the bilinear interpolation of the embeddings at its cell's 4 corners. A corner's
row in the level's table of ``T`` rows is ``ix + iy (R_l + 1)`` when all ``(R_l + 1)^2`` vertices fit (dense) and
the spatial hash ``(ix * 1 xor iy * 2654435761) mod T`` otherwise.

Three implementations compute this, chosen by ``impl``: the PyTorch reference :func:`hashgrid2d_torch` ("torch"),
the compiled C++/OpenMP CPU kernel ``talkgs/csrc/hashgrid.cpp`` ("cpu", built on first use by
:func:`talkgs.utils.cpu_ext.load_cpu_ext`, differentiable w.r.t. the embeddings and the points) and the CUDA
kernels in ``cuda_ext/hashgrid`` ("cuda", embeddings gradient only). The kernels use the same indexing and weights
and are tested against the reference; "auto" picks a kernel when it applies and builds, else the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkgs.model._ext import load_hashgrid_ext
from talkgs.utils.cpu_ext import load_cpu_ext

HASH_PRIME_Y = 2654435761  # the x prime is 1
IMPLS = ("auto", "torch", "cuda", "cpu")
# (dx, dy) of the 4 cell corners, in the order the bilinear weights below and the CUDA kernel use.
_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


@dataclass
class HashGridConfig:
    """Sizes of the tri-plane hash-grid encoding; the defaults suit a head and train at CPU speed."""

    levels: int = 12  # L, resolution levels per plane
    features: int = 2  # F, features per level; the encoding has 3 * L * F channels
    log2_table: int = 14  # log2 of T, rows of each level's table; levels with more vertices than T are hashed
    base_resolution: int = 16  # cells per side of the coarsest level
    max_resolution: int = 512  # cells per side of the finest level
    bound: float = 0.3  # metres; the cube [-bound, bound]^3 around the head origin is encoded, outside is clamped

    def __post_init__(self) -> None:
        if self.levels < 1 or self.features < 1:
            raise ValueError(f"levels and features must be >= 1, got {self.levels} and {self.features}")
        if not 1 <= self.log2_table <= 31:  # the CUDA kernel indexes tables with uint32
            raise ValueError(f"log2_table must be in [1, 31], got {self.log2_table}")
        if not 1 <= self.base_resolution <= self.max_resolution:
            raise ValueError(
                f"need 1 <= base_resolution <= max_resolution, got {self.base_resolution} and {self.max_resolution}"
            )
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0, got {self.bound}")


def level_resolutions(levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Cells per side of each level: a geometric series from ``base_resolution`` to ``max_resolution``."""
    scale = (max_resolution / base_resolution) ** (1.0 / (levels - 1)) if levels > 1 else 1.0
    # The epsilon keeps float error from flooring base * scale^(L-1) to max_resolution - 1.
    return [math.floor(base_resolution * scale**level + 1e-6) for level in range(levels)]


def hashgrid2d_torch(
    xy: Tensor,  # [N, 2] in [0, 1], clamped
    embeddings: Tensor,  # [L, T, F]
    resolutions: Tensor,  # [L] integer cells per side
) -> Tensor:  # [N, L * F]
    """The 2D multires hash-grid lookup in PyTorch, vectorised over points and levels; autograd gives the backward
    for both the embeddings and ``xy`` (through the bilinear weights)."""
    n = xy.shape[0]
    levels, table_size, feats = embeddings.shape
    res = resolutions.to(device=xy.device, dtype=torch.long)[None, :, None]  # [1, L, 1]
    pos = xy.clamp(0.0, 1.0)[:, None, :] * res.to(xy.dtype)  # [N, L, 2]
    cell = torch.minimum(pos.detach().floor().long(), res - 1)  # [N, L, 2]; x = 1 falls in the last cell
    frac = pos - cell.to(xy.dtype)  # [N, L, 2]

    corner = cell[:, :, None, :] + torch.tensor(_CORNERS, device=xy.device)  # [N, L, 4, 2]
    cx, cy = corner[..., 0], corner[..., 1]  # [N, L, 4]
    dense = (res + 1) ** 2 <= table_size  # [1, L, 1]
    row = torch.where(dense, cx + cy * (res + 1), (cx ^ (cy * HASH_PRIME_Y)) & (table_size - 1))
    row = row + torch.arange(levels, device=xy.device)[None, :, None] * table_size  # rows of the flattened tables

    fx, fy = frac[..., 0], frac[..., 1]  # [N, L]
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)  # [N, L, 4]
    values = F.embedding(row, embeddings.reshape(levels * table_size, feats))  # [N, L, 4, F]
    return (weights[..., None] * values).sum(dim=2).reshape(n, levels * feats)


class _HashGrid2DCuda(torch.autograd.Function):
    """The CUDA kernels as an autograd op, differentiable w.r.t. the embeddings only (not ``xy``)."""

    @staticmethod
    def forward(ctx, xy: Tensor, embeddings: Tensor, resolutions: Tensor, ext) -> Tensor:
        ctx.save_for_backward(xy, resolutions)
        ctx.ext = ext
        ctx.table_size, ctx.feats = embeddings.shape[1], embeddings.shape[2]
        return ext.forward(xy, embeddings, resolutions)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        xy, resolutions = ctx.saved_tensors
        grad_emb = None
        if ctx.needs_input_grad[1]:
            grad_emb = ctx.ext.backward(grad_out.float(), xy, resolutions, ctx.table_size, ctx.feats)
        return None, grad_emb, None, None


class _HashGrid2DCpu(torch.autograd.Function):
    """The compiled CPU kernels (``talkgs/csrc/hashgrid.cpp``) as an autograd op, differentiable w.r.t. the
    embeddings and ``xy``, with the gradients autograd gives :func:`hashgrid2d_torch`."""

    @staticmethod
    def forward(ctx, xy: Tensor, embeddings: Tensor, resolutions: Tensor, ext) -> Tensor:
        ctx.save_for_backward(xy, embeddings, resolutions)  # the xy gradient reads the corner embeddings
        ctx.ext = ext
        return ext.forward(xy, embeddings, resolutions)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        need_xy, need_emb = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_xy or need_emb):
            return None, None, None, None
        xy, embeddings, resolutions = ctx.saved_tensors
        grad_emb, grad_xy = ctx.ext.backward(grad_out.float().contiguous(), xy, embeddings, resolutions, need_xy)
        return (grad_xy if need_xy else None), (grad_emb if need_emb else None), None, None


class HashGrid2D(nn.Module):
    """Multi-resolution 2D hash-grid encoding: points in [0, 1]^2 (clamped) -> [N, levels * features].

    ``impl``: "torch" (the PyTorch reference), "cpu" (the compiled CPU kernel; CPU inputs only), "cuda" (the CUDA
    kernels; CUDA inputs, no gradient w.r.t. ``xy``) or "auto" (the CUDA kernels for CUDA inputs that need no
    gradient, the CPU kernel for CPU inputs, the reference otherwise). A kernel that cannot be built (no compiler,
    a failed build, ``TALKGS_CPU_KERNELS=0`` for the CPU one) leaves the reference running, after one warning line.
    """

    def __init__(
        self,
        levels: int = 12,
        features: int = 2,
        log2_table: int = 14,
        base_resolution: int = 16,
        max_resolution: int = 512,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        HashGridConfig(levels, features, log2_table, base_resolution, max_resolution)  # validates the sizes
        self.impl = impl
        self.table_size = 1 << log2_table
        self.out_dim = levels * features
        self.embeddings = nn.Parameter(torch.empty(levels, self.table_size, features).uniform_(-1e-4, 1e-4))
        res = level_resolutions(levels, base_resolution, max_resolution)
        # int32 for the kernel; a buffer so that it follows the module's device. Derived, so not saved.
        self.register_buffer("resolutions", torch.tensor(res, dtype=torch.int32), persistent=False)

    def forward(self, xy: Tensor) -> Tensor:  # [N, 2] -> [N, L * F]
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"xy must have shape [N, 2], got {tuple(xy.shape)}")
        if xy.dtype != torch.float32:
            raise ValueError(f"xy must be float32, got {xy.dtype}")
        ext = self._cuda_ext(xy)
        if ext is not None:
            return _HashGrid2DCuda.apply(xy.contiguous(), self.embeddings, self.resolutions, ext)
        ext = self._cpu_ext(xy)
        if ext is not None:
            return _HashGrid2DCpu.apply(xy.contiguous(), self.embeddings.contiguous(), self.resolutions, ext)
        return hashgrid2d_torch(xy, self.embeddings, self.resolutions)

    def _cpu_ext(self, xy: Tensor):
        """The compiled CPU module when this call should run the CPU kernel, else None."""
        on_cpu = not xy.is_cuda and self.embeddings.device.type == "cpu"
        if self.impl == "cpu":
            if not on_cpu:
                raise ValueError(f"impl='cpu' needs CPU inputs and embeddings, got xy on {xy.device}")
            if self.embeddings.dtype != torch.float32:
                raise ValueError(f"impl='cpu' needs float32 embeddings, got {self.embeddings.dtype}")
        elif self.impl != "auto" or not on_cpu or self.embeddings.dtype != torch.float32:
            return None
        return load_cpu_ext("hashgrid")  # built on the first call, cached; None falls back to the reference

    def _cuda_ext(self, xy: Tensor):
        """The extension module when this call should run the CUDA kernels, else None."""
        if self.impl in ("torch", "cpu"):
            return None
        if self.impl == "cuda":
            if not xy.is_cuda:
                raise ValueError(f"impl='cuda' needs CUDA inputs, got a tensor on {xy.device}")
            if xy.requires_grad:
                raise ValueError("impl='cuda' gives no gradient w.r.t. the inputs; use impl='torch' or 'auto'")
        elif not xy.is_cuda or xy.requires_grad:  # auto: the kernel neither runs on CPU nor differentiates xy
            return None
        return load_hashgrid_ext()


class TriPlaneHashEncoding(nn.Module):
    """Features of 3D points from 2D hash grids over their xy, yz and xz planes: [N, 3] -> [N, 3 * L * F].

    Points are mapped from the cube ``[-bound, bound]^3`` to ``[0, 1]^3``; those outside are clamped to its faces.
    ``impl``: "torch", "cpu", "cuda" or "auto", as for :class:`HashGrid2D`: "auto" runs the CUDA kernels when the
    input is on CUDA and needs no gradient, the compiled CPU kernel when it is on the CPU, each when its extension
    builds, and PyTorch otherwise.
    """

    PLANES = ((0, 1), (1, 2), (0, 2))  # xy, yz, xz

    def __init__(self, config: HashGridConfig | None = None, impl: str = "auto") -> None:
        super().__init__()
        self.config = config if config is not None else HashGridConfig()
        c = self.config
        self.grids = nn.ModuleList(
            HashGrid2D(c.levels, c.features, c.log2_table, c.base_resolution, c.max_resolution, impl=impl)
            for _ in self.PLANES
        )
        self.out_dim = 3 * c.levels * c.features

    def forward(self, points: Tensor) -> Tensor:  # [N, 3] -> [N, 3 * L * F]
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
        if points.dtype != torch.float32:
            raise ValueError(f"points must be float32, got {points.dtype}")
        bound = self.config.bound
        unit = ((points + bound) / (2 * bound)).clamp(0.0, 1.0)  # [N, 3]
        return torch.cat([grid(unit[:, list(axes)]) for grid, axes in zip(self.grids, self.PLANES)], dim=1)
