"""Evaluate a fitted subject on its held-out frames (PSNR, SSIM, LPIPS, LMD, lip and blink sync)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=__doc__.strip().rstrip("."), description=__doc__,
                       epilog="Example: talkgs eval my_subject --json results.json")
    p.add_argument("subject", metavar="SUBJECT_DIR")
    p.add_argument("--json", metavar="PATH", help="report file (default SUBJECT_DIR/eval_report.json)")
    p.add_argument("--video", metavar="PATH",
                   help="side-by-side video, ground truth | render | error (default SUBJECT_DIR/eval_side_by_side.mp4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="rendering device (default: the fit's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from talkgs.eval.evaluate import evaluate

    report = evaluate(args.subject, args.json, args.video, args.device)
    print(json.dumps({k: v for k, v in report.items() if k != "video"}, indent=1))
    return 0
