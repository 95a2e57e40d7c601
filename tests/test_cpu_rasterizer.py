"""The compiled CPU rasterizer (talkgs/csrc/rasterize.cpp) against its twin, the PyTorch backend: projection,
SH colours, tile binning and compositing, forward (image, alpha, depth, the strategy's info) and backward
(every input)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_render import INPUT_NAMES, _head_scene, _random_scene, _with_grad

from talkgs.render import rasterize
from talkgs.render._cpu_backend import _ShCpu, cpu_kernels
from talkgs.render._torch_backend import _bin_tiles, _eval_sh, _project
from talkgs.utils import cpu_ext, log

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the kernels cannot be built")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    ext = cpu_kernels()
    assert ext is not None, "the CPU kernels failed to build (see the warning above)"
    return ext


def _float32(scene: dict) -> dict:
    return {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}


def _head_scene_4000(seed: int) -> dict:
    return {**_head_scene(torch.Generator().manual_seed(seed), 4000, 128, 96), "width": 128, "height": 96}


def _run(scene: dict, backend: str, cotangent_seed: int = 0):
    scene = _with_grad(scene)
    out = rasterize(**scene, backend=backend)
    out.info["means2d"].retain_grad()
    g = torch.Generator().manual_seed(cotangent_seed)
    cot = [torch.randn(t.shape, generator=g) for t in (out.image, out.alpha, out.depth)]
    torch.autograd.backward((out.image, out.alpha, out.depth), cot)
    grads = {name: scene[name].grad for name in INPUT_NAMES}
    grads["means2d"] = out.info["means2d"].grad
    return out, grads


# float32 kernels against float32 PyTorch: the same formulas in a different order (a polynomial exp2, per-pixel
# loops instead of cumprod). Measured: outputs within 1e-6 of each other, gradients within 2e-6 of each tensor's
# largest entry. A pixel whose alpha sits within round-off of 1/255 or of the early stop could take the other
# branch and move by up to ~1/255, so outputs get a bulk bound and a loose worst-case bound.
@pytest.mark.parametrize(("scene_fn", "seed"), [(_random_scene, 0), (_random_scene, 3), (_head_scene_4000, 11)])
def test_kernels_match_the_torch_twin(scene_fn, seed):
    scene = _float32(scene_fn(seed))
    want, want_grads = _run(scene, "torch")
    got, got_grads = _run(scene, "cpu")
    assert want.alpha.max() > 0.99, "the scene must saturate pixels (early stop)"
    for attr in ("image", "alpha", "depth"):
        err = (getattr(got, attr) - getattr(want, attr)).abs().flatten()
        assert torch.quantile(err, 0.999) < 1e-5, attr
        assert err.max() < 1e-2, attr
    for key in ("radii", "depths"):
        assert torch.equal(got.info[key], want.info[key]), key
    for key in ("means2d", "conics"):
        assert torch.allclose(got.info[key], want.info[key], rtol=1e-5, atol=1e-5), key
    assert {k: v for k, v in got.info.items() if not torch.is_tensor(v)} == \
        {k: v for k, v in want.info.items() if not torch.is_tensor(v)}
    for name, w in want_grads.items():
        assert w.abs().max() > 0, name
        rel = float((got_grads[name] - w).norm() / w.norm())
        assert rel < 1e-4, (name, rel)


def test_camera_gradients_go_through_the_twin_projection():
    """The kernels hold the camera fixed; a viewmat that needs gradients is projected by the PyTorch code."""
    scene = _float32(_random_scene(1))
    grads = {}
    for backend in ("torch", "cpu"):
        viewmat = scene["viewmat"].clone().requires_grad_(True)
        out = rasterize(**{**scene, "viewmat": viewmat}, backend=backend)
        (out.image.sum() + out.depth.sum()).backward()
        grads[backend] = viewmat.grad
    assert grads["torch"].abs().max() > 0
    assert torch.allclose(grads["cpu"], grads["torch"], rtol=1e-4, atol=1e-4)


def test_auto_picks_the_kernels_for_float32_on_the_cpu():
    scene = _float32(_random_scene(2))
    assert torch.equal(rasterize(**scene).image, rasterize(**scene, backend="cpu").image)
    scene64 = _random_scene(2)
    assert torch.equal(rasterize(**scene64).image, rasterize(**scene64, backend="torch").image)
    with pytest.raises(ValueError, match="float32 CPU"):
        rasterize(**scene64, backend="cpu")


def test_without_kernels_auto_falls_back_with_one_line(monkeypatch, capsys):
    scene = _float32(_random_scene(4))
    monkeypatch.setenv(cpu_ext.ENV_SWITCH, "0")
    monkeypatch.setattr(cpu_ext, "_told", set())
    cpu_ext.load_cpu_ext.cache_clear()
    try:
        out = rasterize(**scene)
        assert torch.equal(out.image, rasterize(**scene, backend="torch").image)
        rasterize(**scene)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "compiled CPU kernels unavailable (TALKGS_CPU_KERNELS=0)" in err[0], err
        with pytest.raises(RuntimeError, match="backend='torch'"):
            rasterize(**scene, backend="cpu")
    finally:
        cpu_ext.load_cpu_ext.cache_clear()


def test_nothing_visible():
    scene = _with_grad(_float32(_random_scene(8)))
    with torch.no_grad():
        scene["means"][:, 2] -= 100.0
    out = rasterize(**scene, backend="cpu")
    assert torch.equal(out.image, scene["background"].expand(32, 40, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    (out.image.sum() + out.depth.sum()).backward()
    assert (scene["means"].grad == 0).all()
    assert torch.equal(scene["background"].grad, torch.full((3,), 32.0 * 40.0))


@pytest.mark.parametrize("threads", [1, 2])
def test_tile_lists_equal_the_twins(kernels, threads):
    """The compiled binning (radix sort, threads filling their runs of the order) gives exactly the twin's lists,
    ties in depth included (they keep index order, as a stable sort does)."""
    scene = _float32(_head_scene_4000(5))
    with torch.no_grad():
        scene["means"][1000:1400] = scene["means"][1000:1001]  # 400 Gaussians at one depth, on the same spot
    args = [scene[k] for k in ("means", "quats", "scales", "opacities", "viewmat", "K", "width", "height")]
    proj = _project(*args, 0.01, 1e10)
    want = _bin_tiles(proj, scene["width"], scene["height"])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ids, offsets, counts = kernels.bin_tiles(proj.means2d, proj.conics, proj.depths, proj.radii, proj.extents,
                                                 scene["width"], scene["height"])
    finally:
        torch.set_num_threads(before)
    assert want.ids.numel() > 4000
    assert torch.equal(counts, want.counts) and torch.equal(offsets, want.offsets)
    assert torch.equal(ids, want.ids)


@pytest.mark.parametrize(("k", "degree"), [(1, 0), (4, 1), (9, 1), (9, 2)])
def test_sh_colours_equal_the_twins(kernels, k, degree):
    """SH colours towards the camera and their gradients (means, coefficients), clamped channels included."""
    g = torch.Generator().manual_seed(k + degree)
    means = torch.randn(3000, 3, generator=g).requires_grad_()
    coeffs = (0.6 * torch.randn(3000, k, 3, generator=g)).requires_grad_()
    viewmat = torch.eye(4)
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 4.0])
    cot = torch.randn(3000, 3, generator=g)
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    want = _eval_sh(coeffs, means - campos, degree)
    got = _ShCpu.apply(means, coeffs, viewmat, degree, kernels)
    assert (want == 0).any() and (want > 0).any(), "some channels must be clamped"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    want_grads = torch.autograd.grad(want, (means, coeffs), cot, allow_unused=True)
    got_grads = torch.autograd.grad(got, (means, coeffs), cot)
    if degree == 0:
        assert want_grads[0] is None and (got_grads[0] == 0).all()
    else:
        torch.testing.assert_close(got_grads[0], want_grads[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_grads[1], want_grads[1], rtol=1e-5, atol=1e-6)


def test_a_build_lock_left_by_a_killed_build_is_removed(monkeypatch, tmp_path, capsys):
    """torch waits for a build lock without a time limit: one left by a killed build hung every later command.
    A stale lock is removed with one line; a live build's lock is waited for and left alone."""
    import os
    import threading
    import time

    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = Path(_get_build_directory("talkgs_test_ext", verbose=False)) / "lock"
    lock.touch()
    old = time.time() - 2 * cpu_ext.STALE_LOCK_S
    os.utime(lock, (old, old))
    cpu_ext.clear_stale_build_lock("talkgs_test_ext")
    assert not lock.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted build" in err[0], err

    monkeypatch.setattr(log, "_quiet", False)  # an earlier test's --quiet must not hide the waiting line
    lock.touch()  # a build running in another process, done in 0.3 s
    threading.Timer(0.3, lock.unlink).start()
    start = time.monotonic()
    cpu_ext.clear_stale_build_lock("talkgs_test_ext")
    assert 0.25 < time.monotonic() - start < cpu_ext.STALE_LOCK_S
    assert "waiting for another process's build" in capsys.readouterr().err
