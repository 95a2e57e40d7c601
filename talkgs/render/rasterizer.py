"""Rasterize 3D Gaussians into one pinhole camera: ``rasterize`` with a PyTorch or a gsplat backend.

Both backends follow gsplat 1.5's ``rasterize_mode="classic"`` exactly, so a model trained with one
renders the same with the other:

- **Camera.** ``viewmat`` is world-to-camera in the OpenCV convention (x right, y down, z forward);
  ``K`` is the usual intrinsic matrix. Pixel coordinates are continuous with 0 at the image's
  top-left *edge*: pixel (i, j) (row i, column j) is sampled at its centre (j + 0.5, i + 0.5).
- **Projection.** EWA splatting: the 3D covariance R S S^T R^T goes to pixels through the full
  perspective Jacobian J of (x, y, z) -> (fx x / z + cx, fy y / z + cy), evaluated (as in gsplat)
  with x/z and y/z clamped to 1.3 times the half field of view so that Gaussians far off-screen do not
  get huge footprints. Quaternions (w, x, y, z) are normalised inside.
- **Antialiasing: eps2d = 0.3 px^2, no opacity compensation.** 0.3 is added to the diagonal of every
  2D covariance: the classic 3DGS low-pass filter. It makes every splat at least ~0.55 px wide, so a
  small or distant Gaussian cannot fall between pixel centres and flicker, and it keeps the conic
  well conditioned. The Mip-Splatting "antialiased" mode would also scale opacity by
  sqrt(det(cov) / det(cov + 0.3 I)) so that dilated sub-pixel Gaussians do not get brighter; we keep
  the classic form because gsplat's densification thresholds, the reference 3DGS code and most
  trained models assume it, and a talking head is seen over a narrow range of distances, where the
  brightening the compensation corrects hardly changes.
- **Culling.** A Gaussian is dropped when its camera z is below ``near_plane`` or above
  ``far_plane``, when its opacity is <= 1/255, or when its screen box misses the image. The box
  half-width is ceil(k sqrt(cov_xx)) (and likewise in y) with gsplat 1.5's opacity-aware
  k = min(3.33, sqrt(2 ln(255 opacity))): beyond it opacity * exp(-sigma) < 1/255, so the 16x16
  tiles a Gaussian's box touches hold every pixel it can change and tiling never changes the image.
- **Compositing.** alpha_i = min(0.999, opacity_i exp(-sigma_i)), sigma = d^T conic d / 2 with
  d = mean2d - pixel centre. Contributions with alpha < 1/255 are skipped. Gaussians are composited
  front to back by camera z; a pixel stops before the Gaussian that would take its transmittance T to
  1e-4 or below (that one is not composited). image = sum_i w_i c_i + T background with
  w_i = alpha_i T_i. (gsplat 1.5 clamps alpha at 0.999, the original 3DGS code at 0.99.)
- **Outputs.** ``alpha`` = sum_i w_i = 1 - T. ``depth`` = sum_i w_i z_i, the *accumulated* camera
  z, not divided by alpha (gsplat's render mode "D"): it fades to 0 where the head is transparent.
  The expected depth is ``depth / alpha.clamp_min(eps)``.
- **Colour.** ``colors`` [N, 3] are used as they are. SH coefficients [N, K, 3] (K = 1, 4, 9) are
  evaluated like gsplat: view direction = normalise(mean - camera centre), the standard real SH
  basis of 3DGS (degrees 0-2), RGB = max(SH + 0.5, 0).

The info dict is what ``gsplat.strategy.DefaultStrategy`` reads, in the unpacked layout with one
camera and the same keys from both backends: ``means2d`` [1, N, 2] (in the autograd graph;
``step_pre_backward`` calls ``retain_grad`` on it, and after ``backward`` its ``.grad`` is dL/dmeans2d
in pixels), ``radii`` [1, N, 2] int32 (0 = culled), ``depths`` [1, N], ``conics`` [1, N, 3],
``width``, ``height``, ``n_cameras`` = 1 and ``gaussian_ids`` = None. Call
``step_post_backward(..., packed=False)``. ``MCMCStrategy`` reads none of it (but its own
operations need gsplat's CUDA kernels).

Importing this module does not import gsplat: its CUDA extension is loaded (and JIT-built on first
use) only when the gsplat backend runs.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from talkgs.render._cpu_backend import cpu_kernels, rasterize_cpu
from talkgs.render._torch_backend import EPS2D, rasterize_torch

BACKENDS = ("auto", "torch", "cpu", "gsplat")
_SH_SIZES = {1: 0, 4: 1, 9: 2}  # number of SH coefficients -> degree


@dataclass
class RenderOutput:
    """What ``rasterize`` returns; tensors are in the inputs' dtype and on their device."""

    image: Tensor  # [H, W, 3] colour composited over the background
    alpha: Tensor  # [H, W, 1] accumulated opacity, 1 - final transmittance
    depth: Tensor  # [H, W, 1] sum_i w_i z_i: accumulated camera z, NOT divided by alpha
    info: dict = field(default_factory=dict)  # for gsplat's densification strategies (module docstring)


def has_gsplat_cuda() -> bool:
    """True when the gsplat backend can run: CUDA is available and gsplat is installed.

    Does not import gsplat's CUDA code (the first gsplat render JIT-builds it when no prebuilt wheel
    is installed, which takes minutes).
    """
    return torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, 3] or [N, K, 3]
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [3]
    backend: str = "auto",
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """Render N 3D Gaussians into one ``width`` x ``height`` pinhole camera, differentiably.

    Args:
        means: [N, 3] centres in world coordinates.
        quats: [N, 4] rotations (w, x, y, z); need not be normalised.
        scales: [N, 3] standard deviations along the rotated axes (linear, not log).
        opacities: [N] in [0, 1].
        colors: [N, 3] RGB, or [N, K, 3] SH coefficients with K in {1, 4, 9} (degree 0, 1, 2).
        viewmat: [4, 4] world-to-camera, OpenCV axes.
        K: [3, 3] intrinsics.
        width, height: image size in pixels.
        background: [3] colour behind the Gaussians; None is black.
        backend: "torch" (pure PyTorch, any device, float32 or float64), "cpu" (compiled C++/OpenMP
            kernels, float32 CPU inputs, built on first use), "gsplat" (gsplat's CUDA kernels, float32 CUDA
            inputs), or "auto": gsplat for float32 CUDA inputs, the compiled kernels for float32 CPU inputs
            (when they build here), else torch. All give the same pictures and gradients.
        sh_degree: with SH colours, the number of bands used minus one (<= the degree K holds);
            None uses all of them. Must be None with RGB colours.
        near_plane, far_plane: Gaussians whose camera z is outside [near_plane, far_plane] are culled.

    Returns:
        ``RenderOutput`` with image [H, W, 3], alpha [H, W, 1], depth [H, W, 1] (accumulated z, not
        normalised by alpha) and info for gsplat's strategies. See the module docstring for the
        exact conventions.

    Raises:
        ValueError: bad shapes, dtypes, devices or arguments (the message shows the bad value).
        RuntimeError: backend="gsplat" without CUDA, backend="cpu" where the kernels cannot be built.
    """
    degree = _check_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                           sh_degree, near_plane, far_plane)
    backend = _pick_backend(backend, means)
    width, height = int(width), int(height)  # numpy integers are accepted too
    float32 = means.dtype == torch.float32
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                                 degree, near_plane, far_plane)
    if background is None:
        background = means.new_zeros(3)
    args = (means, quats, scales, opacities, colors, viewmat, K, width, height, background, degree, near_plane,
            far_plane)
    if backend == "cpu":
        if means.device.type != "cpu" or not float32:
            raise ValueError(f"backend='cpu' needs float32 CPU tensors, got {means.dtype} on {means.device}")
        ext = cpu_kernels()
        if ext is None:
            raise RuntimeError("backend='cpu' needs the compiled CPU kernels, which cannot be built here; "
                               "use backend='torch'")
        image, alpha, depth, info = rasterize_cpu(ext, *args)
    else:
        image, alpha, depth, info = rasterize_torch(*args)
    return RenderOutput(image=image, alpha=alpha, depth=depth, info=info)


def rasterize_batch(
    means: Tensor,  # [B, N, 3]
    quats: Tensor,  # [B, N, 4]
    scales: Tensor,  # [B, N, 3]
    opacities: Tensor,  # [B, N]
    colors: Tensor,  # [B, N, 3] or [B, N, K, 3]
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    backend: str = "auto",
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> list[RenderOutput]:
    """B frames, each its own N Gaussians seen by its own camera: ``rasterize`` of frame i for every i.

    gsplat draws all B in one call (its batch dimensions: one launch per kernel instead of B, which is what a
    GPU render of a batch of frames waits on); the PyTorch and compiled CPU backends rasterize one frame after
    another. Each frame's result equals ``rasterize`` of that frame alone (tested; on CUDA within gsplat's own
    float32 reordering). A batch of one takes the single-camera path, so training (B = 1, gsplat's strategies
    reading ``info``) is unchanged. Per-frame ``info`` holds that frame's slices of gsplat's batched outputs.
    """
    if not isinstance(means, Tensor) or means.ndim != 3 or means.shape[2] != 3:
        raise ValueError(f"means must have shape [B, N, 3], got {_shape(means)}")
    b = means.shape[0]
    for name, value in (("quats", quats), ("scales", scales), ("opacities", opacities), ("colors", colors),
                        ("viewmats", viewmats), ("Ks", Ks)):
        if not isinstance(value, Tensor) or value.ndim < 2 or value.shape[0] != b:
            raise ValueError(f"{name} must have B = {b} (from means) frames first, got {_shape(value)}")
    backend = _pick_backend(backend, means)
    if backend != "gsplat" or b == 1:
        return [rasterize(means[i], quats[i], scales[i], opacities[i], colors[i], viewmats[i], Ks[i], width, height,
                          backend=backend, sh_degree=sh_degree, near_plane=near_plane, far_plane=far_plane)
                for i in range(b)]
    # One frame validates shapes, dtypes and devices for all (they share them, checked above for B).
    degree = _check_inputs(means[0], quats[0], scales[0], opacities[0], colors[0], viewmats[0], Ks[0], width, height,
                           None, sh_degree, near_plane, far_plane)
    return _rasterize_gsplat_batch(means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
                                   degree, near_plane, far_plane)


def _pick_backend(backend: str, means: Tensor) -> str:
    """``backend`` with "auto" resolved for tensors like ``means``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    float32 = means.dtype == torch.float32
    if means.device.type == "cuda":
        return "gsplat" if float32 and has_gsplat_cuda() else "torch"
    return "cpu" if float32 and cpu_kernels() is not None else "torch"


def _check_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height, background, sh_degree,
                  near_plane, far_plane) -> int | None:
    """Validate the arguments of ``rasterize``; returns the SH degree to use (None for RGB colours)."""
    if not isinstance(means, Tensor) or means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must have shape [N, 3], got {_shape(means)}")
    n = means.shape[0]
    expected = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,)),
                "viewmat": (viewmat, (4, 4)), "K": (K, (3, 3))}
    for name, (value, shape) in expected.items():
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {_fmt(shape)} (N = {n} from means), got {_shape(value)}")
    if not isinstance(colors, Tensor) or not (
        (colors.ndim == 2 and tuple(colors.shape) == (n, 3))
        or (colors.ndim == 3 and colors.shape[0] == n and colors.shape[1] in _SH_SIZES and colors.shape[2] == 3)
    ):
        raise ValueError(f"colors must have shape [N, 3] (RGB) or [N, K, 3] with K in (1, 4, 9) (SH), N = {n}, "
                         f"got {_shape(colors)}")
    if background is not None and (not isinstance(background, Tensor) or tuple(background.shape) != (3,)):
        raise ValueError(f"background must be None or have shape [3], got {_shape(background)}")
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmat": viewmat, "K": K}
    if background is not None:
        tensors["background"] = background
    for name, value in tensors.items():
        if value.dtype != means.dtype or value.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} has dtype {value.dtype}; all inputs must share one dtype, float32 or float64 "
                             f"(means is {means.dtype})")
        if value.device != means.device:
            raise ValueError(f"{name} is on {value.device} but means is on {means.device}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (0 < near_plane < far_plane) or math.isnan(far_plane):
        raise ValueError(f"need 0 < near_plane < far_plane, got near_plane={near_plane}, far_plane={far_plane}")
    if colors.ndim == 2:
        if sh_degree is not None:
            raise ValueError(f"sh_degree={sh_degree} given but colors are RGB [N, 3]; pass SH coefficients [N, K, 3]")
        return None
    available = _SH_SIZES[colors.shape[1]]
    if sh_degree is None:
        return available
    if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= available:
        raise ValueError(f"sh_degree must be an int in [0, {available}] for colors of shape {_fmt(colors.shape)}, "
                         f"got {sh_degree!r}")
    return sh_degree


def _shape(value) -> str:
    return _fmt(value.shape) if isinstance(value, Tensor) else f"{type(value).__name__} (not a tensor)"


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background, degree,
                      near_plane, far_plane) -> RenderOutput:
    """gsplat.rasterization in classic mode, unpacked, with depth as an extra channel ("RGB+D")."""
    if not torch.cuda.is_available():
        raise RuntimeError("backend='gsplat' needs CUDA but torch.cuda.is_available() is False; use backend='torch'")
    if means.device.type != "cuda" or means.dtype != torch.float32:
        raise ValueError(f"backend='gsplat' needs float32 CUDA tensors, got {means.dtype} on {means.device}")
    from gsplat.rendering import rasterization

    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=EPS2D, sh_degree=degree, packed=False,
        backgrounds=None if background is None else background[None], render_mode="RGB+D",
        rasterize_mode="classic",
    )
    info = {key: meta[key] for key in ("means2d", "radii", "depths", "conics", "width", "height", "n_cameras",
                                       "gaussian_ids")}
    return RenderOutput(image=render[0, ..., :3], alpha=alpha[0], depth=render[0, ..., 3:], info=info)


def _rasterize_gsplat_batch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, degree,
                            near_plane, far_plane) -> list[RenderOutput]:
    """gsplat.rasterization of B frames in one call: batch dimension B, one camera each."""
    if not torch.cuda.is_available():
        raise RuntimeError("backend='gsplat' needs CUDA but torch.cuda.is_available() is False; use backend='torch'")
    if means.device.type != "cuda" or means.dtype != torch.float32:
        raise ValueError(f"backend='gsplat' needs float32 CUDA tensors, got {means.dtype} on {means.device}")
    from gsplat.rendering import rasterization

    render, alpha, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats[:, None], Ks[:, None], width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=EPS2D, sh_degree=degree, packed=False,
        render_mode="RGB+D", rasterize_mode="classic",
    )  # render [B, 1, H, W, 4], alpha [B, 1, H, W, 1], meta's per-Gaussian outputs [B, 1, N, ...]
    outputs = []
    for i in range(means.shape[0]):
        info = {key: meta[key][i] for key in ("means2d", "radii", "depths", "conics")}
        info.update(width=width, height=height, n_cameras=1, gaussian_ids=None)
        outputs.append(RenderOutput(image=render[i, 0, ..., :3], alpha=alpha[i, 0], depth=render[i, 0, ..., 3:],
                                    info=info))
    return outputs
