"""Tests of the face and mouth motion fields, ``apply_deltas`` and the layer compositing."""

from __future__ import annotations

import inspect
import shutil

import pytest
import torch

from talkgs.model.gaussians import GaussianModel
from talkgs.model.hashgrid import HashGridConfig
from talkgs.model.motion import (
    FaceMotionField,
    MotionDeltas,
    MotionFieldConfig,
    MouthMotionField,
    apply_deltas,
    head_first_layer,
    head_shared_term,
)
from talkgs.render.compositing import composite
from talkgs.render.rasterizer import RenderOutput, rasterize

A, E = 8, 5


def _config(**changes) -> MotionFieldConfig:
    # A small grid and narrow MLPs keep the tests at CPU speed.
    grid = HashGridConfig(levels=4, features=2, log2_table=10, base_resolution=8, max_resolution=64, bound=0.3)
    return MotionFieldConfig(**{"hashgrid": grid, "hidden": 16, "layers": 2, "audio_dim": A, "expr_dim": E,
                                **changes})


def _fields(seed: int = 0) -> tuple[FaceMotionField, MouthMotionField]:
    torch.manual_seed(seed)
    return FaceMotionField(_config(), impl="torch"), MouthMotionField(_config(), impl="torch")


def _points(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.4  # inside the grid


def _randomise_output(field, seed: int = 1) -> None:
    """Give the zero-initialised last layer non-zero weights, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        field.out.weight.copy_(torch.randn(field.out.weight.shape, generator=gen))
        field.out.bias.copy_(torch.randn(field.out.bias.shape, generator=gen))


@pytest.mark.parametrize("n", [1, 100, 1000])
def test_shapes(n):
    face, mouth = _fields()
    means = _points(n)
    d = face(means, torch.randn(A), torch.randn(E))
    assert d.d_means.shape == (n, 3) and d.d_quats.shape == (n, 4) and d.d_scales.shape == (n, 3)
    assert d.attention_audio.shape == (n, A) and d.attention_expr.shape == (n, E)
    d = face(means, torch.randn(3, A), torch.randn(3, E))
    assert d.d_means.shape == (3, n, 3) and d.d_quats.shape == (3, n, 4) and d.d_scales.shape == (3, n, 3)
    assert d.attention_audio.shape == (n, A)
    m = mouth(means, torch.randn(A))
    assert m.d_means.shape == (n, 3) and m.attention_audio.shape == (n, A)
    assert m.d_quats is None and m.d_scales is None and m.attention_expr is None
    assert mouth(means, torch.randn(2, A)).d_means.shape == (2, n, 3)


@pytest.mark.parametrize(
    ("means", "audio", "expr", "match"),
    [
        (torch.zeros(10, 2), torch.zeros(A), torch.zeros(E), r"^means must have shape \[N, 3\]"),
        (torch.zeros(10, 3, 1), torch.zeros(A), torch.zeros(E), r"^means must have shape"),
        (torch.zeros(10, 3), torch.zeros(A + 1), torch.zeros(E), r"^audio must have shape \[8\] or \[B, 8\]"),
        (torch.zeros(10, 3), torch.zeros(1, 1, A), torch.zeros(E), r"^audio must have shape"),
        (torch.zeros(10, 3), torch.zeros(A), torch.zeros(E - 1), r"^expression must have shape \[5\] or \[B, 5\]"),
        (torch.zeros(10, 3), torch.zeros(2, A), torch.zeros(3, E), r"^audio and expression must both be"),
        (torch.zeros(10, 3), torch.zeros(1, A), torch.zeros(E), r"^audio and expression must both be"),
        (torch.zeros(10, 3), torch.zeros(A, dtype=torch.float64), torch.zeros(E), r"^audio must be torch.float32"),
    ],
)
def test_bad_shapes(means, audio, expr, match):
    face, mouth = _fields()
    with pytest.raises(ValueError, match=match):
        face(means, audio, expr)
    if not match.startswith(("^expression", "^audio and")):
        with pytest.raises(ValueError, match=match):
            mouth(means, audio)


def test_config_validation():
    with pytest.raises(ValueError, match="^hidden must be >= 1"):
        _config(hidden=0)
    with pytest.raises(ValueError, match="^offset_scale must be > 0"):
        _config(offset_scale=0.0)


def _head() -> GaussianModel:
    torch.manual_seed(0)
    points = _points(60, seed=3) * 0.5
    model = GaussianModel.from_points(points, torch.rand(60, 3), sh_degree=1, init_opacity=0.5)
    with torch.no_grad():  # non-trivial rotations, so that normalising the raw quats matters
        model.params["quats"].add_(torch.randn(60, 4) * 0.3)
    return model


def _render(g: dict) -> RenderOutput:
    viewmat = torch.eye(4)
    viewmat[2, 3] = 0.5  # the head 0.5 in front of the camera
    K = torch.tensor([[40.0, 0.0, 12.0], [0.0, 40.0, 12.0], [0.0, 0.0, 1.0]])
    return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmat, K, 24, 24,
                     backend="torch")


def test_untrained_field_is_identity():
    face, mouth = _fields()
    model = _head()
    means = model.params["means"].detach()
    d = face(means, torch.randn(A), torch.rand(E))
    for t in (d.d_means, d.d_quats, d.d_scales):
        assert torch.count_nonzero(t) == 0
    static = model.activated()
    for deltas in (d, mouth(means, torch.randn(A))):
        deformed = apply_deltas(model, deltas)
        assert deformed.keys() == static.keys()
        for key in static:
            assert torch.equal(deformed[key], static[key]), key
        a, b = _render(deformed), _render(static)
        assert a.alpha.amax() > 0.1  # the head is in view
        assert torch.equal(a.image, b.image) and torch.equal(a.alpha, b.alpha)


def test_apply_deltas_batched_and_differentiable():
    model = _head()
    n = model.num_gaussians
    deltas = MotionDeltas(torch.randn(2, n, 3, requires_grad=True), torch.randn(2, n, 4, requires_grad=True),
                          torch.randn(2, n, 3, requires_grad=True) * 0.1, torch.rand(n, A), torch.rand(n, E))
    out = apply_deltas(model, deltas)
    assert out["means"].shape == (2, n, 3) and out["quats"].shape == (2, n, 4) and out["scales"].shape == (2, n, 3)
    assert out["opacities"].shape == (2, n) and out["colors"].shape == (2, n, 4, 3)
    torch.testing.assert_close(out["quats"].norm(dim=-1), torch.ones(2, n))
    sum(v.sum() for v in out.values()).backward()
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert model.params[name].grad is not None and model.params[name].grad.abs().sum() > 0, name
    assert deltas.d_means.grad is not None and deltas.d_quats.grad is not None
    mouth_out = apply_deltas(model, MotionDeltas(torch.zeros(3, n, 3), None, None, torch.rand(n, A), None))
    assert mouth_out["quats"].shape == (3, n, 4) and mouth_out["scales"].shape == (3, n, 3)
    with pytest.raises(ValueError, match=r"^d_means must have shape \[60, 3\]"):
        apply_deltas(model, MotionDeltas(torch.zeros(n + 1, 3), None, None, torch.rand(n, A), None))
    with pytest.raises(ValueError, match=r"^d_quats must have shape \[B, 60, 4\]"):
        apply_deltas(model, MotionDeltas(torch.zeros(2, n, 3), torch.zeros(n, 4), None, torch.rand(n, A), None))


def test_training_step_reaches_every_layer():
    face, mouth = _fields()
    means = _points(200)
    audio, expr = torch.randn(A), torch.rand(E)
    for field, call in ((face, lambda: face(means, audio, expr)), (mouth, lambda: mouth(means, audio))):
        opt = torch.optim.Adam(field.parameters(), lr=1e-2)

        def loss_of(d: MotionDeltas) -> torch.Tensor:
            offsets = [t for t in (d.d_means, d.d_quats, d.d_scales) if t is not None]
            return sum(((t - 1e-3) ** 2).mean() for t in offsets)

        loss_of(call()).backward()
        opt.step()  # only the zero-initialised last layer has a gradient at first; now it is non-zero
        opt.zero_grad()
        d = call()
        assert torch.count_nonzero(d.d_means) > 0
        if d.d_quats is not None:
            assert torch.count_nonzero(d.d_quats) > 0 and torch.count_nonzero(d.d_scales) > 0
        loss_of(d).backward()
        for name, param in field.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        names = {name for name, _ in field.named_parameters()}
        assert {"encoding.grids.0.embeddings", "audio_attention.weight", "out.weight"} <= names
        assert sum(name.startswith(("spatial.", "head.")) for name in names) == 4 * _config().layers


def test_audio_attention_responds_to_audio():
    face, mouth = _fields()
    _randomise_output(face)
    _randomise_output(mouth)
    means, expr = _points(100), torch.rand(E)
    a1, a2 = torch.randn(A), torch.randn(A)
    assert not torch.allclose(face(means, a1, expr).d_means, face(means, a2, expr).d_means)
    assert not torch.allclose(mouth(means, a1).d_means, mouth(means, a2).d_means)
    # Batched frames are the single frames stacked.
    batched = face(means, torch.stack([a1, a2]), torch.stack([expr, expr]))
    torch.testing.assert_close(batched.d_scales[1], face(means, a2, expr).d_scales)
    # Different Gaussians weight the audio channels differently.
    assert face(means, a1, expr).attention_audio.std(dim=0).min() > 0


def test_mouth_ignores_expression_by_construction():
    face, mouth = _fields()
    assert "expression" in inspect.signature(face.forward).parameters
    assert list(inspect.signature(mouth.forward).parameters) == ["means", "audio"]
    assert not any("expr" in name for name, _ in mouth.named_parameters())
    with pytest.raises(TypeError):
        mouth(_points(5), torch.randn(A), torch.rand(E))


def test_deterministic_with_seed():
    outputs = []
    for _ in range(2):
        face, mouth = _fields(seed=7)
        _randomise_output(face)
        _randomise_output(mouth)
        torch.manual_seed(11)
        audio, expr = torch.randn(A), torch.rand(E)
        outputs.append((face(_points(50), audio, expr), mouth(_points(50), audio)))
    (f1, m1), (f2, m2) = outputs
    for x, y in ((f1.d_means, f2.d_means), (f1.d_quats, f2.d_quats), (f1.attention_expr, f2.attention_expr),
                 (m1.d_means, m2.d_means)):
        assert torch.equal(x, y)


def test_head_first_layer_equals_the_concatenated_input():
    """The split first layer against its plain twin, layer(cat([h, attention * signal])) per frame, forward and
    backward, for one frame and a batch."""
    gen = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(16 + A + E, 16)
    for b in (1, 6):
        h, att = torch.randn(40, 16, generator=gen), torch.rand(40, A + E, generator=gen)
        signal = torch.randn(b, A + E, generator=gen)
        inputs = [t.requires_grad_() for t in (h, att, signal)]
        got = head_first_layer(layer, head_shared_term(layer, inputs[0]), *inputs[1:])
        want = layer(torch.cat([h.expand(b, -1, -1), att * signal[:, None]], dim=-1)).transpose(0, 1)
        assert got.shape == want.shape == (40, b, 16)
        assert torch.allclose(got, want, atol=1e-5)
        cot = torch.randn(want.shape, generator=gen)
        params = [*inputs, layer.weight, layer.bias]
        for g_got, g_want in zip(torch.autograd.grad(got, params, cot), torch.autograd.grad(want, params, cot)):
            assert torch.allclose(g_got, g_want, atol=1e-4)


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the kernel cannot be built")
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_compiled_head_equals_the_torch_head(layers):
    """Without gradients on the CPU the per-frame head runs compiled (talkgs/csrc/fields.cpp): the same offsets as
    the PyTorch head, for one frame and a batch, any number of hidden layers, N not a multiple of its 32-lane blocks."""
    from talkgs.utils.cpu_ext import load_cpu_ext

    assert load_cpu_ext("fields") is not None, "the kernel failed to build (see the warning above)"
    torch.manual_seed(layers)
    face, mouth = FaceMotionField(_config(layers=layers)), MouthMotionField(_config(layers=layers))
    _randomise_output(face)
    _randomise_output(mouth)
    points, audio, expr = _points(203), torch.randn(5, A), torch.rand(5, E)
    with torch.no_grad():
        for field, args in ((face, (audio, expr)), (mouth, (audio,))):
            for signals in (args, tuple(a[0] for a in args)):
                fast = field(points, *signals)
                field.impl = "torch"
                ref = field(points, *signals)
                field.impl = "auto"
                assert fast.d_means.shape == ref.d_means.shape
                assert torch.allclose(fast.d_means, ref.d_means, rtol=1e-5, atol=1e-6)
                if ref.d_quats is not None:
                    assert torch.allclose(fast.d_quats, ref.d_quats, rtol=1e-5, atol=1e-6)
                    assert torch.allclose(fast.d_scales, ref.d_scales, rtol=1e-5, atol=1e-6)
    assert face(points, audio, expr).d_means.requires_grad  # with gradients: the PyTorch head


def test_per_gaussian_part_is_reused_only_while_nothing_changed():
    """Without gradients the trunk (hash grid, spatial MLP, attention) runs once for repeated calls; a changed
    parameter or means, or gradients on, computes it again, and the results equal a fresh computation."""
    face, _ = _fields()
    _randomise_output(face)
    calls = []
    face.encoding.register_forward_hook(lambda *_: calls.append(1))
    points, audio, expr = _points(30), torch.randn(2, A), torch.rand(2, E)
    with torch.no_grad():
        first = face(points, audio, expr).d_means
        again = face(points, audio[:1], expr[:1]).d_means
        assert len(calls) == 1 and torch.equal(again[0], first[0])
        face.spatial[0].weight.mul_(2.0)  # as an optimiser step would
        changed = face(points, audio, expr).d_means
        assert len(calls) == 2 and not torch.equal(changed, first)
        moved = face(points + 0.01, audio, expr).d_means
        assert len(calls) == 3 and not torch.equal(moved, changed)
    fresh = face(points + 0.01, audio, expr).d_means  # gradients on: always computed
    assert len(calls) == 4 and torch.allclose(fresh, moved) and fresh.requires_grad


def _layer(color: float, alpha: float, h: int = 4, w: int = 5) -> RenderOutput:
    a = torch.full((h, w, 1), alpha)
    return RenderOutput(image=torch.full((h, w, 3), color) * a, alpha=a, depth=torch.zeros(h, w, 1))


def test_composite():
    torch.manual_seed(0)
    under = torch.rand(4, 5, 3)
    mouth = RenderOutput(image=torch.rand(4, 5, 3) * 0.5, alpha=torch.rand(4, 5, 1) * 0.5 + 0.5,
                         depth=torch.zeros(4, 5, 1))
    mouth_over = mouth.image + (1 - mouth.alpha) * under
    assert torch.equal(composite(_layer(0.7, 0.0), mouth, under), mouth_over)
    opaque = _layer(0.7, 1.0)
    assert torch.equal(composite(opaque, mouth, under), opaque.image)
    half = _layer(0.6, 0.5)
    assert torch.equal(composite(half, None, under), half.image + 0.5 * under)
    torch.testing.assert_close(composite(half, mouth, under), 0.3 + 0.5 * mouth_over)
    with pytest.raises(ValueError, match=r"^under must have shape \[H, W, 3\]"):
        composite(half, None, torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"^mouth must have image \[4, 5, 3\]"):
        composite(half, _layer(0.1, 0.5, h=3), under)
