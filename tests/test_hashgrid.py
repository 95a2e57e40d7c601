"""The 2D multires hash grid against a per-point numpy reference, the tri-plane encoding, the compiled CPU kernel
(talkgs/csrc/hashgrid.cpp) against the PyTorch reference, and the CUDA kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from talkgs.model.hashgrid import (
    HashGrid2D,
    HashGridConfig,
    TriPlaneHashEncoding,
    hashgrid2d_torch,
    level_resolutions,
)
from talkgs.utils import cpu_ext
from talkgs.utils.cpu_ext import ENV_SWITCH, load_cpu_ext

# 3 levels of 4, 8 and 16 cells in a 64-row table: level 0 (25 vertices) is dense, levels 1 and 2 are hashed.
SMALL = dict(levels=3, features=2, log2_table=6, base_resolution=4, max_resolution=16)


def small_grid(seed: int = 0, impl: str = "torch") -> HashGrid2D:
    torch.manual_seed(seed)
    grid = HashGrid2D(**SMALL, impl=impl)
    with torch.no_grad():  # O(1) values make interpolation errors visible, unlike the 1e-4 initialisation
        grid.embeddings.normal_()
    return grid


def reference_corners(x: float, y: float, res: int, table_size: int) -> list[tuple[int, float]]:
    """(table row, bilinear weight) of the 4 corners of the cell holding (x, y), written out point by point."""
    x, y = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    px, py = np.float32(x) * np.float32(res), np.float32(y) * np.float32(res)
    ix, iy = min(int(np.floor(px)), res - 1), min(int(np.floor(py)), res - 1)
    fx, fy = float(px - ix), float(py - iy)
    out = []
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        cx, cy = ix + dx, iy + dy
        if (res + 1) ** 2 <= table_size:
            row = cx + cy * (res + 1)
        else:
            row = ((cx * 1) ^ ((cy * 2654435761) % 2**32)) % table_size
        out.append((row, w))
    return out


def reference_forward(xy: np.ndarray, emb: np.ndarray, resolutions: list[int]) -> np.ndarray:
    levels, table_size, feats = emb.shape
    out = np.zeros((len(xy), levels * feats))
    for p, (x, y) in enumerate(xy):
        for level, res in enumerate(resolutions):
            for row, w in reference_corners(x, y, res, table_size):
                out[p, level * feats:(level + 1) * feats] += w * emb[level, row]
    return out


def reference_grad(xy: np.ndarray, grad_out: np.ndarray, shape: tuple[int, int, int], resolutions) -> np.ndarray:
    """d(sum(out * grad_out)) / d(embeddings): each corner row receives its weight times the output gradient."""
    levels, table_size, feats = shape
    grad = np.zeros(shape)
    for p, (x, y) in enumerate(xy):
        for level, res in enumerate(resolutions):
            for row, w in reference_corners(x, y, res, table_size):
                grad[level, row] += w * grad_out[p, level * feats:(level + 1) * feats]
    return grad


def test_level_resolutions_and_indexing_modes():
    assert level_resolutions(3, 4, 16) == [4, 8, 16]
    assert level_resolutions(12, 16, 512)[-1] == 512
    assert level_resolutions(1, 16, 512) == [16]
    grid = small_grid()
    dense = [(r + 1) ** 2 <= grid.table_size for r in grid.resolutions.tolist()]
    assert dense == [True, False, False]


def test_torch_matches_reference_values_and_embedding_grads():
    grid = small_grid()
    rng = np.random.default_rng(1)
    xy = rng.uniform(-0.1, 1.1, size=(64, 2)).astype(np.float32)  # some outside [0, 1] to exercise clamping
    xy[:4] = [[0, 0], [1, 1], [0, 1], [1, 0]]
    res = grid.resolutions.tolist()
    out = grid(torch.from_numpy(xy))
    emb = grid.embeddings.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(out.detach().numpy(), reference_forward(xy, emb, res), rtol=1e-5, atol=1e-5)

    grad_out = rng.standard_normal(out.shape)
    (out * torch.from_numpy(grad_out).float()).sum().backward()
    expected = reference_grad(xy, grad_out, tuple(grid.embeddings.shape), res)
    np.testing.assert_allclose(grid.embeddings.grad.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(expected[1:]) > 0  # the hashed levels were exercised too


def test_grid_vertices_reproduce_corner_embeddings():
    grid = small_grid()
    emb = grid.embeddings.detach().numpy()
    for level, res in enumerate(grid.resolutions.tolist()):
        ij = np.array([(i, j) for i in range(res + 1) for j in range(res + 1)])
        out = grid(torch.from_numpy((ij / res).astype(np.float32))).detach().numpy()
        for (i, j), row_out in zip(ij, out):
            rows = {row for row, w in reference_corners(i / res, j / res, res, grid.table_size) if w > 0.5}
            assert len(rows) == 1  # the vertex itself carries (almost) all the weight
            expected = emb[level, rows.pop()]
            np.testing.assert_allclose(row_out[level * 2:(level + 1) * 2], expected, atol=2e-6)


def test_output_is_continuous():
    grid = small_grid()
    torch.manual_seed(2)
    xy = torch.rand(500, 2)
    eps = 1e-4
    step = torch.randn(500, 2)
    step = step / step.norm(dim=1, keepdim=True) * eps
    change = (grid(xy + step) - grid(xy)).abs().max().item()
    # Lipschitz bound of bilinear interpolation: a per-axis slope of at most R * (max - min) of the corner values.
    emb = grid.embeddings.detach()
    bound = 2 * max(grid.resolutions.tolist()) * (emb.max() - emb.min()).item() * eps
    assert 0 < change <= bound
    # Crossing a cell boundary does not jump either.
    edge = torch.tensor([[0.25, 0.4], [0.5, 0.5], [0.4375, 0.8]])
    jump = (grid(edge + 1e-6) - grid(edge - 1e-6)).abs().max().item()
    assert jump < 1e-3


def test_triplane_shapes_clamping_gradients_and_determinism():
    config = HashGridConfig(levels=4, features=2, log2_table=10, base_resolution=8, max_resolution=64, bound=0.2)
    torch.manual_seed(0)
    enc = TriPlaneHashEncoding(config, impl="torch")
    torch.manual_seed(0)
    twin = TriPlaneHashEncoding(config, impl="torch")
    assert all(torch.equal(a, b) for a, b in zip(enc.parameters(), twin.parameters()))
    for grid in enc.grids:
        assert grid.embeddings.shape == (4, 1024, 2)
        assert grid.embeddings.abs().max() <= 1e-4

    points = (torch.rand(300, 3) - 0.5) * 0.4
    out = enc(points)
    assert out.shape == (300, enc.out_dim) == (300, 3 * 4 * 2)
    assert torch.equal(out, enc(points)) and torch.equal(out, twin(points))

    outside = torch.tensor([[0.5, -0.7, 0.25], [-1.0, 3.0, -0.3]])
    assert torch.equal(enc(outside), enc(outside.clamp(-0.2, 0.2)))

    out.square().sum().backward()
    for grid in enc.grids:
        assert grid.embeddings.grad is not None and grid.embeddings.grad.abs().sum() > 0

    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        enc(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="float32"):
        enc(torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="impl"):
        TriPlaneHashEncoding(config, impl="triton")


def test_auto_impl_on_cpu_equals_the_reference_and_cuda_impl_rejects_cpu_inputs():
    grid = small_grid(impl="auto")
    xy = torch.rand(10, 2)
    assert torch.equal(grid(xy), small_grid(impl="torch")(xy))
    with pytest.raises(ValueError, match="CUDA inputs"):
        small_grid(impl="cuda")(xy)


def test_import_does_not_build_the_extension():
    code = (
        "import sys, talkgs.model.hashgrid as h, talkgs.model._ext as e; "
        "print('talkgs_hashgrid' in sys.modules, e.load_hashgrid_ext.cache_info().currsize)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "0"]


# --- the compiled CPU kernel (talkgs/csrc/hashgrid.cpp) against hashgrid2d_torch ---------------------------------

needs_cxx = pytest.mark.skipif(
    shutil.which("c++") is None, reason="no C++ compiler (c++) to build talkgs/csrc/hashgrid.cpp"
)
# 4 levels of 4, 20, 101 and 512 cells: with 256 rows only level 0 is dense, with 1024 rows levels 0 and 1 are.
KERNEL = dict(levels=4, features=2, base_resolution=4, max_resolution=512)


@pytest.fixture
def cpu_kernel(monkeypatch):
    """The compiled module; a failed build fails the test rather than skipping it."""
    switched_off = os.environ.get(ENV_SWITCH) == "0"
    if switched_off:  # these tests are about the kernel itself
        monkeypatch.delenv(ENV_SWITCH)
        load_cpu_ext.cache_clear()
    ext = load_cpu_ext("hashgrid")
    assert ext is not None, "talkgs/csrc/hashgrid.cpp did not build; the warning line above says why"
    yield ext
    if switched_off:
        load_cpu_ext.cache_clear()  # later tests see the switch again


def grid_pair(seed: int = 0, **kw) -> tuple[HashGrid2D, HashGrid2D]:
    """The same grid with impl="torch" and impl="cpu", O(1) embeddings."""
    torch.manual_seed(seed)
    ref = HashGrid2D(**kw, impl="torch")
    with torch.no_grad():
        ref.embeddings.normal_()
    fast = HashGrid2D(**kw, impl="cpu")
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def awkward_points(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 2]: random points in [-0.2, 1.2]^2, then the corners and edges of [0, 1]^2, -0, points just outside,
    and vertices of every level (multiples of 1/512 are exact in float32; k/20 and k/101 land within an ulp)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 1.4 - 0.2
    special = [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-0.0, 0.5], [0.5, -0.0], [-1e-7, 0.3], [0.3, 1 + 1e-7],
               [-5.0, 7.0], [0.5, 1.0], [1.0, 0.25]]
    xy[:len(special)] = torch.tensor(special)
    start = len(special)
    for res in (4, 20, 101, 512):
        k = torch.randint(0, res + 1, (64, 2), generator=gen)
        xy[start:start + 64] = k.float() / res
        start += 64
    return xy


def assert_grads_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # The xy gradient sums slopes of up to R = 512 times O(1) values over levels; float rounding in a different
    # order is relative to that scale, not to each (possibly cancelling) entry.
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


@needs_cxx
@pytest.mark.parametrize("log2_table", [8, 10])
def test_cpu_kernel_matches_torch_values_and_both_gradients(cpu_kernel, log2_table):
    ref, fast = grid_pair(**KERNEL, log2_table=log2_table)
    dense = [(r + 1) ** 2 <= ref.table_size for r in ref.resolutions.tolist()]
    assert any(dense) and not all(dense)
    xy = awkward_points(2000)
    x_ref, x_fast = xy.clone().requires_grad_(), xy.clone().requires_grad_()
    out_ref, out_fast = ref(x_ref), fast(x_fast)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(1))
    (out_ref * grad_out).sum().backward()
    (out_fast * grad_out).sum().backward()
    torch.testing.assert_close(fast.embeddings.grad, ref.embeddings.grad, rtol=1e-5, atol=1e-5)
    assert_grads_close(x_fast.grad, x_ref.grad)
    # clamp passes the gradient on [0, 1] inclusive and blocks it outside, as autograd of the torch code does.
    inside = (xy >= 0) & (xy <= 1)
    assert torch.all(x_fast.grad[~inside] == 0) and torch.all(x_fast.grad[:4] != 0)
    assert torch.count_nonzero(x_fast.grad[inside]) == inside.sum()

    # The module's entry points directly: no xy gradient asked for gives an empty tensor.
    emb, res = ref.embeddings.detach(), ref.resolutions
    grad_emb, grad_xy = cpu_kernel.backward(grad_out, xy, emb, res, False)
    torch.testing.assert_close(grad_emb, ref.embeddings.grad, rtol=1e-5, atol=1e-5)
    assert grad_xy.numel() == 0
    torch.testing.assert_close(cpu_kernel.forward(xy, emb, res), hashgrid2d_torch(xy, emb, res), rtol=1e-5, atol=1e-6)


@needs_cxx
def test_cpu_kernel_hash_rows_match_torch_at_high_resolutions(cpu_kernel):
    # iy * 2654435761 passes 2^32 from iy = 2 and reaches ~2^51 at R = 2^20: torch's int64 rows and the kernel's
    # uint32 ones must still agree (a wrong row changes a value by O(1)).
    ref, fast = grid_pair(levels=3, features=3, log2_table=12, base_resolution=1000, max_resolution=2**20)
    assert ref.resolutions.tolist()[-1] == 2**20
    xy = torch.cat([awkward_points(1000), 1 - torch.rand(1000, 2) * 1e-3])  # large ix, iy near the top edge
    torch.testing.assert_close(fast(xy), ref(xy), rtol=1e-5, atol=1e-6)


@needs_cxx
def test_cpu_kernel_threads_split_points_deterministically(cpu_kernel):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # enough points for two per-thread gradient tables, summed at the end
    try:
        ref, fast = grid_pair(**KERNEL, log2_table=8)
        xy = awkward_points(8192)
        grad_out = torch.randn(8192, fast.out_dim)
        emb, res = fast.embeddings.detach(), fast.resolutions
        first = cpu_kernel.backward(grad_out, xy, emb, res, True)
        second = cpu_kernel.backward(grad_out, xy, emb, res, True)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        x_ref = xy.clone().requires_grad_()
        (ref(x_ref) * grad_out).sum().backward()
        torch.testing.assert_close(first[0], ref.embeddings.grad, rtol=1e-5, atol=1e-5)
        assert_grads_close(first[1], x_ref.grad)
    finally:
        torch.set_num_threads(threads)


@needs_cxx
def test_cpu_kernel_rejects_bad_inputs(cpu_kernel):
    ref, fast = grid_pair(**KERNEL, log2_table=8)
    emb, res = fast.embeddings.detach(), fast.resolutions
    with pytest.raises(RuntimeError, match="NaN"):  # the torch code fails too (index out of range)
        fast(torch.tensor([[0.5, 0.5], [float("nan"), 0.2]]))
    with pytest.raises(RuntimeError, match=r"\[N, 2\]"):
        cpu_kernel.forward(torch.rand(5, 3), emb, res)
    with pytest.raises(RuntimeError, match="float32"):
        cpu_kernel.forward(torch.rand(5, 2), emb.double(), res)
    with pytest.raises(RuntimeError, match="int32"):
        cpu_kernel.forward(torch.rand(5, 2), emb, res.long())
    with pytest.raises(RuntimeError, match="contiguous"):
        cpu_kernel.forward(torch.rand(2, 5).t(), emb, res)
    with pytest.raises(RuntimeError, match="grad_out"):
        cpu_kernel.backward(torch.rand(5, 7), torch.rand(5, 2), emb, res, True)
    fast.double()
    with pytest.raises(ValueError, match="float32 embeddings"):
        fast(torch.rand(5, 2))
    auto = HashGrid2D(**KERNEL, log2_table=8, impl="auto").double()  # auto leaves float64 tables to torch
    assert auto(torch.rand(5, 2)).dtype == torch.float64


@needs_cxx
def test_triplane_auto_runs_the_cpu_kernel_and_matches_torch_with_gradients(cpu_kernel):
    config = HashGridConfig(levels=4, features=2, log2_table=10, base_resolution=4, max_resolution=512, bound=0.2)
    torch.manual_seed(0)
    ref = TriPlaneHashEncoding(config, impl="torch")
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    fast = TriPlaneHashEncoding(config, impl="auto")
    fast.load_state_dict(ref.state_dict())
    points = (torch.rand(3000, 3) - 0.5) * 0.5  # some outside the cube, clamped to its faces
    points[:3] = torch.tensor([[0.2, -0.2, 0.0], [-0.2, 0.2, 0.2], [0.3, 0.0, -0.25]])
    assert all(grid._cpu_ext(points[:, :2]) is cpu_kernel for grid in fast.grids)
    p_ref, p_fast = points.clone().requires_grad_(), points.clone().requires_grad_()
    out_ref, out_fast = ref(p_ref), fast(p_fast)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn(out_ref.shape)
    (out_ref * grad_out).sum().backward()
    (out_fast * grad_out).sum().backward()
    for g_ref, g_fast in zip(ref.grids, fast.grids):
        torch.testing.assert_close(g_fast.embeddings.grad, g_ref.embeddings.grad, rtol=1e-5, atol=1e-5)
    assert_grads_close(p_fast.grad, p_ref.grad)
    assert torch.count_nonzero(p_fast.grad) > 0


def test_cpu_kernels_switched_off_fall_back_to_torch(monkeypatch, capsys):
    monkeypatch.setenv(ENV_SWITCH, "0")
    monkeypatch.setattr(cpu_ext, "_told", set())
    load_cpu_ext.cache_clear()
    try:
        assert load_cpu_ext("hashgrid") is None
        assert f"{ENV_SWITCH}=0" in capsys.readouterr().err  # the one line saying the slower twin runs
        ref, auto = small_grid(impl="torch"), small_grid(impl="auto")
        xy = torch.rand(200, 2) * 1.2 - 0.1
        assert auto._cpu_ext(xy) is None
        x_ref, x_auto = xy.clone().requires_grad_(), xy.clone().requires_grad_()
        out_ref, out_auto = ref(x_ref), auto(x_auto)
        assert torch.equal(out_auto, out_ref)
        out_ref.square().sum().backward()
        out_auto.square().sum().backward()
        assert torch.equal(auto.embeddings.grad, ref.embeddings.grad) and torch.equal(x_auto.grad, x_ref.grad)
        assert capsys.readouterr().err == ""  # said once, not per call
    finally:
        load_cpu_ext.cache_clear()  # the next caller loads the kernel again, with the switch restored


def test_import_does_not_build_the_cpu_kernel():
    code = (
        "import sys, talkgs.model.hashgrid as h, talkgs.utils.cpu_ext as c; h.TriPlaneHashEncoding(); "
        "print(c.load_cpu_ext.cache_info().currsize)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU to run the CUDA kernels")
def test_cuda_kernels_match_torch():
    from torch.utils.cpp_extension import CUDA_HOME

    from talkgs.model._ext import load_hashgrid_ext

    if CUDA_HOME is None:
        pytest.skip("no CUDA toolkit to build the extension")
    assert load_hashgrid_ext() is not None, "the CUDA extension failed to build"
    device = torch.device("cuda")
    for kw in (SMALL, dict(levels=12, features=2, log2_table=14, base_resolution=16, max_resolution=512)):
        torch.manual_seed(3)
        ref = HashGrid2D(**kw, impl="torch").to(device)
        with torch.no_grad():
            ref.embeddings.normal_()
        fast = HashGrid2D(**kw, impl="cuda").to(device)
        fast.load_state_dict(ref.state_dict())
        xy = torch.rand(20_000, 2, device=device) * 1.2 - 0.1
        grad_out = torch.randn(20_000, ref.out_dim, device=device)
        out_ref, out_fast = ref(xy), fast(xy)
        torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
        (out_ref * grad_out).sum().backward()
        (out_fast * grad_out).sum().backward()
        torch.testing.assert_close(fast.embeddings.grad, ref.embeddings.grad, rtol=1e-4, atol=1e-4)
