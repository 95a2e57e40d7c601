"""Fit a talking head to a prepared subject (or prepare a video first, then fit it)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help=__doc__.strip().rstrip("."), description=__doc__,
        epilog="Examples: talkgs fit my_subject --config cpu;  talkgs fit talk.mp4 -o my_subject --config cpu",
    )
    p.add_argument("source", metavar="SUBJECT_DIR|VIDEO", help="a prepared subject folder, or a video to prepare first")
    p.add_argument("-o", "--output", metavar="SUBJECT_DIR", help="subject folder to prepare into (with a VIDEO)")
    p.add_argument("--config", metavar="PRESET", help="preset name (cpu, quality, tiny) or a YAML file")
    p.add_argument("--stage", action="append", metavar="NAME",
                   help="run only these stages of the config (repeat or comma-separate), e.g. static")
    p.add_argument("--iterations", type=int, metavar="N", help="override the iterations of every stage run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device (default: auto)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fit exactly where it stopped")
    p.add_argument("--force", action="store_true", help="start again over an existing fit")
    p.set_defaults(run=run)


def fit_config(args: argparse.Namespace):
    """The FitConfig of a preset with the command line's overrides applied."""
    import dataclasses

    from talkgs.errors import TalkgsError
    from talkgs.train.config import FitConfig
    from talkgs.utils.config import load_section

    cfg = load_section(FitConfig, args.config, "fit")
    if args.stage:
        names = [n.strip() for item in args.stage for n in item.split(",") if n.strip()]
        known = [s.name for s in cfg.stages]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise TalkgsError(f"unknown stage(s) {', '.join(unknown)}; this config has: {', '.join(known)}")
        cfg = dataclasses.replace(cfg, stages=[s for s in cfg.stages if s.name in names])
    if args.iterations is not None:
        if args.iterations < 1:
            raise TalkgsError(f"--iterations must be at least 1, got {args.iterations}")
        cfg = dataclasses.replace(cfg, stages=[dataclasses.replace(s, iterations=args.iterations)
                                               for s in cfg.stages])
    if args.device:
        cfg = dataclasses.replace(cfg, device=args.device)
    return cfg


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from talkgs.data import schema
    from talkgs.errors import TalkgsError
    from talkgs.train.trainer import Trainer

    source = Path(args.source)
    cfg = fit_config(args)
    if source.is_file():
        if not args.output:
            raise TalkgsError("fitting a video needs -o SUBJECT_DIR for the prepared subject")
        from talkgs.prepare.config import PrepareConfig
        from talkgs.prepare.pipeline import prepare
        from talkgs.utils.config import load_section

        out = Path(args.output)
        if (out / schema.MANIFEST).is_file() and args.resume:
            subject_dir = out  # resuming: the subject was prepared by the interrupted run
        else:
            prepare(source, out, load_section(PrepareConfig, args.config, "prepare"), force=args.force)
            subject_dir = out
    else:
        if args.output:
            raise TalkgsError("-o is only for fitting a video; a subject folder is fitted in place")
        subject_dir = source
    Trainer(subject_dir, cfg, resume=args.resume, force=args.force).run()
    return 0
