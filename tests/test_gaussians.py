"""GaussianModel (init, activations, safetensors), the 3DGS PLY format, gsplat strategies, ``talkgs export``."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

from talkgs.cli.main import main
from talkgs.data import schema
from talkgs.errors import TalkgsError
from talkgs.model import GaussianModel, export_ply, load_ply
from talkgs.model.gaussians import SH_C0, nearest_neighbour_distances
from talkgs.render import rasterize

SPACING = 0.02


def grid_points(side: int = 5, spacing: float = SPACING) -> torch.Tensor:  # [side^3, 3]
    axis = torch.arange(side, dtype=torch.float32) * spacing
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3) + 0.3


def random_model(n: int = 50, sh_degree: int = 2, seed: int = 0) -> GaussianModel:
    """Every parameter random (unnormalised quats, any-sign logits), so no layout mix-up can go unseen."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    r = lambda *shape: torch.randn(*shape, generator=g)
    return GaussianModel(means=r(n, 3), quats=r(n, 4) * 2, scales=r(n, 3) - 3, opacities=r(n) * 2,
                         sh0=r(n, 1, 3), shN=r(n, k - 1, 3) * 0.3)


def assert_same_params(a: GaussianModel, b: GaussianModel) -> None:
    assert a.sh_degree == b.sh_degree
    assert set(a.params) == set(b.params)
    for name in a.params:
        assert torch.equal(a.params[name].float(), b.params[name]), name


def split_ply(data: bytes) -> tuple[list[str], bytes]:
    """Header lines and body of a PLY, parsed independently of talkgs.model.ply."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode("ascii").splitlines(), data[end:]


# -- initialisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sh_degree", [0, 1, 2])
def test_from_points_shapes_and_values(sh_degree):
    points = grid_points()
    n = len(points)
    rgb = torch.rand(n, 3, generator=torch.Generator().manual_seed(1))
    model = GaussianModel.from_points(points, rgb, sh_degree=sh_degree, init_opacity=0.1)
    k = (sh_degree + 1) ** 2
    shapes = {name: tuple(p.shape) for name, p in model.params.items()}
    assert shapes == {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3),
                      "shN": (n, k - 1, 3)}
    assert model.sh_degree == sh_degree and model.num_gaussians == n
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.params.values())

    act = model.activated()
    assert set(act) == {"means", "quats", "scales", "opacities", "colors"}
    assert act["colors"].shape == (n, k, 3)
    torch.testing.assert_close(act["colors"][:, 0] * SH_C0 + 0.5, rgb)
    assert torch.all(act["colors"][:, 1:] == 0)
    assert torch.equal(act["means"], points)
    assert torch.equal(act["quats"], torch.tensor([1.0, 0, 0, 0]).expand(n, 4))
    torch.testing.assert_close(act["opacities"], torch.full((n,), 0.1))
    # On a regular grid every point, corners included, has at least 3 neighbours at exactly the spacing.
    torch.testing.assert_close(act["scales"], torch.full((n, 3), SPACING))
    doubled = GaussianModel.from_points(points, rgb, sh_degree=sh_degree, scale_multiplier=2.0)
    torch.testing.assert_close(doubled.activated()["scales"], torch.full((n, 3), 2 * SPACING))


def test_from_points_is_float32_and_differentiable():
    points = torch.from_numpy(np.random.default_rng(0).normal(size=(40, 3)))  # float64, as numpy gives
    model = GaussianModel.from_points(points, torch.full((40, 3), 0.5, dtype=torch.float64), sh_degree=1)
    assert model.params["means"].dtype == torch.float32
    assert torch.all(model.params["sh0"] == 0)  # grey is the zero DC coefficient
    loss = sum(v.sum() for v in model.activated().values())
    loss.backward()
    assert all(p.grad is not None for p in model.params.values())


@pytest.mark.parametrize("cloud", ["uniform", "clusters", "plane", "duplicates"])
def test_nearest_neighbours_match_brute_force(cloud):
    g = torch.Generator().manual_seed(3)
    points = {
        "uniform": torch.rand(2000, 3, generator=g),
        "clusters": torch.cat([torch.randn(800, 3, generator=g) * 1e-3, torch.randn(800, 3, generator=g) * 5 + 50]),
        "plane": torch.cat([torch.rand(1500, 2, generator=g), torch.zeros(1500, 1)], dim=1),
        "duplicates": torch.rand(700, 3, generator=g).repeat(2, 1),
    }[cloud]
    p64 = points.double()
    d = torch.cdist(p64, p64, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(math.inf)
    expected = d.topk(3, dim=1, largest=False).values
    got = nearest_neighbour_distances(points, 3, chunk=200, max_block=50_000)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_from_points_rejects_bad_input():
    with pytest.raises(ValueError, match=r"points must have shape \[N, 3\], got \(4, 2\)"):
        GaussianModel.from_points(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="rgb must have shape"):
        GaussianModel.from_points(torch.rand(4, 3), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="sh_degree"):
        GaussianModel.from_points(torch.rand(4, 3), torch.zeros(4, 3), sh_degree=3)
    with pytest.raises(TalkgsError, match="at least 2 points"):
        GaussianModel.from_points(torch.rand(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="finite"):
        GaussianModel.from_points(torch.tensor([[0.0, 0, 0], [1, 1, math.nan]]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"quats must have shape \[3, 4\], got \[3, 3\]"):
        GaussianModel(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3), torch.zeros(3, 1, 3),
                      torch.zeros(3, 3, 3))


# -- safetensors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sh_degree", [0, 2])
def test_save_load_round_trip_is_exact(tmp_path, sh_degree):
    model = random_model(sh_degree=sh_degree)
    path = tmp_path / "g.safetensors"
    model.save(path)
    loaded = GaussianModel.load(path)
    assert_same_params(model, loaded)
    assert loaded.device == torch.device("cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]  # no staging file left behind

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "1" and meta["sh_degree"] == str(sh_degree) and "talkgs_version" in meta


def test_load_rejects_damaged_files(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    random_model(n=5, sh_degree=1).save(good)
    data = good.read_bytes()
    cases = {
        "truncated": (lambda p: p.write_bytes(data[: len(data) // 2]), "damaged or not a safetensors file"),
        "garbage": (lambda p: p.write_bytes(b"not a tensor file at all"), "damaged or not a safetensors file"),
        "foreign": (lambda p: save_file({"x": torch.zeros(2)}, str(p)), "not a talkgs Gaussians file"),
    }
    meta = {"format": "talkgs-gaussians", "format_version": "1", "sh_degree": "1"}
    tensors = {name: p.detach() for name, p in random_model(n=5, sh_degree=1).params.items()}
    cases["missing key"] = (lambda p: save_file({k: v for k, v in tensors.items() if k != "quats"}, str(p), meta),
                            "tensors")
    cases["bad shape"] = (lambda p: save_file({**tensors, "scales": torch.zeros(5, 2)}, str(p), meta),
                          r"scales must have shape \[5, 3\], got \[5, 2\]")
    cases["wrong degree"] = (lambda p: save_file(tensors, str(p), {**meta, "sh_degree": "2"}), "header says")
    cases["newer"] = (lambda p: save_file(tensors, str(p), {**meta, "format_version": "99"}), "update talkgs")
    for name, (write, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        write(path)
        with pytest.raises(TalkgsError, match=message) as info:
            GaussianModel.load(path)
        assert "\n" not in str(info.value), name
    with pytest.raises(TalkgsError, match="does not exist"):
        GaussianModel.load(tmp_path / "absent.safetensors")


# -- PLY -----------------------------------------------------------------------------------------------
REFERENCE_PROPS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
TAIL_PROPS = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("sh_degree", [0, 1, 2])
def test_ply_round_trip_is_exact(tmp_path, sh_degree):
    model = random_model(n=37, sh_degree=sh_degree, seed=sh_degree)
    path = tmp_path / "head.ply"
    assert export_ply(model, path) == 37
    loaded = load_ply(path)
    assert loaded.num_gaussians == 37
    assert_same_params(model, loaded)

    lines, body = split_ply(path.read_bytes())
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    props = REFERENCE_PROPS + [f"f_rest_{i}" for i in range(n_rest)] + TAIL_PROPS
    assert lines == ["ply", "format binary_little_endian 1.0", "element vertex 37",
                     *(f"property float {p}" for p in props), "end_header"]
    rows = np.frombuffer(body, dtype="<f4").reshape(37, len(props))
    col = {p: rows[:, i] for i, p in enumerate(props)}
    p = {name: t.detach().numpy() for name, t in model.params.items()}
    assert np.array_equal(np.stack([col["x"], col["y"], col["z"]], 1), p["means"])
    assert not np.any(rows[:, 3:6])  # normals
    assert np.array_equal(col["opacity"], p["opacities"])  # logit, as stored
    assert np.array_equal(np.stack([col[f"scale_{i}"] for i in range(3)], 1), p["scales"])  # log
    assert np.array_equal(np.stack([col[f"rot_{i}"] for i in range(4)], 1), p["quats"])  # w first, raw
    for i in range(n_rest):  # channel-major: f_rest_{c (K-1) + b} = shN[:, b, c]
        c, b = divmod(i, n_rest // 3)
        assert np.array_equal(col[f"f_rest_{i}"], p["shN"][:, b, c])


def write_reference_ply(path, props: list[tuple[str, str]], rows: list[tuple], fmt="binary_little_endian",
                        extra_header: str = "") -> None:
    """A PLY as the reference 3DGS code (plyfile) writes it; ``props`` are (type, name) pairs."""
    codes = {"float": "f", "uchar": "B", "double": "d", "int": "i"}
    header = (f"ply\nformat {fmt} 1.0\n{extra_header}element vertex {len(rows)}\n"
              + "".join(f"property {t} {name}\n" for t, name in props) + "end_header\n")
    order = "<" if fmt == "binary_little_endian" else ">"
    body = b"".join(struct.pack(order + "".join(codes[t] for t, _ in props), *row) for row in rows)
    path.write_bytes(header.encode() + body)


def test_load_reference_3dgs_ply(tmp_path):
    # N = 3, degree 1: f_rest_j of vertex i holds 100 i + j, so the channel-major mapping is checked value by value.
    n, rest = 3, 9
    props = ([("float", p) for p in REFERENCE_PROPS] + [("uchar", "red")]  # an extra property to skip
             + [("float", f"f_rest_{j}") for j in range(rest)] + [("float", p) for p in TAIL_PROPS]
             + [("double", "confidence")])
    rows = []
    for i in range(n):
        rows.append((i + 0.1, i + 0.2, i + 0.3, 0, 0, 1, 10 * i + 1, 10 * i + 2, 10 * i + 3, 255,
                     *(100 * i + j for j in range(rest)),
                     -1.5 + i, -4 - i, -5 - i, -6 - i, 2.0 + i, 0.5, -0.25, 0.125, 0.75))
    path = tmp_path / "ref.ply"
    write_reference_ply(path, props, rows, extra_header="comment written by a test\n")
    model = load_ply(path)
    assert model.sh_degree == 1 and model.num_gaussians == 3
    p = model.params
    for i in range(n):
        assert p["means"][i].tolist() == pytest.approx([i + 0.1, i + 0.2, i + 0.3])
        assert p["sh0"][i, 0].tolist() == [10 * i + 1, 10 * i + 2, 10 * i + 3]
        # Band coefficient b of channel c is f_rest_{3 c + b}: R = f_rest_0..2, G = 3..5, B = 6..8.
        assert p["shN"][i].tolist() == [[100 * i + b + 3 * c for c in range(3)] for b in range(3)]
        assert p["opacities"][i].item() == -1.5 + i
        assert p["scales"][i].tolist() == [-4 - i, -5 - i, -6 - i]
        assert p["quats"][i].tolist() == [2.0 + i, 0.5, -0.25, 0.125]
    act = model.activated()
    torch.testing.assert_close(act["colors"][:, 1, 0], torch.tensor([0.0, 100.0, 200.0]))  # band 1, red
    torch.testing.assert_close(act["colors"][:, 1, 1], torch.tensor([3.0, 103.0, 203.0]))  # band 1, green

    # Big-endian files and files without normals read the same.
    props_be = [(t, name) for t, name in props if name not in ("nx", "ny", "nz")]
    rows_be = [row[:3] + row[6:] for row in rows]
    write_reference_ply(tmp_path / "be.ply", props_be, rows_be, fmt="binary_big_endian")
    assert_same_params(model, load_ply(tmp_path / "be.ply"))


def test_load_ply_reads_gsplat_export(tmp_path):
    # gsplat's writer (no normals, same order otherwise) is pure numpy; the import is safe without CUDA.
    from gsplat.exporter import export_splats

    model = random_model(n=20, sh_degree=2, seed=4)
    p = {name: t.detach() for name, t in model.params.items()}
    export_splats(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"], p["shN"], format="ply",
                  save_to=str(tmp_path / "gsplat.ply"))
    assert_same_params(model, load_ply(tmp_path / "gsplat.ply"))


def test_load_ply_rejects_wrong_files(tmp_path):
    full = [("float", p) for p in REFERENCE_PROPS + TAIL_PROPS]
    row = tuple(range(len(full)))
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    (tmp_path / "image.ply").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    write_reference_ply(tmp_path / "mesh.ply", [("float", "x"), ("float", "y"), ("float", "z")], [(0, 1, 2)])
    write_reference_ply(tmp_path / "deg3.ply", full + [("float", f"f_rest_{j}") for j in range(45)],
                        [row + tuple(range(45))])
    write_reference_ply(tmp_path / "short.ply", full, [row, row])
    (tmp_path / "short.ply").write_bytes((tmp_path / "short.ply").read_bytes()[:-10])
    (tmp_path / "endless.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n" + b"\x00\xff" * 100)
    cases = {"ascii.ply": "ASCII PLY", "image.ply": "not a PLY file", "mesh.ply": "no f_dc_0",
             "deg3.ply": "45 f_rest properties", "short.ply": "truncated", "endless.ply": "header",
             "absent.ply": "does not exist"}
    for name, message in cases.items():
        with pytest.raises(TalkgsError, match=message) as info:
            load_ply(tmp_path / name)
        assert "\n" not in str(info.value), name


def test_export_ply_refuses_non_finite_and_leaves_nothing(tmp_path):
    model = random_model(n=4, sh_degree=0)
    with torch.no_grad():
        model.params["means"][2, 1] = math.nan
    with pytest.raises(TalkgsError, match="1 of 4 Gaussians"):
        export_ply(model, tmp_path / "bad.ply")
    assert list(tmp_path.iterdir()) == []


# -- gsplat strategies ---------------------------------------------------------------------------------
def adam_per_param(model: GaussianModel) -> dict[str, torch.optim.Adam]:
    return {name: torch.optim.Adam([p], lr=1e-3) for name, p in model.params.items()}


def adam_step(model: GaussianModel, optimizers: dict[str, torch.optim.Adam]) -> None:
    """One optimiser step on a loss touching every parameter, so Adam has state to keep in sync."""
    for opt in optimizers.values():
        opt.zero_grad()
    loss = sum((v ** 2).sum() for v in model.activated().values())
    loss.backward()
    for opt in optimizers.values():
        opt.step()


def test_gsplat_strategies_accept_the_params():
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    model = GaussianModel.from_points(grid_points(3), torch.rand(27, 3), sh_degree=1)
    optimizers = adam_per_param(model)
    DefaultStrategy().check_sanity(model.params, optimizers)
    MCMCStrategy().check_sanity(model.params, optimizers)


@pytest.mark.parametrize("sh_degree", [0, 2])
def test_default_strategy_densifies_and_prunes(tmp_path, sh_degree):
    from gsplat.strategy import DefaultStrategy

    model = GaussianModel.from_points(grid_points(3), torch.rand(27, 3), sh_degree=sh_degree, init_opacity=0.5)
    n0 = model.num_gaussians
    with torch.no_grad():
        model.params["scales"][:4] = math.log(1e-3)  # small: duplicated when the gradient is high
        model.params["scales"][4:8] = math.log(0.5)  # large: split
        model.params["opacities"][8:10] = -10.0  # nearly transparent: pruned
    optimizers = adam_per_param(model)
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, reset_every=10_000)
    strategy.check_sanity(model.params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    adam_step(model, optimizers)

    # What the rasterizer reports for one 64x64 camera that sees every Gaussian.
    means2d = torch.zeros(1, n0, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n0, 2)
    means2d.grad[0, :8] = 1.0
    info = {"means2d": means2d, "radii": torch.full((1, n0, 2), 3, dtype=torch.int32), "width": 64, "height": 64,
            "n_cameras": 1, "gaussian_ids": None}
    strategy.step_post_backward(model.params, optimizers, state, step=1, info=info)

    n = model.num_gaussians
    assert n == n0 + 4 + 4 - 2  # 4 duplicated, 4 split into 2, 2 pruned
    assert all(len(p) == n for p in model.params.values())
    for name, opt in optimizers.items():
        (param,) = opt.param_groups[0]["params"]
        assert param is model.params[name]
        assert opt.state[param]["exp_avg"].shape == param.shape
        assert opt.state[param]["exp_avg_sq"].shape == param.shape
    assert model.params["shN"].shape == (n, (sh_degree + 1) ** 2 - 1, 3)
    assert torch.all(torch.sigmoid(model.params["opacities"]) > strategy.prune_opa)
    strategy.check_sanity(model.params, optimizers)
    adam_step(model, optimizers)  # training goes on with the resized state
    assert all(v.shape[0] == n for v in model.activated().values())
    model.save(tmp_path / "g.safetensors")
    assert_same_params(model, GaussianModel.load(tmp_path / "g.safetensors"))


# -- talkgs export -------------------------------------------------------------------------------------
def fitted_model_file(path, face: GaussianModel) -> None:
    """A fitted model file (``talkgs.model.fitted``) whose static head is ``face``; the rest is small."""
    import numpy as np

    from talkgs.model.fitted import FittedModel, Replay, encode_layer, header_for
    from talkgs.model.talking_head import HeadConfig, TalkingHead

    head = TalkingHead(face, random_model(n=4, sh_degree=face.sh_degree, seed=3), 8, HeadConfig())
    header = header_for(head, audio_dim=8, fps=25.0, resolution=16, layer_size=16, K=np.eye(3), audio={},
                        backend="torch", device="cpu", source="fake", draws={"mouth": False, "face_motion": False,
                                                                              "mouth_motion": False})
    replay = Replay(w2c=np.eye(4)[None], expression=np.zeros((1, 2)), train=np.zeros(1, np.int64),
                    cuts=np.zeros(0, np.int64), pivot=np.zeros(3), expression_open=np.zeros(2),
                    expression_closed=np.zeros(2))
    layer = encode_layer(np.zeros((16, 16, 4), np.uint8))
    FittedModel(head, header, replay, encode_layer(np.zeros((16, 16, 3), np.uint8)), {0: layer}).save(path)


def fake_subject(root, fitted: bool = True, model: GaussianModel | None = None):
    """A folder with just what ``talkgs export`` reads: the manifest and, when fitted, the fitted model."""
    root.mkdir()
    (root / schema.MANIFEST).write_text(json.dumps({"format_version": schema.FORMAT_VERSION}))
    if fitted:
        (root / schema.FIT_DIR).mkdir()
        fitted_model_file(root / schema.MODEL, model or random_model(n=12, sh_degree=1))
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_export_cli_writes_the_ply(tmp_path, capsys):
    model = random_model(n=12, sh_degree=1)
    subject = fake_subject(tmp_path / "subj", model=model)
    out = tmp_path / "head.ply"
    code, err = run_cli(capsys, "export", subject, "--ply", out)
    assert code == 0, err
    assert "wrote 12 Gaussians" in err
    assert_same_params(model, load_ply(out))

    code, err = run_cli(capsys, "export", subject, "--ply", out)
    assert code == 2
    assert err.strip().splitlines() == [f"talkgs: error: {out} already exists; pass --force to replace it"]

    fitted_model_file(subject / schema.MODEL, random_model(n=5, sh_degree=1, seed=7))
    code, err = run_cli(capsys, "export", subject, "--ply", out, "--force")
    assert code == 0, err
    assert load_ply(out).num_gaussians == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.ply", "subj"]  # no staging file left behind


def test_export_cli_errors(tmp_path, capsys):
    out = tmp_path / "head.ply"
    plain = tmp_path / "plain"
    plain.mkdir()
    code, err = run_cli(capsys, "export", plain, "--ply", out)
    assert code == 2
    assert err.strip().splitlines() == [
        f"talkgs: error: {plain} is neither a fitted subject folder nor a fitted model file"]

    unfitted = fake_subject(tmp_path / "unfitted", fitted=False)
    code, err = run_cli(capsys, "export", unfitted, "--ply", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"run talkgs fit {unfitted} first" in err

    damaged = fake_subject(tmp_path / "damaged", fitted=False)
    (damaged / schema.FIT_DIR).mkdir()
    (damaged / schema.MODEL).write_bytes(b"\x00" * 20)
    code, err = run_cli(capsys, "export", damaged, "--ply", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "damaged" in err
    assert not out.exists()


# -- rendering -------------------------------------------------------------------------------------------
def test_ply_round_trip_renders_the_same_image(tmp_path):
    g = torch.Generator().manual_seed(5)
    n = 200
    means = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 1.0])
    model = random_model(n=n, sh_degree=2, seed=5)
    with torch.no_grad():
        model.params["means"].copy_(means)
        model.params["scales"].copy_(torch.log(torch.rand(n, 3, generator=g) * 0.03 + 0.005))
    export_ply(model, tmp_path / "m.ply")
    loaded = load_ply(tmp_path / "m.ply")

    viewmat = torch.eye(4)
    K = torch.tensor([[60.0, 0, 32], [0, 60, 32], [0, 0, 1]])

    def image(m: GaussianModel) -> torch.Tensor:  # [64, 64, 4] RGB and alpha
        a = m.activated()
        with torch.no_grad():
            out = rasterize(a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], viewmat, K,
                            64, 64, background=torch.tensor([0.2, 0.4, 0.6]), backend="torch")
        return torch.cat([out.image, out.alpha], dim=-1)

    original, reloaded = image(model), image(loaded)
    assert original[..., 3].max() > 0.5  # the Gaussians are in view
    assert torch.equal(reloaded, original)
