"""Render a fitted subject to a video with its audio muxed."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help=__doc__.strip().rstrip("."), description=__doc__,
                       epilog="Example: talkgs render my_subject --split test -o held_out.mp4")
    p.add_argument("subject", metavar="SUBJECT_DIR")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mp4")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="render these frames with their own audio, poses and torso (frame i of the output is "
                        "frame start+i of frames.mp4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="rendering device (default: the fit's)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from talkgs.errors import TalkgsError
    from talkgs.eval.evaluate import load_fitted, mux_split_audio
    from talkgs.utils import log, media

    out = Path(args.output)
    if out.exists() and not args.force:
        raise TalkgsError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise TalkgsError(f"cannot write {out}: folder {out.parent} does not exist")
    ctx, stage = load_fitted(args.subject, args.device)
    frames = ctx.test_indices if args.split == "test" else ctx.train_indices
    res = ctx.resolution
    tmp = out.with_name(f".{out.name}.tmp.mp4")
    try:
        with torch.no_grad(), media.VideoWriter(tmp, (res, res), ctx.subject.fps, crf=14, preset="veryfast",
                                                 pix_fmt="yuv420p") as writer:
            for i in log.progress(frames, desc="render", unit="frame"):
                image, _ = stage.render(ctx.batch(int(i)))
                writer.write((image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        mux_split_audio(ctx.subject, tmp, out, int(frames[0]))
    finally:
        tmp.unlink(missing_ok=True)
    log.info(f"wrote {out}: {len(frames)} frames ({args.split} split, frames {frames[0]}..{frames[-1]})")
    return 0
