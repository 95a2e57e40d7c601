"""Re-run the motion stages (mouth, face, fuse) of a fitted subject on a copy, keeping its static head.

The experiments of docs/talking_head.md change one field of the motion stages at a time; refitting the
static head for each would add minutes and its own run-to-run noise. This copies SUBJECT_DIR's prepared
files to OUT_DIR, takes the face Gaussians of SUBJECT_DIR's fit (the static stage's geometry; the motion
stages retrain only their colours and opacities), initialises a new mouth branch and networks, and runs
every stage after ``static`` of the preset, with an optional YAML override of the ``fit`` section. OUT_DIR can then be
scored with ``talkgs eval OUT_DIR``.

    python tools/research/refit_motion.py demo demo_mel4 --preset cpu --override mel4.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch
import yaml

from talkgs.data import schema
from talkgs.model.fitted import load_model
from talkgs.train.config import FitConfig
from talkgs.train.context import FitContext
from talkgs.train.trainer import Trainer, fitted_model
from talkgs.utils.config import load_section, merge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject", type=Path, help="a fitted subject folder")
    ap.add_argument("out", type=Path, help="where the copy goes (must not exist)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--override", type=Path, help="YAML merged into the preset's fit section")
    args = ap.parse_args()
    face = load_model(args.subject).head.face
    shutil.copytree(args.subject, args.out, ignore=shutil.ignore_patterns("fit", "preview", "eval_*"))
    cfg = load_section(FitConfig, args.preset, "fit")
    if args.override:
        cfg = merge(cfg, yaml.safe_load(args.override.read_text()))
    cfg = dataclasses.replace(cfg, stages=[s for s in cfg.stages if s.name != "static"])
    trainer = Trainer(args.out, cfg)
    ctx = FitContext(trainer.subject, cfg)
    trainer.ctx = ctx
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    # A new head (mouth branch, networks and, on the code path, the mouth code and speech model) with the
    # fitted face Gaussians in place of its fresh ones.
    head = trainer._initial_head(ctx, ctx.features.shape[-1])
    head.face = face
    head = head.to(ctx.device)
    report: dict = {"stages": {}}
    if cfg.head.drive == "code":
        ctx.codes = head.mouth_code.encode(trainer.subject.canonical_landmarks).to(ctx.device)
    for k, stage in enumerate(cfg.stages):
        report["stages"][stage.name] = trainer._run_stage(k, stage, head, gen, report, 0, None)
    fitted_model(trainer.subject, cfg, ctx, head).save(trainer.root / schema.MODEL)
    (trainer.root / schema.FIT_REPORT).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["stages"], indent=1))


if __name__ == "__main__":
    main()
