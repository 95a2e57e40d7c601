"""Persistent 3D Gaussians: raw parameters in gsplat's naming, their activations, initialisation and storage.

The model owns parameters only. Optimizers (one per parameter) and densification state belong to the
trainer and to ``gsplat.strategy``, whose ``DefaultStrategy`` / ``MCMCStrategy`` edit ``params`` in place.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from talkgs.errors import TalkgsError

SH_C0 = 0.28209479177387814  # the constant degree-0 SH basis, 1 / (2 sqrt(pi)); gsplat: rgb = SH_C0 * sh0 + 0.5
SH_DEGREES = (0, 1, 2)
PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")
FILE_FORMAT = "talkgs-gaussians"
FILE_FORMAT_VERSION = 1  # bump when an older reader would misread a file


def num_sh_bases(sh_degree: int) -> int:
    """K, the number of SH coefficients per colour channel up to ``sh_degree``."""
    return (sh_degree + 1) ** 2


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC SH coefficients whose colour is ``rgb`` (same shape, values in [0, 1])."""
    return (rgb - 0.5) / SH_C0


def nearest_neighbour_distances(
    points: Tensor,  # [N, 3]
    k: int = 3,
    chunk: int = 256,
    max_block: int = 2**24,
) -> Tensor:  # [N, k]
    """Exact distances from each point to its ``k`` nearest other points, ascending.

    Brute force with ``torch.cdist``, made fast by spatial culling: the points are sorted along a Morton
    curve and each run of ``chunk`` consecutive (hence nearby) queries is compared only with the points
    inside its bounding box grown by a radius r. A query whose k-th distance is at most r has its exact
    answer (every point outside the grown box is farther than r); the others retry with r doubled. At most
    ``max_block`` pairwise distances (64 MiB in float32 by default) exist at a time, so memory stays bounded
    and 100k points take about two seconds on CPU (half a minute without the culling).
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
    n = points.shape[0]
    if not 0 < k < n:
        raise ValueError(f"need more than k={k} points, got {n}")
    if not torch.isfinite(points).all():
        raise ValueError("points must be finite")
    order = _morton_order(points.detach())  # [N]
    pts = points.detach()[order]  # [N, 3], spatially coherent
    out = torch.empty(n, k, dtype=pts.dtype, device=pts.device)
    for start in range(0, n, chunk):
        todo = torch.arange(start, min(start + chunk, n), device=pts.device)  # [B] indices into pts
        q = pts[todo]
        # The spacing if the run filled its bounding cube: too large for a surface, too small only for a
        # run that straddles a jump of the curve, which doubling fixes.
        extent = float((q.max(dim=0).values - q.min(dim=0).values).max())
        radius = max(extent / todo.numel() ** (1 / 3), 1e-12)
        while todo.numel():
            q = pts[todo]  # [T, 3]
            inside = ((pts >= q.min(dim=0).values - radius) & (pts <= q.max(dim=0).values + radius)).all(dim=1)
            cand = inside.nonzero()[:, 0]  # [C], ascending; holds every query of todo
            dist = _block_knn(q, todo, pts, cand, k, max_block)  # [T, k]
            done = dist[:, -1] <= radius if cand.numel() < n else torch.ones_like(todo, dtype=torch.bool)
            out[todo[done]] = dist[done]
            todo = todo[~done]
            radius *= 2.0
    result = torch.empty_like(out)
    result[order] = out
    return result


def _block_knn(q: Tensor, q_idx: Tensor, pts: Tensor, cand: Tensor, k: int, max_block: int) -> Tensor:
    """k smallest distances from queries ``q`` [T, 3] (rows ``q_idx`` [T] of ``pts``) to ``pts[cand]``,
    excluding each query itself; inf where fewer than k candidates exist. Returns [T, k]."""
    c = pts[cand]  # [C, 3]
    self_pos = torch.searchsorted(cand, q_idx)  # [T]
    rows = max(1, max_block // max(1, cand.numel()))
    out = torch.full((q.shape[0], k), math.inf, dtype=pts.dtype, device=pts.device)
    kk = min(k, cand.numel() - 1)
    for s in range(0, q.shape[0], rows):
        # Not the matrix-product form, which loses digits for points far from the origin.
        d = torch.cdist(q[s:s + rows], c, compute_mode="donot_use_mm_for_euclid_dist")  # [R, C]
        d[torch.arange(d.shape[0], device=d.device), self_pos[s:s + rows]] = math.inf
        out[s:s + rows, :kk] = d.topk(kk, dim=1, largest=False).values
    return out


def _morton_order(points: Tensor) -> Tensor:  # [N, 3] -> [N]
    """Permutation sorting ``points`` along a 3D Morton (Z-order) curve with 21 bits per axis."""
    bits = 21
    lo = points.min(dim=0).values
    extent = (points.max(dim=0).values - lo).max().clamp_min(1e-30)
    cells = ((points - lo) / extent * (2**bits - 1)).long()  # [N, 3]
    code = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for b in range(bits):
        for axis in range(3):
            code |= ((cells[:, axis] >> b) & 1) << (3 * b + axis)
    return torch.argsort(code)


class GaussianModel(torch.nn.Module):
    """A set of N anisotropic 3D Gaussians with view-dependent colour.

    ``params`` is a ``torch.nn.ParameterDict`` with gsplat's keys, holding unconstrained values:

    - ``means``: [N, 3] centres in world units.
    - ``quats``: [N, 4] rotations (w, x, y, z), not normalised.
    - ``scales``: [N, 3] log of the standard deviations along the rotated axes.
    - ``opacities``: [N] logit of the opacity.
    - ``sh0``: [N, 1, 3] DC spherical-harmonic coefficient per RGB channel.
    - ``shN``: [N, K-1, 3] the higher bands, K = (sh_degree + 1)^2 ([N, 0, 3] for degree 0).

    ``activated()`` turns them into the inputs of ``talkgs.render.rasterize``.
    """

    def __init__(
        self,
        means: Tensor,  # [N, 3]
        quats: Tensor,  # [N, 4]
        scales: Tensor,  # [N, 3]
        opacities: Tensor,  # [N]
        sh0: Tensor,  # [N, 1, 3]
        shN: Tensor,  # [N, K-1, 3]
    ):
        super().__init__()
        tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "sh0": sh0, "shN": shN}
        #: Highest SH degree the colours use (a trainer may render fewer bands early on).
        self.sh_degree = check_params(tensors)
        self.params = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(tensors[name].detach().clone()) for name in PARAM_NAMES}
        )

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    def extra_repr(self) -> str:
        return f"num_gaussians={self.num_gaussians}, sh_degree={self.sh_degree}"

    def activated(self) -> dict[str, Tensor]:
        """The constrained values, differentiable w.r.t. ``params``.

        Returns ``means`` [N, 3], ``quats`` [N, 4] (unit), ``scales`` [N, 3] (linear), ``opacities`` [N]
        (in (0, 1)) and ``colors`` [N, K, 3] (SH coefficients, DC first), the arguments of the same names
        of ``talkgs.render.rasterize``.
        """
        p = self.params
        return {
            "means": p["means"],
            "quats": F.normalize(p["quats"], dim=-1),
            "scales": torch.exp(p["scales"]),
            "opacities": torch.sigmoid(p["opacities"]),
            "colors": torch.cat([p["sh0"], p["shN"]], dim=1),
        }

    @classmethod
    def from_points(
        cls,
        points: Tensor,  # [N, 3]
        rgb: Tensor,  # [N, 3]
        sh_degree: int = 2,
        init_opacity: float = 0.1,
        scale_multiplier: float = 1.0,
        num_neighbours: int = 3,
        min_scale: float = 1e-7,
    ) -> GaussianModel:
        """Isotropic Gaussians at ``points``, the usual 3DGS initialisation.

        Args:
            points: [N, 3] centres, N >= 2. The parameters are float32, on the device of ``points``.
            rgb: [N, 3] colours in [0, 1]; they become the DC coefficients, higher bands start at 0.
            sh_degree: highest SH degree, one of 0, 1, 2.
            init_opacity: opacity of every Gaussian; low, as in 3DGS, so densification can prune.
            scale_multiplier: factor on the neighbour distance; 1 makes neighbouring Gaussians overlap at
                about one standard deviation, which covers the surface without holes.
            num_neighbours: how many nearest neighbours the distance is averaged over (3 in 3DGS).
            min_scale: floor on the initial scale so that coincident points do not get log(0).

        Returns:
            The model, with identity rotations and scales = log(mean distance to the nearest
            ``num_neighbours`` points * ``scale_multiplier``).
        """
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
        if rgb.shape != points.shape:
            raise ValueError(f"rgb must have shape {tuple(points.shape)} like points, got {tuple(rgb.shape)}")
        if sh_degree not in SH_DEGREES:
            raise ValueError(f"sh_degree must be one of {SH_DEGREES}, got {sh_degree}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
        n = points.shape[0]
        if n < 2:
            raise TalkgsError(f"need at least 2 points to initialise Gaussians, got {n}")
        # float32 whatever the input (numpy hands out float64): gsplat's kernels and the PLY format use it.
        dtype = torch.float32
        points = points.detach().to(dtype)
        k = min(num_neighbours, n - 1)
        dist = nearest_neighbour_distances(points, k).mean(dim=1)  # [N]
        log_scale = torch.log((dist * scale_multiplier).clamp_min(min_scale))  # [N]
        quats = torch.zeros(n, 4, dtype=dtype, device=points.device)
        quats[:, 0] = 1.0
        return cls(
            means=points,
            quats=quats,
            scales=log_scale[:, None].repeat(1, 3),
            opacities=torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)), dtype=dtype,
                                 device=points.device),
            sh0=rgb_to_sh(rgb.detach().to(device=points.device, dtype=dtype))[:, None, :],
            shN=torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, dtype=dtype, device=points.device),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the raw parameters to a safetensors file, atomically (an interrupted save leaves the old file)."""
        from safetensors.torch import save_file

        from talkgs import __version__

        tensors = {name: p.detach().cpu().contiguous() for name, p in self.params.items()}
        metadata = {
            "format": FILE_FORMAT,
            "format_version": str(FILE_FORMAT_VERSION),
            "sh_degree": str(self.sh_degree),
            "talkgs_version": __version__,
        }
        with staged_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> GaussianModel:
        """Read a file written by ``save``; ``device`` defaults to the CPU."""
        path = Path(path)
        metadata, tensors = read_safetensors(path)
        if metadata.get("format") != FILE_FORMAT:
            raise TalkgsError(f"{path} is not a talkgs Gaussians file (format {metadata.get('format')!r})")
        try:
            version = int(metadata.get("format_version", ""))
        except ValueError:
            raise TalkgsError(f"{path} is damaged (format_version {metadata.get('format_version')!r})") from None
        if version > FILE_FORMAT_VERSION:
            raise TalkgsError(f"{path} has Gaussians format {version}, this talkgs reads up to "
                              f"{FILE_FORMAT_VERSION}; update talkgs")
        if set(tensors) != set(PARAM_NAMES):
            raise TalkgsError(f"{path} is damaged: tensors {sorted(tensors)}, expected {sorted(PARAM_NAMES)}")
        try:
            degree = check_params(tensors)
        except ValueError as e:
            raise TalkgsError(f"{path} is damaged: {e}") from None
        if metadata.get("sh_degree") != str(degree):
            raise TalkgsError(f"{path} is damaged: shN holds SH degree {degree}, the header says "
                              f"{metadata.get('sh_degree')!r}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        return cls(**{name: t.to(device) for name, t in tensors.items()})


def read_safetensors(path: str | os.PathLike, what: str = "") -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors on the CPU) of a safetensors file; one readable line (TalkgsError) when the
    file is missing or is not a safetensors file. ``what`` names it in the first case ("fitted model")."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise TalkgsError(f"{what + ' ' if what else ''}{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise TalkgsError(f"{path} is damaged or not a safetensors file ({str(e).splitlines()[0]})") from None


def check_params(tensors: dict[str, Tensor]) -> int:
    """Check the shapes, dtypes and devices of raw Gaussian parameters; return the SH degree.

    Raises ``ValueError`` naming the first bad tensor and its shape.
    """
    means = tensors["means"]
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must have shape [N, 3], got {list(means.shape)}")
    n = means.shape[0]
    shN = tensors["shN"]
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise ValueError(f"shN must have shape [{n}, K-1, 3], got {list(shN.shape)}")
    degrees = {num_sh_bases(d) - 1: d for d in SH_DEGREES}
    if shN.shape[1] not in degrees:
        raise ValueError(f"shN has {shN.shape[1]} higher-band coefficients per channel; SH degrees "
                         f"{SH_DEGREES} have {sorted(degrees)}")
    expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3),
                "shN": tuple(shN.shape)}
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device}, means on {means.device}")
    return degrees[shN.shape[1]]


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    # A fresh name rather than mkstemp, whose 0600 mode would survive the rename: the writer creates the
    # file, so it gets the usual umask permissions.
    tmp = path.parent / f".{path.name}.talkgs-tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        yield tmp
        # Some writers (safetensors) create files readable by their owner only: give the usual umask mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
