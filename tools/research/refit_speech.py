"""Refit a code-path subject's speech model in closed form (its Gaussians and fields unchanged), then drive it.

    python tools/research/refit_speech.py FITTED_SUBJECT OUT_DIR [--prior] [--prior-weight 1.0] [--encoders E,E]

Copies FITTED_SUBJECT (a code-path fit, e.g. outputs/bench256/anchor_code) to OUT_DIR, solves its speech model
again with ``MouthCodeConfig.prior`` / ``prior_weight`` as given (the fields train on tracked codes and never
see the speech model, so nothing else changes), and measures it as ``tools/bench_lip_sync.py`` does: driven
by the soundtrack of every other speaker who has no public-domain clip in ../shared/data (the prior holds
those: Obama and Reagan are left out), and on the held-out split (``talkgs eval``). Writes OUT_DIR/refit.json.

``--encoders``: the evidence the speech model reads instead of the fit's (features the subject folder lacks are
computed from its audio.wav, as ``talkgs prepare`` would).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

# bench_lip_sync, imported below, lives one folder up in tools/.
sys.path.append(str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from bench_lip_sync import PRIOR_SPEAKERS, SPEAKER, SUBJECT_SPEAKER, drivers

    from talkgs.data.frames import SubjectFrames
    from talkgs.eval.drive_ref import evaluate_drive_ref
    from talkgs.eval.evaluate import evaluate, load_fitted
    from talkgs.model.mouth_code import SpeechToCode
    from talkgs.train.trainer import fit_speech, speech_prior, speech_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", default="anchor", choices=sorted(SUBJECT_SPEAKER), help="which benchmark subject it is")
    p.add_argument("--prior", action="store_true")
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--encoders", help="comma-separated audio encoders of the speech model (default: the fit's)")
    args = p.parse_args()
    if not args.out.exists():
        shutil.copytree(args.subject, args.out, ignore=shutil.ignore_patterns("checkpoint.pt", "*.mp4", "val"))
        shutil.copy2(args.subject / "frames.mp4", args.out / "frames.mp4")
    if args.encoders:
        _add_features(args.out, args.encoders.split(","))
    model, frames = load_fitted(args.out, "cpu")
    head = model.head
    if args.encoders:
        encoders = tuple(args.encoders.split(","))
        head.cfg.audio_encoders = encoders
        frames = SubjectFrames(frames.subject, model.resolution, frames.device, encoders, tuple(head.cfg.expression),
                               model.neck_extension)
        head.speech = SpeechToCode(frames.features.shape[-1], head.cfg.code)
        model.header["head"]["audio_encoders"] = list(encoders)
        model.header["audio_dim"] = int(frames.features.shape[-1])
    cfg = dataclasses.replace(head.speech.cfg, prior=args.prior, prior_weight=args.prior_weight)
    head.speech.cfg = head.cfg.code = cfg
    model.header["head"]["code"].update(prior=args.prior, prior_weight=args.prior_weight)
    codes = head.mouth_code.encode(frames.subject.canonical_landmarks)
    prior = speech_prior(frames.subject, head)
    fit_speech(head, frames.features.cpu(), frames.feature_columns, codes, frames.subject.train_indices, prior)
    model.save(args.out / "fit" / "model.safetensors")
    report_path = args.out / "fit" / "fit_report.json"
    report = json.loads(report_path.read_text())
    report["mouth_code"] = speech_report(head, frames.features.cpu(), codes, frames.subject.train_indices,
                                         frames.subject.test_indices)
    report_path.write_text(json.dumps(report, indent=1))
    result = {"subject": str(args.subject), "prior": args.prior, "prior_weight": args.prior_weight,
              "encoders": list(head.cfg.audio_encoders), "drive": {}}
    for clip in drivers(args.name, folders=("video",)):
        if SPEAKER[clip.stem] in PRIOR_SPEAKERS:
            continue
        r = evaluate_drive_ref(args.out, clip, "cpu", drive="audio")
        result["drive"][clip.stem] = {k: r[k] for k in ("aperture_corr", "lag_frames", "closure_recall",
                                                         "closure_precision", "chance")}
        print(clip.stem, {k: round(v, 3) for k, v in result["drive"][clip.stem].items() if k != "chance"}, flush=True)
    result["held_out"] = {k: v for k, v in evaluate(args.out, device="cpu").items() if not isinstance(v, list)}
    (args.out / "refit.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["held_out"], indent=1))


def _add_features(subject: Path, encoders: list[str]) -> None:
    """Compute the ``encoders`` features a subject folder lacks from its audio.wav and list them in subject.json."""
    import numpy as np

    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import encode_audio
    from talkgs.data import schema
    from talkgs.data.subject import Subject

    sub = Subject(subject)
    manifest = json.loads((subject / schema.MANIFEST).read_text())
    samples, _ = sub.audio()
    for name in encoders:
        if name in sub.audio_encoders:
            continue
        feats = encode_audio(name, samples, sub.num_frames, sub.fps, AudioConfig())
        np.save(subject / schema.audio_features(name), feats)
        manifest["audio"]["encoders"][name] = {"file": schema.audio_features(name), "dim": int(feats.shape[-1])}
    (subject / schema.MANIFEST).write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
