"""Export a fitted subject's Gaussians as a 3D Gaussian Splatting PLY for splat viewers."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help=__doc__.strip().rstrip("."), description=__doc__,
        epilog="Example: talkgs export my_subject --ply head.ply  (open it in SuperSplat or any 3DGS viewer)",
    )
    p.add_argument("subject", metavar="SUBJECT_DIR", help="subject folder fitted by talkgs fit")
    p.add_argument("--ply", required=True, metavar="OUT.ply",
                   help="PLY file to write: the standard 3DGS layout (binary, SH coefficients, logit opacity, "
                        "log scales)")
    p.add_argument("--force", action="store_true", help="replace OUT.ply if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from talkgs.data import schema
    from talkgs.errors import TalkgsError
    from talkgs.model import GaussianModel, export_ply
    from talkgs.utils import log
    from talkgs.utils.fs import check_output_file

    root = Path(args.subject)
    if not (root / schema.MANIFEST).is_file():
        raise TalkgsError(f"{root} is not a prepared subject (no {schema.MANIFEST}); run talkgs prepare first")
    gaussians = root / schema.GAUSSIANS
    if not gaussians.is_file():
        raise TalkgsError(f"{root} is not fitted yet (no {schema.GAUSSIANS}); run talkgs fit {root} first")
    out = Path(args.ply)
    check_output_file(out, args.force)
    model = GaussianModel.load(gaussians)
    n = export_ply(model, out)
    log.info(f"wrote {n} Gaussians (SH degree {model.sh_degree}) to {out}")
    return 0
