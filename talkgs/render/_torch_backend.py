"""Pure-PyTorch Gaussian rasterizer with gsplat's ``rasterize_mode="classic"`` conventions.

Three stages, each vectorised over Gaussians or pixels:

1. ``_project``: world -> camera -> pixels for every Gaussian (plain autograd, O(N)).
2. ``_bin_tiles``: the 16x16 tiles each visible Gaussian can change, as one list per tile sorted
   front to back (no gradients: it only decides what is evaluated, not the values).
3. ``_CompositeTiles``: alpha compositing inside each tile, a custom autograd function.

The compositing walks each tile's depth-sorted list in blocks of ``_BLOCK`` Gaussians, many tiles at a
time, carrying the per-pixel transmittance from block to block. A tile leaves the loop once all of its
pixels are saturated, the vectorised version of gsplat's early exit. Nothing per pixel and Gaussian
is kept for the backward pass: it replays the same blocks and rebuilds alpha, which bounds memory by
one block's working set (``_BLOCK_ELEMS``), not by the scene.

Backward: with g = dL/d(output) at a pixel (the outputs include the weight sum, i.e. alpha),
v_w_k = g . c_k and w_k = a_k T_k,

    dL/da_j = T_j v_w_j - (sum_{k>j} w_k v_w_k + T_final g . bg) / (1 - a_j),

and the bracket equals g . out - sum_{k<=j} w_k v_w_k. So the backward pass visits the Gaussians in
the forward order with a running prefix sum, instead of gsplat's back-to-front pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

TILE = 16
EPS2D = 0.3  # px^2 added to the projected covariance (classic 3DGS low-pass filter)
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
ALPHA_MAX = 0.999  # gsplat 1.5's clamp on a single Gaussian's alpha
T_MIN = 1e-4  # a pixel stops before a Gaussian would take its transmittance to this or below
EXTENT_MAX = 3.33  # sigmas; opacity * exp(-3.33^2 / 2) < 1/255 for any opacity <= 1

# Depth block: Gaussians of one tile evaluated together. Small enough that a saturated tile stops
# soon after saturating, large enough to amortise the Python loop.
_BLOCK = 32
# Pixel x Gaussian elements per working tensor (float32: 1 MB), and candidate pairs per binning
# group: a few dozen such tensors are alive at once, so this bounds the working memory and keeps it
# in the CPU's caches.
_BLOCK_ELEMS = 1 << 18
_LOG2E = 1.4426950408889634

# Real spherical harmonics, degrees 0-2 (the constants of the reference 3DGS code and gsplat).
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)


@dataclass
class Projection:
    """Per-Gaussian screen-space quantities; entries of culled Gaussians are 0."""

    means2d: Tensor  # [N, 2] pixel coordinates, 0 at the image's top-left corner
    conics: Tensor  # [N, 3] inverse 2D covariance (a, b, c): sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2
    depths: Tensor  # [N] camera z
    radii: Tensor  # [N, 2] int32 half extent of the screen box in pixels, 0 when culled
    extents: Tensor  # [N] cut-off in sigmas: alpha < 1/255 where d^T conic d > extents^2


def _quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] (w, x, y, z), any norm -> [N, 3, 3] rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def _project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
) -> Projection:
    """EWA projection of 3D Gaussians to pixel space, gsplat's ``persp_proj`` conventions."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t  # [N, 3] camera coordinates
    x, y, z_raw = p.unbind(-1)
    valid = (z_raw >= near_plane) & (z_raw <= far_plane)
    # Culled Gaussians get a harmless depth so that no inf/nan reaches the (masked) gradients.
    z = torch.where(valid, z_raw, torch.ones_like(z_raw))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    # Like gsplat, the Jacobian is evaluated with x/z and y/z clamped to 1.3 times the field of view:
    # far off-screen Gaussians would otherwise get huge, meaningless footprints.
    lim_x = 0.3 * 0.5 * width / fx
    lim_y = 0.3 * 0.5 * height / fy
    tx = z * torch.clamp(x / z, -(cx / fx + lim_x), (width - cx) / fx + lim_x)
    ty = z * torch.clamp(y / z, -(cy / fy + lim_y), (height - cy) / fy + lim_y)
    # Rows of J @ R with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    jw_x = (fx / z)[:, None] * R[0] - (fx * tx / (z * z))[:, None] * R[2]  # [N, 3]
    jw_y = (fy / z)[:, None] * R[1] - (fy * ty / (z * z))[:, None] * R[2]  # [N, 3]
    rs = _quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R_gauss @ diag(scales)
    u = torch.einsum("nk,nkj->nj", jw_x, rs)  # [N, 3]; cov2d = [u; v] [u; v]^T
    v = torch.einsum("nk,nkj->nj", jw_y, rs)  # [N, 3]
    cxx = (u * u).sum(-1) + EPS2D
    cxy = (u * v).sum(-1)
    cyy = (v * v).sum(-1) + EPS2D
    det = cxx * cyy - cxy * cxy
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy / det, -cxy / det, cxx / det], dim=-1)  # [N, 3]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [N, 2]

    with torch.no_grad():
        # Opacity-aware extent (gsplat 1.5, arXiv:2402.00525 B.2): beyond k sigmas with
        # opacity * exp(-k^2 / 2) = 1/255 no pixel can pass the alpha threshold, so the box (and the
        # tiles it touches) holds every pixel the Gaussian can change.
        o = opacities.detach()
        valid = valid & (o > ALPHA_MIN)
        k = torch.sqrt(2.0 * torch.log(torch.where(valid, o, torch.ones_like(o)) / ALPHA_MIN)).clamp(max=EXTENT_MAX)
        rx = torch.ceil(k * torch.sqrt(cxx.detach()))
        ry = torch.ceil(k * torch.sqrt(cyy.detach()))
        mx, my = means2d.detach().unbind(-1)
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid[:, None], torch.stack([rx, ry], -1), 0).to(torch.int32)  # [N, 2]
        extents = torch.where(valid, k, 0.0)

    keep = valid[:, None]
    return Projection(
        means2d=torch.where(keep, means2d, 0.0),
        conics=torch.where(keep, conics, 0.0),
        depths=torch.where(valid, z_raw, 0.0),
        radii=radii,
        extents=extents,
    )


def _eval_sh(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """RGB from SH coefficients [N, K, 3] seen along ``dirs`` [N, 3] (any length), degree 0-2.

    Returns [N, 3] = max(SH + 0.5, 0), gsplat's (and the reference 3DGS) activation.
    """
    rgb = _SH_C0 * coeffs[:, 0]
    if degree >= 1:
        x, y, z = (F.normalize(dirs, dim=-1)[:, i : i + 1] for i in range(3))
        rgb = rgb - _SH_C1 * y * coeffs[:, 1] + _SH_C1 * z * coeffs[:, 2] - _SH_C1 * x * coeffs[:, 3]
        if degree >= 2:
            rgb = (
                rgb
                + _SH_C2[0] * x * y * coeffs[:, 4]
                + _SH_C2[1] * y * z * coeffs[:, 5]
                + _SH_C2[2] * (2 * z * z - x * x - y * y) * coeffs[:, 6]
                + _SH_C2[3] * x * z * coeffs[:, 7]
                + _SH_C2[4] * (x * x - y * y) * coeffs[:, 8]
            )
    return torch.clamp_min(rgb + 0.5, 0.0)


@dataclass
class TileBins:
    """Visible Gaussians per tile, front to back; tile ``t`` owns ``ids[offsets[t]:offsets[t] + counts[t]]``."""

    ids: Tensor  # [n_pairs] int64 Gaussian indices
    offsets: Tensor  # [n_tiles] int64
    counts: Tensor  # [n_tiles] int64
    tiles_x: int
    tiles_y: int


def _bin_tiles(proj: Projection, width: int, height: int) -> TileBins:
    """The tiles each visible Gaussian can change, one front-to-back list per tile.

    Candidates are the tiles its box touches (gsplat's ``isect_tiles``); of those, a tile is kept
    only if the Gaussian's cut-off ellipse d^T conic d <= k^2 reaches one of its pixel centres. Every
    pixel outside the ellipse has alpha < 1/255, so dropping the other tiles (about a fifth for
    elongated Gaussians) changes nothing; k^2 is padded by 1% so round-off can only keep a tile.
    Candidates are made for groups of about ``_BLOCK_ELEMS`` so the temporaries stay small.
    """
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    device = proj.means2d.device
    vis = torch.nonzero(proj.radii[:, 0] > 0).squeeze(1)
    order = vis[torch.argsort(proj.depths.detach()[vis], stable=True)]  # visible Gaussians, front to back
    # Per visible Gaussian (front to back): mean, conic, padded cut-off k^2 ...
    shape = torch.cat([proj.means2d.detach(), proj.conics.detach(), 1.01 * proj.extents[:, None] ** 2], 1)[order]
    # ... and its box in tiles: first column and row, number of columns and rows.
    m = shape[:, :2] / TILE
    r = proj.radii[order].to(m.dtype) / TILE
    lo = torch.floor(m - r).clamp(min=0)
    hi = torch.ceil(m + r)
    x0 = lo[:, 0].clamp(max=tiles_x).long()
    y0 = lo[:, 1].clamp(max=tiles_y).long()
    nx = hi[:, 0].clamp(max=tiles_x).long() - x0
    ny = hi[:, 1].clamp(max=tiles_y).long() - y0
    n = (nx * ny).clamp(min=0)  # [V] candidate tiles per Gaussian
    box = torch.stack([x0, y0, nx, torch.cumsum(n, 0) - n], 1)  # [V, 4], the last: first candidate's index
    limits = torch.tensor(range(_BLOCK_ELEMS, int(n.sum()), _BLOCK_ELEMS), dtype=n.dtype, device=device)
    cuts = torch.searchsorted(torch.cumsum(n, 0), limits).tolist()
    ids, tiles = [], []
    for part in torch.tensor_split(torch.arange(len(order), device=device), cuts):
        if len(part) == 0:
            continue
        g = torch.repeat_interleave(n[part]) + part[0]  # [pairs] Gaussian (position in ``order``)
        gx0, gy0, gnx, first = box.index_select(0, g).unbind(1)
        k = torch.arange(len(g), device=device) + (int(box[part[0], 3]) - first)  # index in the Gaussian's box
        tx, ty = gx0 + k % gnx, gy0 + k // gnx
        keep = torch.nonzero(_ellipse_meets_tile(shape.index_select(0, g), tx, ty)).squeeze(1)
        ids.append(order.index_select(0, g.index_select(0, keep)))
        tiles.append((ty * tiles_x + tx).index_select(0, keep))
    ids = torch.cat(ids) if ids else order[:0]
    tile = torch.cat(tiles) if tiles else order[:0]
    # A stable sort by tile keeps the front-to-back order inside each tile (int32 sorts 3x faster).
    tile, perm = torch.sort(tile.to(torch.int32), stable=True)
    counts = torch.bincount(tile, minlength=tiles_x * tiles_y)
    return TileBins(ids.index_select(0, perm), torch.cumsum(counts, 0) - counts, counts, tiles_x, tiles_y)


def _ellipse_meets_tile(shape: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Whether min of q(p) = (p - mean)^T conic (p - mean) over the tile's pixel centres is <= k^2.

    ``shape`` [P, 6] holds mean x, y, conic a, b, c and k^2. q is convex, so unless the mean lies
    inside the rectangle of pixel centres the minimum is on one of its four edges, where it is a 1D
    quadratic minimised at a clamped stationary point.
    """
    mx, my, a, b, c, k2 = shape.unbind(1)  # q = a dx^2 + 2 b dx dy + c dy^2
    x_lo = (tx * TILE).to(shape.dtype) + 0.5 - mx
    y_lo = (ty * TILE).to(shape.dtype) + 0.5 - my
    x_hi, y_hi = x_lo + (TILE - 1), y_lo + (TILE - 1)

    def edge(fixed, free_lo, free_hi, a_fixed, c_free):
        free = torch.minimum(torch.maximum(-b * fixed / c_free, free_lo), free_hi)
        return a_fixed * fixed * fixed + 2 * b * fixed * free + c_free * free * free

    q = torch.minimum(
        torch.minimum(edge(x_lo, y_lo, y_hi, a, c), edge(x_hi, y_lo, y_hi, a, c)),
        torch.minimum(edge(y_lo, x_lo, x_hi, c, a), edge(y_hi, x_lo, x_hi, c, a)),
    )
    inside = (x_lo <= 0) & (x_hi >= 0) & (y_lo <= 0) & (y_hi >= 0)
    return inside | (q <= k2)


def _to_tiles(image: Tensor, bins: TileBins) -> Tensor:
    """[H, W, C] -> [n_tiles, TILE * TILE, C], zero-padded to whole tiles."""
    h, w, c = image.shape
    pad = F.pad(image, (0, 0, 0, bins.tiles_x * TILE - w, 0, bins.tiles_y * TILE - h))
    pad = pad.reshape(bins.tiles_y, TILE, bins.tiles_x, TILE, c).transpose(1, 2)
    return pad.reshape(bins.tiles_x * bins.tiles_y, TILE * TILE, c)


def _from_tiles(tiles: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """[n_tiles, TILE * TILE, C] -> [H, W, C]."""
    c = tiles.shape[-1]
    img = tiles.reshape(bins.tiles_y, bins.tiles_x, TILE, TILE, c).transpose(1, 2)
    return img.reshape(bins.tiles_y * TILE, bins.tiles_x * TILE, c)[:height, :width]


class _Block:
    """One depth block of a set of tiles: the rebuilt alphas and compositing weights.

    Layout [Ta, 16 (pixel row), 16 (pixel column), B]. The quadratic form is separable into a
    per-column term, a per-row term and one product, so only three full-size operations build alpha.
    Masks are applied with ``F.threshold`` (x if x > t else 0): on the CPU it is several times
    faster than comparisons with ``where``/``masked_fill``.
    """

    def __init__(self, table: Tensor, bins: TileBins, tids: Tensor, block: int, trans: Tensor):
        pos = block * _BLOCK + torch.arange(_BLOCK, device=tids.device)  # [B]
        inside = pos < bins.counts[tids, None]  # [Ta, B]
        pair = (bins.offsets[tids, None] + pos).clamp(max=max(len(bins.ids) - 1, 0))
        # Past the end of a tile's list: the dummy last row of the table (opacity 0, alpha 0).
        self.gids = torch.where(inside, bins.ids[pair], table.shape[0] - 1)  # [Ta, B]
        self.rows = table[self.gids]  # [Ta, B, 7 + C]
        mx, my, ca, cb, cc, log2_o = self.rows[..., :6].unbind(-1)  # [Ta, B] each
        pix = torch.arange(TILE, device=tids.device, dtype=table.dtype) + 0.5  # pixel centres in a tile
        x0 = ((tids % bins.tiles_x) * TILE).to(table.dtype)
        y0 = ((tids // bins.tiles_x) * TILE).to(table.dtype)
        self.dx = (mx - x0[:, None])[:, None, :] - pix[None, :, None]  # [Ta, 16 columns, B] mean - pixel
        self.dy = (my - y0[:, None])[:, None, :] - pix[None, :, None]  # [Ta, 16 rows, B]
        # log2(alpha) = log2(opacity) - log2(e) sigma: exp2 is ~2.5x faster than exp on the CPU.
        per_col = log2_o[:, None, :] - (0.5 * _LOG2E) * ca[:, None, :] * self.dx * self.dx  # [Ta, 16, B]
        per_row = (0.5 * _LOG2E) * cc[:, None, :] * self.dy * self.dy  # [Ta, 16, B]
        log2_alpha = per_col[:, None, :, :] - per_row[:, :, None, :]  # [Ta, 16, 16, B]
        cross = (_LOG2E * cb[:, None, :] * self.dx)[:, None]  # [Ta, 1, 16, B]
        self.alpha_raw = torch.addcmul(log2_alpha, cross, self.dy[:, :, None], value=-1.0).exp2_()
        lo, _ = _limits(table.dtype)
        self.alpha = F.threshold(self.alpha_raw, lo, 0.0).clamp_max_(ALPHA_MAX)  # skipped below 1/255
        self.one_minus = 1.0 - self.alpha
        # Transmittance after each Gaussian, not stopped at saturation: once it is <= T_MIN it stays
        # there, so "after <= T_MIN" marks exactly the Gaussians gsplat never reaches.
        self.after = torch.cumprod(self.one_minus, dim=-1).mul_(trans.view(-1, TILE, TILE, 1))
        # Transmittance in front of each Gaussian, 0 for those the pixel never reaches.
        self.before = F.threshold(self.after, T_MIN, 0.0).div_(self.one_minus)
        self.weights = self.alpha * self.before  # [Ta, 16, 16, B]

    def flat_weights(self) -> Tensor:
        """[Ta, 256, B] view of the weights."""
        return self.weights.view(self.weights.shape[0], TILE * TILE, _BLOCK)

    def colors_t(self) -> Tensor:
        """[Ta, C + 1, B]: the gathered colours (and the 1 column)."""
        return self.rows[..., 6:].transpose(1, 2)


@functools.cache
def _limits(dtype: torch.dtype) -> tuple[float, float]:
    """The float just below ALPHA_MIN and just above ALPHA_MAX in ``dtype``, so that ``F.threshold``
    (a strict >) keeps exactly alpha >= 1/255 and alpha <= 0.999, as gsplat's comparisons do."""
    def step(value: float, direction: float) -> float:
        return torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(direction, dtype=dtype)).item()

    return step(ALPHA_MIN, 0.0), step(ALPHA_MAX, 1.0)


def _schedule_chunks(active: Tensor) -> list[Tensor]:
    """Split the active tile ids into chunks of at most ``_BLOCK_ELEMS`` elements per tensor."""
    per_chunk = max(1, _BLOCK_ELEMS // (TILE * TILE * _BLOCK))
    return list(torch.split(active, per_chunk))


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back alpha compositing per tile; gradients for the 2D means, conics, colours, opacities
    and background. ``colors`` may have any number of channels C (the caller adds depth as one)."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, background, bins: TileBins, width: int, height: int):
        # means2d [N, 2], conics [N, 3], colors [N, C], opacities [N], background [C]
        n_tiles = bins.tiles_x * bins.tiles_y
        c = colors.shape[1]
        table = _table(means2d, conics, colors, opacities)
        trans = _start_transmittance(bins, width, height, colors)
        # Channel-major accumulators: [Ta, C + 1, B] @ [Ta, B, 256] is the fast batched-matmul shape.
        acc = torch.zeros(n_tiles, c + 1, TILE * TILE, dtype=colors.dtype, device=colors.device)
        schedule = []
        n_blocks = math.ceil(int(bins.counts.max()) / _BLOCK) if n_tiles and len(bins.ids) else 0
        for block in range(n_blocks):
            live = (bins.counts > block * _BLOCK) & (trans > T_MIN).any(dim=1)
            active = torch.nonzero(live).squeeze(1)
            if len(active) == 0:
                break
            chunks = _schedule_chunks(active)
            schedule.append(chunks)
            for tids in chunks:
                blk = _Block(table, bins, tids, block, trans[tids])
                acc[tids] += torch.bmm(blk.colors_t(), blk.flat_weights().transpose(1, 2))
                trans[tids] = blk.after[..., -1].reshape(len(tids), TILE * TILE)
        alpha = acc[:, c]  # [n_tiles, 256] = 1 - transmittance of the composited Gaussians
        acc[:, :c] += (1.0 - alpha)[:, None, :] * background[:, None]
        out = _from_tiles(acc.transpose(1, 2), bins, width, height)  # [H, W, C + 1]
        ctx.save_for_backward(means2d, conics, colors, opacities, background, acc)
        ctx.bins, ctx.schedule, ctx.size = bins, schedule, (width, height)
        return out[..., :c].contiguous(), out[..., c:].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, v_image, v_alpha):
        means2d, conics, colors, opacities, background, acc = ctx.saved_tensors
        bins, (width, height) = ctx.bins, ctx.size
        c = colors.shape[1]
        table = _table(means2d, conics, colors, opacities)
        v_out = _to_tiles(torch.cat([v_image, v_alpha], dim=-1), bins).transpose(1, 2).contiguous()  # [T, C+1, 256]
        # g . out per pixel (out includes the background): the total of the suffix sums below.
        total = (v_out * acc).sum(1)  # [n_tiles, 256]
        trans = _start_transmittance(bins, width, height, colors)
        prefix = torch.zeros_like(total)  # sum_{k<=j} w_k v_w_k so far
        v_table = torch.zeros_like(table)
        lo, hi = _limits(table.dtype)
        for block, chunks in enumerate(ctx.schedule):
            for tids in chunks:
                blk = _Block(table, bins, tids, block, trans[tids])
                g = v_out[tids]  # [Ta, C + 1, 256]
                v_rows = torch.bmm(g, blk.flat_weights()).transpose(1, 2)  # [Ta, B, C + 1]
                v_w = torch.bmm(g.transpose(1, 2), blk.colors_t()).view_as(blk.weights)  # [Ta, 16, 16, B]
                wv = blk.weights * v_w
                suffix = (total[tids] - prefix[tids]).view(-1, TILE, TILE, 1) - torch.cumsum(wv, dim=-1)
                v_a = torch.addcmul(suffix.div_(blk.one_minus).neg_(), blk.before, v_w)  # dL/dalpha
                # dalpha/dlog(alpha) = alpha where the gradient passes: 1/255 <= alpha <= 0.999 (not
                # skipped, not clamped) and the pixel still reaches the Gaussian (before > 0).
                passing = F.threshold(F.threshold(blk.alpha_raw.neg(), -hi, 0.0).neg_(), lo, 0.0)
                vs = v_a.mul_(passing).mul_(torch.sign(blk.before))  # = -dL/dsigma = dL/dlog(opacity)
                prefix[tids] += wv.sum(-1).reshape(len(tids), TILE * TILE)
                trans[tids] = blk.after[..., -1].reshape(len(tids), TILE * TILE)
                v_table.index_add_(0, blk.gids.flatten(), _row_grads(blk, vs, v_rows).flatten(0, 1))
        # The dummy row collects the padding's (zero) gradients.
        v_table = v_table[:-1]
        v_bg = ((1.0 - acc[:, c])[:, None, :] * v_out[:, :c]).sum((0, 2))
        v_opacities = v_table[:, 5] / opacities.clamp_min(ALPHA_MIN)
        return v_table[:, :2], v_table[:, 2:5], v_table[:, 6 : 6 + c], v_opacities, v_bg, None, None, None


def _start_transmittance(bins: TileBins, width: int, height: int, like: Tensor) -> Tensor:
    """[n_tiles, 256] ones, zeros on the padding pixels past the image border (they never count)."""
    ones = torch.ones(height, width, 1, dtype=like.dtype, device=like.device)
    return _to_tiles(ones, bins)[..., 0].contiguous()


def _table(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor) -> Tensor:
    """[N + 1, 7 + C] per-Gaussian rows gathered by the blocks: x, y, conic a, b, c, log2 opacity,
    colour, 1 (the 1 makes the compositing matmul also sum the weights). The last row is a dummy with
    opacity 0 that pads the blocks."""
    n = means2d.shape[0]
    log2_o = torch.log2(opacities.clamp_min(ALPHA_MIN))[:, None]  # culled (o <= 1/255) never reach a tile
    ones = torch.ones(n, 1, dtype=colors.dtype, device=colors.device)
    rows = torch.cat([means2d, conics, log2_o, colors, ones], dim=1)
    dummy = torch.zeros(1, rows.shape[1], dtype=rows.dtype, device=rows.device)
    dummy[0, 5] = -math.inf
    return torch.cat([rows, dummy], dim=0)


def _row_grads(blk: _Block, vs: Tensor, v_rows: Tensor) -> Tensor:
    """Per (tile, Gaussian) gradients of the table row from vs = -dL/dsigma per pixel.

    The log-opacity column gets sum(vs) = dL/dlog(opacity). sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2
    is separable, so the pixel sums reduce over one axis first: over rows per column (then times dx)
    and over columns per row (then times dy).
    """
    ca, cb, cc = blk.rows[..., 2], blk.rows[..., 3], blk.rows[..., 4]  # [Ta, B]
    dx, dy = blk.dx, blk.dy  # [Ta, 16, B]
    per_col = vs.sum(1)  # [Ta, 16 columns, B]
    per_row = vs.sum(2)  # [Ta, 16 rows, B]
    cross = (vs * dx[:, None]).sum(2)  # [Ta, 16 rows, B]: sum over columns of vs dx
    s0 = per_col.sum(1)
    sx, sxx = (per_col * dx).sum(1), (per_col * dx * dx).sum(1)
    sy, syy = (per_row * dy).sum(1), (per_row * dy * dy).sum(1)
    sxy = (cross * dy).sum(1)
    # dL/dsigma = -vs; dsigma/dmean = (a dx + b dy, b dx + c dy); dsigma/dconic = (dx^2/2, dx dy, dy^2/2).
    grads = [-(ca * sx + cb * sy), -(cb * sx + cc * sy), -0.5 * sxx, -sxy, -0.5 * syy, s0]
    return torch.cat([torch.stack(grads, dim=-1), v_rows], dim=-1)  # [Ta, B, 7 + C]


def _sh_towards_camera(means: Tensor, coeffs: Tensor, viewmat: Tensor, degree: int) -> Tensor:  # -> [N, 3]
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]  # camera centre in world coordinates
    return _eval_sh(coeffs, means - campos, degree)


def _features(means: Tensor, colors: Tensor, viewmat: Tensor, sh_degree: int | None, depths: Tensor,
              background: Tensor, sh=_sh_towards_camera) -> tuple[Tensor, Tensor]:
    """The colours composited: RGB (SH evaluated towards the camera by ``sh``) with the camera z as a fourth
    channel [N, 4], and the background [4] (depth 0 behind the Gaussians)."""
    rgb = colors if sh_degree is None else sh(means, colors, viewmat, sh_degree)  # [N, 3]
    return torch.cat([rgb, depths[:, None]], dim=1), torch.cat([background, background.new_zeros(1)])


def _strategy_info(means2d: Tensor, proj: Projection, width: int, height: int) -> dict:
    """The info dict of ``rasterize`` (gsplat's unpacked layout, one camera)."""
    return {"means2d": means2d, "radii": proj.radii[None], "depths": proj.depths[None], "conics": proj.conics[None],
            "width": width, "height": height, "n_cameras": 1, "gaussian_ids": None}


def rasterize_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, 3] or [N, K, 3]
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    background: Tensor,  # [3]
    sh_degree: int | None,
    near_plane: float,
    far_plane: float,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Image [H, W, 3], alpha [H, W, 1], accumulated depth [H, W, 1] and the strategy info."""
    proj = _project(means, quats, scales, opacities, viewmat, K, width, height, near_plane, far_plane)
    # The [1, N, 2] tensor handed to the densification strategy must be the one the image is
    # computed from, so that its retained .grad is dL/dmeans2d.
    means2d = proj.means2d[None]  # [1, N, 2]
    feats, bg = _features(means, colors, viewmat, sh_degree, proj.depths, background)
    bins = _bin_tiles(proj, width, height)
    out, alpha = _CompositeTiles.apply(means2d[0], proj.conics, feats, opacities, bg, bins, width, height)
    info = _strategy_info(means2d, proj, width, height)
    return out[..., :3], alpha, out[..., 3:], info
