"""The 3D Gaussian Splatting PLY: the file that SuperSplat, the INRIA viewer and antimatter15/splat open.

Layout (as the reference implementation's ``GaussianModel.save_ply`` writes it): binary little-endian,
one ``element vertex N`` of ``float`` properties, in this order::

    x y z                      means
    nx ny nz                   zeros (unused; kept because readers expect them)
    f_dc_0 f_dc_1 f_dc_2       sh0, DC coefficient of R, G, B
    f_rest_0 .. f_rest_{M-1}   shN channel-major, M = 3 (K - 1): all R coefficients of bands 1.., then G, then B
    opacity                    logit
    scale_0 scale_1 scale_2    log of the standard deviations
    rot_0 rot_1 rot_2 rot_3    quaternion (w, x, y, z), not normalised

All values are the raw parameters of ``GaussianModel``, so an export and ``load_ply`` are exact in float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from talkgs.errors import TalkgsError
from talkgs.model.gaussians import SH_DEGREES, GaussianModel, num_sh_bases, staged_file

# PLY scalar types (both spellings of the spec) -> numpy type codes, byte order added per file.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_MAX_HEADER_LINES = 10_000  # far more than any splat header; stops a binary file being read as one


def ply_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of a splat PLY of ``sh_degree``, in file order."""
    rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def export_ply(model: GaussianModel, path: str | os.PathLike) -> int:
    """Write ``model`` as a splat PLY, atomically; return the number of Gaussians written.

    Raises ``TalkgsError`` when a parameter is NaN or infinite: viewers would show garbage or nothing.
    """
    p = {name: t.detach() for name, t in model.params.items()}
    n = model.num_gaussians
    data = torch.cat([
        p["means"],  # [N, 3]
        torch.zeros_like(p["means"]),  # [N, 3] normals
        p["sh0"].reshape(n, 3),  # [N, 3]
        p["shN"].transpose(1, 2).reshape(n, -1),  # [N, 3 (K-1)], channel-major
        p["opacities"][:, None],  # [N, 1]
        p["scales"],  # [N, 3]
        p["quats"],  # [N, 4]
    ], dim=1).to(device="cpu", dtype=torch.float32).numpy()
    bad = int((~np.isfinite(data).all(axis=1)).sum())
    if bad:
        raise TalkgsError(f"{bad} of {n} Gaussians have NaN or infinite parameters; the fit diverged, refit it")
    names = ply_property_names(model.sh_degree)
    header = "".join(["ply\n", "format binary_little_endian 1.0\n", f"element vertex {n}\n",
                      *(f"property float {name}\n" for name in names), "end_header\n"])
    with staged_file(path) as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.astype("<f4", copy=False).tobytes())
    return n


def load_ply(path: str | os.PathLike, device: str | torch.device | None = None) -> GaussianModel:
    """Read a splat PLY (written by ``export_ply``, the reference 3DGS code, gsplat or most trainers).

    The SH degree follows from the number of ``f_rest_*`` properties; properties it does not know
    (normals, colours, per-splat extras) and other elements are skipped. ``device`` defaults to the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise TalkgsError(f"{path} does not exist")
    with open(path, "rb") as f:
        elements, byte_order, data_start = _read_header(f, path)
    # Only the elements up to the vertices matter: their fixed-size rows give the vertices' offset.
    offset = data_start
    for name, count, props in elements:
        if any(kind is None for _, kind in props):
            raise TalkgsError(f"{path}: element {name!r} has list properties; not a Gaussian splat PLY")
        if len({prop for prop, _ in props}) != len(props):
            raise TalkgsError(f"{path}: element {name!r} repeats a property name; the PLY header is damaged")
        dtype = np.dtype([(prop, byte_order + kind) for prop, kind in props])
        if name == "vertex":
            n = count
            break
        offset += count * dtype.itemsize
    else:
        raise TalkgsError(f"{path} has no vertex element; not a Gaussian splat PLY")
    if path.stat().st_size < offset + n * dtype.itemsize:
        raise TalkgsError(f"{path} is truncated: its header declares {n} vertices that the file does not hold")
    rows = np.fromfile(path, dtype=dtype, count=n, offset=offset)

    names = set(dtype.names)
    rest = sorted((p for p in names if p.startswith("f_rest_") and p[7:].isdigit()), key=lambda p: int(p[7:]))
    degrees = {3 * (num_sh_bases(d) - 1): d for d in SH_DEGREES}
    if len(rest) not in degrees:
        raise TalkgsError(f"{path} has {len(rest)} f_rest properties; talkgs reads SH degrees {SH_DEGREES} "
                          f"({', '.join(map(str, sorted(degrees)))} f_rest)")
    optional = {"nx", "ny", "nz"}
    missing = [p for p in ply_property_names(degrees[len(rest)]) if p not in names and p not in optional]
    if missing:
        raise TalkgsError(f"{path} is not a Gaussian splat PLY: no {', '.join(missing)} property")

    def columns(*props: str) -> torch.Tensor:  # [N, len(props)] float32
        out = np.empty((n, len(props)), dtype=np.float32)
        for i, prop in enumerate(props):
            out[:, i] = rows[prop]
        return torch.from_numpy(out)

    shN = columns(*rest).reshape(n, 3, -1).transpose(1, 2)  # [N, K-1, 3]
    model = GaussianModel(
        means=columns("x", "y", "z"),
        quats=columns("rot_0", "rot_1", "rot_2", "rot_3"),
        scales=columns("scale_0", "scale_1", "scale_2"),
        opacities=columns("opacity")[:, 0],
        sh0=columns("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        shN=shN.contiguous(),
    )
    return model.to(torch.device(device) if device is not None else torch.device("cpu"))


def _read_header(f, path: Path) -> tuple[list[tuple[str, int, list[tuple[str, str | None]]]], str, int]:
    """Parse a binary PLY header: ([(element, count, [(property, numpy code or None for a list)])], byte
    order for numpy, offset of the data)."""
    if f.readline(16).rstrip(b"\r\n") != b"ply":
        raise TalkgsError(f"{path} is not a PLY file")
    elements: list[tuple[str, int, list[tuple[str, str | None]]]] = []
    byte_order = None
    for _ in range(_MAX_HEADER_LINES):
        raw = f.readline(4096)
        if not raw.endswith(b"\n"):
            break
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            break
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            if byte_order is None:
                raise TalkgsError(f"{path} is not a valid PLY: no format line")
            return elements, byte_order, f.tell()
        if key == "format" and len(words) == 3:
            if words[1] == "ascii":
                raise TalkgsError(f"{path} is an ASCII PLY; only binary PLY files hold Gaussian splats")
            orders = {"binary_little_endian": "<", "binary_big_endian": ">"}
            if words[1] not in orders:
                raise TalkgsError(f"{path} has unknown PLY format {words[1]!r}")
            byte_order = orders[words[1]]
        elif key == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif key == "property" and elements and len(words) == 3 and words[1] in _PLY_TYPES:
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        elif key == "property" and elements and len(words) == 5 and words[1] == "list":
            elements[-1][2].append((words[4], None))
        else:
            raise TalkgsError(f"{path} has a damaged PLY header line: {raw.decode('ascii').strip()!r}")
    raise TalkgsError(f"{path} is not a valid PLY: its header does not end")
