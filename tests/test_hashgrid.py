"""The 2D multires hash grid against a per-point numpy reference, the tri-plane encoding, and the CUDA kernels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from talkgs.model.hashgrid import HashGrid2D, HashGridConfig, TriPlaneHashEncoding, level_resolutions

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


def test_auto_impl_on_cpu_uses_torch_and_cuda_impl_rejects_cpu_inputs():
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
