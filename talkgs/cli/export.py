"""Export a fitted subject's Gaussians as a 3D Gaussian Splatting PLY for splat viewers."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help=__doc__.strip().rstrip("."), description=__doc__,
        epilog="Example: talkgs export my_subject --ply head.ply  (open it in SuperSplat or any 3DGS viewer)",
    )
    p.add_argument("subject", metavar="SUBJECT_DIR|MODEL",
                   help="subject folder fitted by talkgs fit, or its fit/model.safetensors copied anywhere")
    p.add_argument("--ply", required=True, metavar="OUT.ply",
                   help="PLY file to write: the standard 3DGS layout (binary, SH coefficients, logit opacity, "
                        "log scales)")
    p.add_argument("--force", action="store_true", help="replace OUT.ply if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from talkgs.model import export_ply
    from talkgs.model.fitted import load_model
    from talkgs.utils import log
    from talkgs.utils.fs import check_output_file

    out = Path(args.ply)
    check_output_file(out, args.force)
    model = load_model(args.subject).head.face  # the static head: the face branch's canonical Gaussians
    n = export_ply(model, out)
    log.info(f"wrote {n} Gaussians (SH degree {model.sh_degree}) to {out}")
    return 0
