"""Refit a code-path subject's speech model in closed form (its Gaussians and fields unchanged), then drive it.

    python tools/refit_speech.py FITTED_SUBJECT OUT_DIR [--prior] [--prior-weight 1.0]

Copies FITTED_SUBJECT (a code-path fit, e.g. outputs/bench256/anchor_code) to OUT_DIR, solves its speech model
again with ``MouthCodeConfig.prior`` / ``prior_weight`` as given (the fields train on tracked codes and never
see the speech model, so nothing else changes), and measures it as ``tools/bench_lip_sync.py`` does: driven
by the soundtrack of every other speaker who has no public-domain clip in ../shared/data (the prior holds
those: Obama and Reagan are left out), and on the held-out split (``talkgs eval``). Writes OUT_DIR/refit.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path


def main() -> None:
    import torch
    from bench_lip_sync import PRIOR_SPEAKERS, SPEAKER, SUBJECT_SPEAKER, drivers

    from talkgs.eval.drive_ref import evaluate_drive_ref
    from talkgs.eval.evaluate import evaluate, load_fitted
    from talkgs.model.mouth_code import load_prior

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", default="anchor", choices=sorted(SUBJECT_SPEAKER), help="which benchmark subject it is")
    p.add_argument("--prior", action="store_true")
    p.add_argument("--prior-weight", type=float, default=1.0)
    args = p.parse_args()
    if not args.out.exists():
        shutil.copytree(args.subject, args.out, ignore=shutil.ignore_patterns("checkpoint.pt", "*.mp4", "val"))
        shutil.copy2(args.subject / "frames.mp4", args.out / "frames.mp4")
    model, frames = load_fitted(args.out, "cpu")
    head = model.head
    cfg = dataclasses.replace(head.speech.cfg, prior=args.prior, prior_weight=args.prior_weight)
    head.speech.cfg = head.cfg.code = cfg
    model.header["head"]["code"].update(prior=args.prior, prior_weight=args.prior_weight)
    codes = head.mouth_code.encode(frames.subject.canonical_landmarks)
    prior = [(torch.from_numpy(e), head.mouth_code.transfer_mouth(m)) for e, m in load_prior(frames.subject.fps)] \
        if args.prior else None
    head.speech.fit(frames.features.cpu(), codes, torch.as_tensor(frames.subject.train_indices), prior=prior)
    model.save(args.out / "fit" / "model.safetensors")
    result = {"subject": str(args.subject), "prior": args.prior, "prior_weight": args.prior_weight, "drive": {}}
    for clip in drivers(args.name):
        if SPEAKER[clip.stem] in PRIOR_SPEAKERS:
            continue
        r = evaluate_drive_ref(args.out, clip, "cpu", drive="audio")
        result["drive"][clip.stem] = {k: r[k] for k in ("aperture_corr", "lag_frames", "closure_recall",
                                                         "closure_precision", "chance")}
        print(clip.stem, {k: round(v, 3) for k, v in result["drive"][clip.stem].items() if k != "chance"}, flush=True)
    result["held_out"] = {k: v for k, v in evaluate(args.out, device="cpu").items() if not isinstance(v, list)}
    (args.out / "refit.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["held_out"], indent=1))


if __name__ == "__main__":
    main()
