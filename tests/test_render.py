"""talkgs.render.rasterize: the torch backend against a brute-force reference, an analytic case, gsplat
(on CUDA), argument checks and the round trip through gsplat's DefaultStrategy."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import talkgs.render._torch_backend as backend
from talkgs.render import RenderOutput, has_gsplat_cuda, rasterize, rasterize_batch
from talkgs.render._cpu_backend import cpu_kernels as backend_cpu_kernels

CUDA = torch.cuda.is_available()
INPUT_NAMES = ("means", "quats", "scales", "opacities", "colors", "viewmat", "background")

_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)


def _sh_reference(coeffs, dirs, degree):
    """3DGS's real SH basis (degrees 0-2), written out band by band."""
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    basis = [torch.full_like(x, _SH_C0)]
    if degree >= 1:
        basis += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        basis += [_SH_C2[0] * x * y, _SH_C2[1] * y * z, _SH_C2[2] * (2 * z * z - x * x - y * y), _SH_C2[3] * x * z,
                  _SH_C2[4] * (x * x - y * y)]
    return torch.clamp_min(sum(b * coeffs[:, i] for i, b in enumerate(basis)) + 0.5, 0.0)


def _rasterize_reference(means, quats, scales, opacities, colors, viewmat, K, width, height, background=None,
                         sh_degree=None, near_plane=0.01, far_plane=1e10):
    """Every Gaussian at every pixel, no tiles, no boxes: the classic rules written as directly as possible.

    Per pixel, the Gaussians in front of the near plane are visited one at a time in depth order; the
    transmittance is a running product. Only the near/far planes cull: a Gaussian whose box misses the
    image, or whose opacity is below 1/255, has alpha < 1/255 at every pixel, so the per-pixel skip
    drops it anyway (that is what makes the backend's boxes and tiles invisible in the image).
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    cam = means @ R.T + t
    keep = torch.nonzero((cam[:, 2] >= near_plane) & (cam[:, 2] <= far_plane)).squeeze(1)
    keep = keep[torch.argsort(cam[keep, 2])]
    x, y, z = cam[keep].unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    w, i, j, k = (quats[keep] / quats[keep].norm(dim=-1, keepdim=True)).unbind(-1)
    rot = torch.stack([
        torch.stack([1 - 2 * (j * j + k * k), 2 * (i * j - w * k), 2 * (i * k + w * j)], -1),
        torch.stack([2 * (i * j + w * k), 1 - 2 * (i * i + k * k), 2 * (j * k - w * i)], -1),
        torch.stack([2 * (i * k - w * j), 2 * (j * k + w * i), 1 - 2 * (i * i + j * j)], -1),
    ], -2)
    cov3d = rot @ torch.diag_embed(scales[keep] ** 2) @ rot.transpose(1, 2)
    # The Jacobian sees x/z and y/z clamped to 1.3 times the half field of view (gsplat's persp_proj).
    lim_x, lim_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = z * torch.clamp(x / z, -(cx / fx + lim_x), (width - cx) / fx + lim_x)
    ty = z * torch.clamp(y / z, -(cy / fy + lim_y), (height - cy) / fy + lim_y)
    zero = torch.zeros_like(z)
    jac = torch.stack([torch.stack([fx / z, zero, -fx * tx / z**2], -1),
                       torch.stack([zero, fy / z, -fy * ty / z**2], -1)], -2)
    cov2d = jac @ R @ cov3d @ R.T @ jac.transpose(1, 2) + 0.3 * torch.eye(2, dtype=means.dtype)
    conic = torch.linalg.inv(cov2d)
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    if colors.ndim == 3:
        degree = math.isqrt(colors.shape[1]) - 1 if sh_degree is None else sh_degree
        rgb = _sh_reference(colors[keep], means[keep] + R.T @ t, degree)  # camera centre = -R^T t
    else:
        rgb = colors[keep]
    cols, rows = torch.meshgrid(torch.arange(width, dtype=means.dtype), torch.arange(height, dtype=means.dtype),
                                indexing="xy")
    pix = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5], -1)  # [P, 2] pixel centres
    d = mean2d[None] - pix[:, None]  # [P, n, 2]
    alpha = torch.clamp(opacities[keep] * torch.exp(-0.5 * torch.einsum("pni,nij,pnj->pn", d, conic, d)), max=0.999)
    n_pix = pix.shape[0]
    trans = torch.ones(n_pix, dtype=means.dtype)
    done = torch.zeros(n_pix, dtype=torch.bool)
    image = torch.zeros(n_pix, 3, dtype=means.dtype)
    depth = torch.zeros(n_pix, dtype=means.dtype)
    # unbind once: indexing inside the loop would make the backward pass allocate [P, n] per Gaussian
    for a, c, zg in zip(alpha.unbind(1), rgb.unbind(0), z.unbind(0)):
        hit = a >= 1 / 255
        next_trans = trans * (1 - a)
        done = done | (hit & (next_trans <= 1e-4))  # this Gaussian and all behind it are not composited
        use = hit & ~done
        weight = torch.where(use, a * trans, 0.0)
        image = image + weight[:, None] * c
        depth = depth + weight * zg
        trans = torch.where(use, next_trans, trans)
    if background is not None:
        image = image + trans[:, None] * background
    return image.reshape(height, width, 3), (1 - trans).reshape(height, width, 1), depth.reshape(height, width, 1)


def _rotation(angles):
    """Rotation matrix exp([angles]_x)."""
    a, b, c = angles.tolist()
    skew = torch.tensor([[0.0, -c, b], [c, 0.0, -a], [-b, a, 0.0]], dtype=angles.dtype)
    return torch.linalg.matrix_exp(skew)


def _random_scene(seed, n=200, sh_coeffs=9, width=40, height=32, dtype=torch.float64):
    """A random scene that exercises every rule. Camera-space layout:

    - 10 Gaussians behind the camera or inside the near plane (culled);
    - 40 opaque ones clustered in the middle (pixels saturate: alpha clamp and early stop);
    - 5 with opacity below 1/255 (culled);
    - 6 large ones off-screen beyond the clamped field of view that still reach into the image;
    - the rest spread over and past the image borders, 0.4-3 units away.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    fx, fy = 38.0, 41.0
    K = torch.tensor([[fx, 0.0, 0.47 * width], [0.0, fy, 0.53 * height], [0.0, 0.0, 1.0]], dtype=dtype)
    z = 0.4 + 2.6 * rand(n)
    u = (rand(n) * 1.4 - 0.2) * width  # pixel coordinates, 20% past each border
    v = (rand(n) * 1.4 - 0.2) * height
    scales = 0.01 + 0.08 * rand(n, 3)
    opacities = rand(n)
    z[:10] = -0.5 + 0.509 * rand(10)  # behind the camera or 0 < z < near_plane
    u[10:50] = width * (0.35 + 0.3 * rand(40))
    v[10:50] = height * (0.35 + 0.3 * rand(40))
    z[10:50] = 0.8 + 0.4 * rand(40)
    scales[10:50] *= 2.0
    opacities[10:50] = 0.9 + 0.1 * rand(40)
    opacities[50:55] = 0.003 * rand(5)
    u[55:58] = -0.9 * width * (1.0 + rand(3))  # x / z far left of the clamp limit
    u[58:61] = 1.9 * width * (1.0 + rand(3))
    z[55:61] = 0.5 + 0.01 * torch.arange(6, dtype=dtype)  # distinct depths: ties have no defined order
    scales[55:61] = 0.5
    opacities[55:61] = 0.95
    cam = torch.stack([(u - K[0, 2]) * z / fx, (v - K[1, 2]) * z / fy, z], -1)
    R = _rotation(0.2 * rand(3) - 0.1)
    t = 0.1 * rand(3) - 0.05
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3], viewmat[:3, 3] = R, t
    colors = 0.5 * torch.randn(n, sh_coeffs, 3, generator=g, dtype=dtype) if sh_coeffs else rand(n, 3)
    return {
        "means": (cam - t) @ R,  # world = R^T (cam - t)
        "quats": torch.randn(n, 4, generator=g, dtype=dtype) * 2.0,
        "scales": scales,
        "opacities": opacities,
        "colors": colors,
        "viewmat": viewmat,
        "K": K,
        "width": width,
        "height": height,
        "background": rand(3),
    }


def _head_scene(g: torch.Generator, n: int, width: int, height: int) -> dict:
    """A dense, head-sized float32 cloud (all of ``rasterize``'s inputs but the image size): many tiles, pixels
    that saturate, 50 Gaussians behind the camera."""
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g) ** 0.3 * 0.1
    means = means + torch.tensor([0.0, 0.0, 0.75])
    means[:50, 2] = -0.2  # behind the camera
    focal = 0.8 * height * 0.75 / 0.2
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": 0.002 + 0.008 * torch.rand(n, 3, generator=g),
        "opacities": torch.sigmoid(2.0 * torch.randn(n, generator=g)),
        "colors": 0.3 * torch.randn(n, 9, 3, generator=g),
        "viewmat": torch.eye(4),
        "K": torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]]),
        "background": torch.tensor([0.2, 0.3, 0.4]),
    }


def _frames(g: torch.Generator, b: int, n: int, width: int, height: int) -> dict:
    """B frames of one head: its Gaussians moved, turned and recoloured a little per frame, each seen by a camera
    turned a little (``rasterize_batch``'s inputs but the image size)."""
    scene = _head_scene(g, n, width, height)
    per_frame = {"means": [], "quats": [], "scales": [], "opacities": [], "colors": [], "viewmats": []}
    for _ in range(b):
        per_frame["means"].append(scene["means"] + 0.003 * torch.randn(n, 3, generator=g))
        per_frame["quats"].append(scene["quats"] + 0.1 * torch.randn(n, 4, generator=g))
        per_frame["scales"].append(scene["scales"] * (1 + 0.1 * torch.rand(n, 3, generator=g)))
        per_frame["opacities"].append(scene["opacities"] * (0.9 + 0.1 * torch.rand(n, generator=g)))
        per_frame["colors"].append(scene["colors"] + 0.05 * torch.randn(n, 9, 3, generator=g))
        view = torch.eye(4)
        view[:3, :3] = _rotation(0.05 * torch.randn(3, generator=g).double()).float()
        per_frame["viewmats"].append(view)
    frames = {k: torch.stack(v) for k, v in per_frame.items()}
    frames["Ks"] = scene["K"].expand(b, 3, 3).clone()
    return frames


def _render(scene, **kwargs):
    return rasterize(**scene, **kwargs)


def _with_grad(scene):
    out = dict(scene)
    for name in INPUT_NAMES:
        out[name] = scene[name].clone().requires_grad_(True)
    return out


def _rel_err(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-30))


# The backend and the reference evaluate the same float64 formulas in different orders (cumprod versus
# a running product, the separable quadratic versus einsum, exp2 versus exp). Measured differences are
# ~1e-14 of each tensor's largest entry; 1e-9 leaves room for other CPUs' summation orders and is still
# six orders of magnitude below what any wrong rule produces. Threshold decisions (1/255, 1e-4) cannot
# flip at this precision for these seeds.
F64_RTOL = 1e-9


@pytest.mark.parametrize(("seed", "sh_coeffs", "sh_degree"), [(0, 0, None), (1, 1, None), (2, 4, None), (3, 9, None),
                                                               (4, 9, 1)])
def test_torch_backend_matches_reference(seed, sh_coeffs, sh_degree):
    scene = _with_grad(_random_scene(seed, sh_coeffs=sh_coeffs))
    out = _render(scene, backend="torch", sh_degree=sh_degree)
    ref = _rasterize_reference(**scene, sh_degree=sh_degree)
    assert ref[1].max() > 0.9998, "the scene must saturate some pixels (early stop)"
    radii = out.info["radii"][0]
    assert (radii[:10] == 0).all() and (radii[50:55] == 0).all()
    for name, got, want in zip(("image", "alpha", "depth"), (out.image, out.alpha, out.depth), ref):
        assert got.shape == want.shape
        assert _rel_err(got, want) < F64_RTOL, name
    g = torch.Generator().manual_seed(100 + seed)
    cotangents = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in ref]
    inputs = [scene[name] for name in INPUT_NAMES]
    got = torch.autograd.grad((out.image, out.alpha, out.depth), inputs, cotangents)
    want = torch.autograd.grad(ref, inputs, cotangents)
    for name, a, b in zip(INPUT_NAMES, got, want):
        assert b.abs().max() > 0, name
        assert _rel_err(a, b) < F64_RTOL, name


def test_float32_forward_matches_reference():
    """float32 against the float64 reference. Round-off is ~1e-6; a pixel whose alpha sits within
    round-off of 1/255 or of the early stop may flip and differ by up to ~1/255, so the bulk must agree
    to 1e-5 and the worst pixel to 1e-2."""
    scene64 = _random_scene(5)
    scene32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in scene64.items()}
    out = _render(scene32, backend="torch")
    ref = _rasterize_reference(**scene64)
    for got, want in zip((out.image, out.alpha, out.depth), ref):
        assert got.dtype == torch.float32
        err = (got.double() - want).abs().flatten()
        assert torch.quantile(err, 0.99) < 1e-5
        assert err.max() < 1e-2


def test_chunking_does_not_change_results(monkeypatch):
    """Tiny working sets (one tile per chunk, binning in groups of 64 candidates) versus the default
    (everything in one chunk at this size): the same numbers, forward and backward."""
    scene = _with_grad(_random_scene(6))
    out = _render(scene, backend="torch")
    grads = torch.autograd.grad(out.image.sum() + out.alpha.sum(), [scene[n] for n in INPUT_NAMES])
    monkeypatch.setattr(backend, "_BLOCK_ELEMS", 64)
    out2 = _render(scene, backend="torch")
    grads2 = torch.autograd.grad(out2.image.sum() + out2.alpha.sum(), [scene[n] for n in INPUT_NAMES])
    assert torch.allclose(out.image, out2.image, rtol=0, atol=1e-13)
    for a, b in zip(grads, grads2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_isotropic_gaussian_head_on(dtype):
    """One round Gaussian at the image centre: alpha there is its opacity, and along the row alpha
    falls off as opacity * exp(-r^2 / (2 s2)) with s2 = (f s / z)^2 + 0.3 until it drops below 1/255."""
    f, z, s, opacity, size = 60.0, 2.0, 0.1, 0.8, 65
    centre = (size - 1) / 2  # pixel 32: its centre 32.5 is the image centre
    out = rasterize(
        means=torch.tensor([[0.0, 0.0, z]], dtype=dtype),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
        scales=torch.full((1, 3), s, dtype=dtype),
        opacities=torch.tensor([opacity], dtype=dtype),
        colors=torch.tensor([[0.2, 0.4, 0.6]], dtype=dtype),
        viewmat=torch.eye(4, dtype=dtype),
        K=torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], dtype=dtype),
        width=size, height=size, backend="torch",
    )
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    c = int(centre)
    assert abs(float(out.alpha[c, c, 0]) - opacity) < tol
    assert abs(float(out.depth[c, c, 0]) - opacity * z) < tol * z
    s2 = (f * s / z) ** 2 + 0.3
    r = torch.arange(size, dtype=torch.float64) - centre
    expected = opacity * torch.exp(-0.5 * r**2 / s2)
    expected = torch.where(expected >= 1 / 255, expected, 0.0)
    assert (expected == 0).any(), "the row must reach past the 1/255 cut-off"
    assert torch.allclose(out.alpha[c, :, 0].double(), expected, rtol=0, atol=tol)
    assert torch.allclose(out.alpha[:, c, 0].double(), expected, rtol=0, atol=tol)
    assert torch.allclose(out.image[c, c].double(), torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64) * opacity,
                          atol=tol)
    k = min(3.33, math.sqrt(2 * math.log(255 * opacity)))  # opacity-aware extent, in sigmas
    assert out.info["radii"][0, 0].tolist() == [math.ceil(k * math.sqrt(s2))] * 2


def test_output_and_info_contract():
    scene = _with_grad({k: v.float() if isinstance(v, torch.Tensor) else v for k, v in _random_scene(7).items()})
    out = _render(scene)  # auto: the compiled kernels on the CPU
    n = scene["means"].shape[0]
    assert isinstance(out, RenderOutput)
    assert out.image.shape == (32, 40, 3) and out.alpha.shape == (32, 40, 1) and out.depth.shape == (32, 40, 1)
    assert out.image.dtype == out.alpha.dtype == out.depth.dtype == torch.float32
    info = out.info
    assert info["means2d"].shape == (1, n, 2) and info["means2d"].requires_grad
    assert info["radii"].shape == (1, n, 2) and info["radii"].dtype == torch.int32
    assert info["depths"].shape == (1, n) and info["conics"].shape == (1, n, 3)
    assert (info["width"], info["height"], info["n_cameras"], info["gaussian_ids"]) == (40, 32, 1, None)
    info["means2d"].retain_grad()
    (out.image.sum() + out.alpha.sum()).backward()
    grad = info["means2d"].grad
    visible = (info["radii"] > 0).all(-1)
    assert grad.shape == (1, n, 2)
    assert (grad[~visible] == 0).all()
    assert (grad[visible].abs().sum(-1) > 0).float().mean() > 0.9
    assert torch.isfinite(scene["means"].grad).all()


def test_nothing_visible():
    scene = _with_grad(_random_scene(8))
    with torch.no_grad():
        scene["means"][:, 2] -= 100.0  # everything behind the camera
    out = _render(scene, backend="torch")
    assert torch.equal(out.image, scene["background"].expand(32, 40, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all() and (out.info["radii"] == 0).all()
    (out.image.sum() + out.depth.sum()).backward()
    assert (scene["means"].grad == 0).all() and (scene["colors"].grad == 0).all()
    assert torch.equal(scene["background"].grad, torch.full((3,), 32.0 * 40.0, dtype=torch.float64))


def test_default_strategy_round_trip():
    """The torch backend's info drives gsplat's DefaultStrategy on the CPU: statistics, growth, pruning."""
    from gsplat.strategy import DefaultStrategy

    scene = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in _random_scene(9).items()}
    n = scene["means"].shape[0]
    params = torch.nn.ParameterDict({
        "means": scene["means"],
        "quats": scene["quats"],
        "scales": torch.log(scene["scales"]),
        "opacities": torch.logit(scene["opacities"].clamp(1e-4, 1 - 1e-4)),
        "colors": scene["colors"],
    })
    with torch.no_grad():
        params["opacities"][100:110] = -10.0  # opacity 4.5e-5 < prune_opa
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    # Refine at step 2 (steps > refine_start_iter that are multiples of refine_every); any visible
    # Gaussian with a gradient grows; scales below 0.05 duplicate, larger ones split.
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-12, grow_scale3d=0.05,
                               prune_opa=0.005)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)

    def step(i):
        out = rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                        torch.sigmoid(params["opacities"]), params["colors"], scene["viewmat"], scene["K"],
                        scene["width"], scene["height"], backend="torch")
        strategy.step_pre_backward(params, optimizers, state, i, out.info)
        (out.image.sum() + out.alpha.sum()).backward()
        for opt in optimizers.values():
            opt.step()
        strategy.step_post_backward(params, optimizers, state, i, out.info, packed=False)
        for opt in optimizers.values():
            opt.zero_grad()
        return out.info

    info = step(1)  # statistics only: the strategy's running sums must be what info says
    visible = (info["radii"][0] > 0).all(-1)
    assert visible.sum() > n // 2
    assert torch.equal(state["count"], visible.float())
    scale = torch.tensor([scene["width"] / 2, scene["height"] / 2])  # the strategy's [-1, 1] normalisation
    expected = torch.where(visible, (info["means2d"].grad[0] * scale).norm(dim=-1), 0.0)
    assert torch.allclose(state["grad2d"], expected)
    assert (expected[visible] > 0).float().mean() > 0.5  # Gaussians hidden behind saturated pixels get none

    step(2)  # statistics, then grow and prune
    n_after = params["means"].shape[0]
    assert n_after > n, "visible Gaussians with a gradient must have grown"
    assert all(p.shape[0] == n_after for p in params.values())
    assert all(opt.param_groups[0]["params"][0] is params[k] for k, opt in optimizers.items())
    assert (torch.sigmoid(params["opacities"]) >= 0.005).all(), "low-opacity Gaussians must be pruned"
    assert (state["grad2d"] == 0).all() and state["grad2d"].shape == (n_after,)


def _bad(scene, **changes):
    args = dict(scene)
    args.update(changes)
    return args


@pytest.mark.parametrize(("changes", "message"), [
    ({"means": torch.zeros(5, 2)}, r"means must have shape \[N, 3\], got \[5, 2\]"),
    ({"quats": torch.zeros(5, 3)}, r"quats must have shape \[5, 4\] \(N = 5 from means\), got \[5, 3\]"),
    ({"scales": torch.zeros(4, 3)}, r"scales must have shape \[5, 3\].*got \[4, 3\]"),
    ({"opacities": torch.zeros(5, 1)}, r"opacities must have shape \[5\].*got \[5, 1\]"),
    ({"colors": torch.zeros(5, 5, 3)}, r"colors must have shape .*got \[5, 5, 3\]"),
    ({"colors": torch.zeros(5, 4)}, r"colors must have shape .*got \[5, 4\]"),
    ({"viewmat": torch.zeros(3, 4)}, r"viewmat must have shape \[4, 4\].*got \[3, 4\]"),
    ({"K": torch.zeros(1, 3, 3)}, r"K must have shape \[3, 3\].*got \[1, 3, 3\]"),
    ({"background": torch.zeros(4)}, r"background must be None or have shape \[3\], got \[4\]"),
    ({"means": torch.zeros(5, 3, dtype=torch.float64)}, r"quats has dtype torch.float32; all inputs must share"),
    ({"means": torch.zeros(5, 3, dtype=torch.float16)}, r"means has dtype torch.float16"),
    ({"width": 0}, r"width must be a positive int, got 0"),
    ({"height": 10.0}, r"height must be a positive int, got 10.0"),
    ({"backend": "cuda"}, r"backend must be one of .*got 'cuda'"),
    ({"sh_degree": 1}, r"sh_degree=1 given but colors are RGB"),
    ({"colors": torch.zeros(5, 4, 3), "sh_degree": 2}, r"sh_degree must be an int in \[0, 1\].*got 2"),
    ({"near_plane": 0.0}, r"need 0 < near_plane < far_plane"),
])
def test_argument_errors(changes, message):
    scene = {"means": torch.zeros(5, 3), "quats": torch.zeros(5, 4), "scales": torch.zeros(5, 3),
             "opacities": torch.zeros(5), "colors": torch.zeros(5, 3), "viewmat": torch.eye(4), "K": torch.eye(3),
             "width": 8, "height": 8}
    with pytest.raises(ValueError, match=message):
        rasterize(**_bad(scene, **changes))


@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_batched_draw_equals_frame_by_frame(name):
    """``rasterize_batch`` of B frames gives each frame exactly what ``rasterize`` gives it alone; and the compiled
    kernels' batch agrees with the torch backend's frame by frame (float32, different summation orders)."""
    if name == "cpu" and backend_cpu_kernels() is None:
        pytest.skip("the compiled CPU kernels cannot be built here")
    g = torch.Generator().manual_seed(5)
    width, height = 64, 48
    frames = _frames(g, 4, 1500, width, height)
    batch = rasterize_batch(**frames, width=width, height=height, backend=name)
    assert len(batch) == 4
    for i, got in enumerate(batch):
        alone = rasterize(frames["means"][i], frames["quats"][i], frames["scales"][i], frames["opacities"][i],
                          frames["colors"][i], frames["viewmats"][i], frames["Ks"][i], width, height, backend=name)
        for attr in ("image", "alpha", "depth"):
            assert torch.equal(getattr(got, attr), getattr(alone, attr)), (i, attr)
        if name == "cpu":
            ref = rasterize(frames["means"][i], frames["quats"][i], frames["scales"][i], frames["opacities"][i],
                            frames["colors"][i], frames["viewmats"][i], frames["Ks"][i], width, height,
                            backend="torch")
            assert (got.image - ref.image).abs().max() < 1e-4
    # Frames differ from each other: the batch does not draw one frame B times.
    assert (batch[0].image - batch[1].image).abs().max() > 0.05
    with pytest.raises(ValueError, match=r"Ks must have B = 4 \(from means\) frames first"):
        rasterize_batch(**{**frames, "Ks": frames["Ks"][:3]}, width=width, height=height, backend=name)


@pytest.mark.skipif(CUDA, reason="checks the error raised when CUDA is missing")
def test_gsplat_backend_without_cuda():
    scene = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in _random_scene(10).items()}
    assert not has_gsplat_cuda()
    with pytest.raises(RuntimeError, match=r"^backend='gsplat' needs CUDA but torch.cuda.is_available\(\) is False"):
        _render(scene, backend="gsplat")


def test_import_does_not_load_gsplat_cuda():
    code = ("import sys, talkgs.render; "
            "print(sorted(m for m in sys.modules if m.startswith('gsplat.cuda') or m == 'gsplat.rendering'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# --- gsplat on CUDA -------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA: gsplat's kernels (JIT-built on first use)")
def test_torch_backend_matches_gsplat_on_cuda(monkeypatch):
    """The torch backend (on the GPU) against gsplat's CUDA kernels, float32, forward and backward.

    Tolerances: both are float32 with different summation orders (gsplat's atomics, our cumprod) and
    gsplat's fast exp, ~1e-6 per pixel. Where a pixel's alpha lies within round-off of 1/255 or of the
    early stop the two can take different branches, moving that pixel by up to ~1/255; hence a bulk
    bound (99.9% of values) and a loose bound on the worst value. Gradients are compared in relative L2
    over all Gaussians, which a branch flip moves by far less than 1e-3.
    """
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # full float32 matmuls
    g = torch.Generator().manual_seed(11)
    width, height = 128, 96
    cpu = _head_scene(g, 4000, width, height)
    names = ("means", "quats", "scales", "opacities", "colors")
    outs, grads, m2d_grads = {}, {}, {}
    cot = [torch.randn(height, width, c, generator=g).cuda() for c in (3, 1, 1)]
    for name in ("gsplat", "torch"):
        scene = {k: v.cuda() for k, v in cpu.items()}
        for k in names:
            scene[k].requires_grad_(True)
        out = rasterize(**scene, width=width, height=height, backend=name)
        out.info["means2d"].retain_grad()
        torch.autograd.backward((out.image, out.alpha, out.depth), cot)
        outs[name], grads[name] = out, [scene[k].grad for k in names]
        m2d_grads[name] = out.info["means2d"].grad
    ref, got = outs["gsplat"], outs["torch"]
    for attr in ("image", "alpha", "depth"):
        err = (getattr(got, attr) - getattr(ref, attr)).abs().flatten().float()
        assert torch.quantile(err, 0.999) < 1e-4, attr
        assert err.max() < 2e-2, attr
    r_ref, r_got = ref.info["radii"][0], got.info["radii"][0]
    same_vis = ((r_ref > 0).all(-1) == (r_got > 0).all(-1)).float().mean()
    assert same_vis > 0.999
    both = (r_ref > 0).all(-1) & (r_got > 0).all(-1)
    assert (r_ref[both] - r_got[both]).abs().max() <= 1
    assert torch.allclose(got.info["means2d"][0, both], ref.info["means2d"][0, both], atol=1e-3, rtol=0)
    for name, a, b in zip((*names, "means2d"), (*grads["torch"], m2d_grads["torch"]),
                          (*grads["gsplat"], m2d_grads["gsplat"])):
        assert float((a - b).norm() / b.norm()) < 1e-3, name


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_picks_gsplat_for_cuda_float32():
    scene = {k: v.float().cuda() if isinstance(v, torch.Tensor) else v for k, v in _random_scene(12).items()}
    assert has_gsplat_cuda()
    auto, ref = _render(scene), _render(scene, backend="gsplat")
    assert torch.equal(auto.image, ref.image)
    scene64 = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _random_scene(12).items()}
    assert _render(scene64).image.dtype == torch.float64  # float64 falls back to the torch backend


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA: gsplat's kernels (JIT-built on first use)")
def test_gsplat_batch_matches_its_frame_by_frame_result():
    """gsplat's one call over B frames against gsplat per frame (the same kernels, so within float32 round-off
    of another launch's order) and against the torch backend per frame (the bulk bound of the test above)."""
    g = torch.Generator().manual_seed(13)
    width, height = 128, 96
    frames = {k: v.cuda() for k, v in _frames(g, 8, 4000, width, height).items()}
    batch = rasterize_batch(**frames, width=width, height=height, backend="gsplat")
    for i, got in enumerate(batch):
        one = {k: v[i] for k, v in frames.items()}
        args = (one["means"], one["quats"], one["scales"], one["opacities"], one["colors"], one["viewmats"],
                one["Ks"], width, height)
        alone = rasterize(*args, backend="gsplat")
        ref = rasterize(*args, backend="torch")
        for attr in ("image", "alpha", "depth"):
            assert (getattr(got, attr) - getattr(alone, attr)).abs().max() < 1e-5, (i, attr)
            err = (getattr(got, attr) - getattr(ref, attr)).abs().flatten().float()
            assert torch.quantile(err, 0.999) < 1e-4, (i, attr)
        assert torch.equal(got.info["radii"], alone.info["radii"])
