"""How faithfully does a code-path fit draw a mouth code? Frames rendered from their own tracked code and pose.

    python tools/probe_code_fidelity.py FITTED_SUBJECT [FITTED_SUBJECT ...] [--train-frames 160] [--json OUT]
    python tools/probe_code_fidelity.py --bench docs/benchmarks/lip_sync_anchor_code_jaw_256.json

Each fitted subject (``head.drive: code``) renders an even sample of its training frames and all of its held-out
frames with the frame's own tracked mouth code (not speech), pose, blinks and torso, and MediaPipe reads the
rendered and the real mouths. Reported per split: the correlation of the two openings, their percentiles (a
render whose mouth opens less than the truth's shows lower ones) and the mouth-region PSNR.

This is a diagnostic of the renderer, the ceiling of everything driven through the code: it uses the training
video's own tracked mouth at render time, so none of its figures is a lip-sync result.

``--bench``: for a ``tools/bench_lip_sync.py`` result of a code-path fit, splits each speech-driven figure into its
two links: the speech model's predicted opening against the driver's real mouth (before rendering; the driver's
evidence from ``tools/probe_mouth_evidence.py``'s cache) and the rendered opening against that prediction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def fidelity(source: Path, train_frames: int) -> dict:
    import torch

    from talkgs.data import schema
    from talkgs.eval.evaluate import load_fitted, render_frame
    from talkgs.eval.landmark_metrics import LandmarkTracker, mouth_opening
    from talkgs.model.losses import psnr
    from talkgs.utils import media

    model, ctx = load_fitted(source, "cpu")
    head = model.head
    if head.cfg.drive != "code":
        raise SystemExit(f"{source}: not a code-path fit (head.drive: {head.cfg.drive})")
    codes = head.mouth_code.encode(ctx.subject.canonical_landmarks).to(ctx.device)  # [F, C]
    train = np.asarray(ctx.train_indices)
    splits = {"train": train[np.linspace(0, len(train) - 1, min(train_frames, len(train))).astype(int)],
              "held_out": np.asarray(ctx.test_indices)}
    result = {}
    with torch.no_grad():
        for name, frames in splits.items():
            rendered, truth, mouth_psnr = LandmarkTracker(), LandmarkTracker(), []
            for i in frames:
                batch, out = render_frame(model, ctx, int(i), drive=codes)
                image = out.image[0].clamp(0, 1)
                mouth = (batch.labels == schema.Label.MOUTH) | (batch.labels == schema.Label.LIPS)
                if mouth.any():
                    mouth_psnr.append(float(psnr(image, batch.image, mouth[..., None].float())))
                rendered.add(media.to_uint8(image))
                truth.add(media.to_uint8(batch.image))
            r, t = mouth_opening(rendered.result()), mouth_opening(truth.result())
            ok = np.isfinite(r) & np.isfinite(t)
            pct = [5, 25, 50, 75, 95]
            result[name] = {
                "frames": int(ok.sum()), "opening_corr": round(float(np.corrcoef(r[ok], t[ok])[0, 1]), 3),
                "rendered_opening_pct": dict(zip(map(str, pct), np.round(np.percentile(r[ok], pct), 4).tolist())),
                "real_opening_pct": dict(zip(map(str, pct), np.round(np.percentile(t[ok], pct), 4).tolist())),
                "psnr_mouth": round(float(np.mean(mouth_psnr)), 2)}
    return result


def speech_chain(bench: Path, cache: Path) -> dict:
    """Per speech-driven clip of a bench_lip_sync result: (prediction vs real, render vs real, render vs prediction)."""
    import torch
    from bench_lip_sync import longest_clips
    from probe_mouth_evidence import _collect

    from talkgs.eval.drive_ref import aperture_correlation
    from talkgs.eval.evaluate import load_fitted

    data = json.loads(bench.read_text())
    result = (data["results"] if "results" in data else data["code"]["results"])[0]  # session 7's file nests it
    model, _ = load_fitted(result["fit"], "cpu")
    head = model.head
    clips = {c.stem: c for c in longest_clips().values()}
    out = {}
    for clip in result["drive"]["audio"]["clips"]:
        stem = Path(clip["video"]).stem
        data = _collect(clips[stem], cache)  # the cache holds each frame's evidence averaged over its two steps
        evidence = torch.tensor(np.repeat(data["visemes"][:, None], 2, 1), dtype=torch.float32)
        with torch.no_grad():
            predicted = head.mouth_code.opening(head.speech(evidence, torch.arange(len(evidence)))).numpy()
        rendered, real = (np.array([np.nan if v is None else v for v in clip[k]], float)
                          for k in ("rendered_opening", "reference_opening"))
        n = min(len(predicted), len(rendered), len(real))
        out[stem] = {name: round(aperture_correlation(a[:n], b[:n], 5)[0], 3) for name, a, b in (
            ("predicted_vs_real", predicted, real), ("rendered_vs_real", rendered, real),
            ("rendered_vs_predicted", rendered, predicted))}
        print(stem, out[stem], flush=True)
    print("median", {k: round(float(np.median([v[k] for v in out.values()])), 3) for k in next(iter(out.values()))})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", type=Path, nargs="*")
    p.add_argument("--train-frames", type=int, default=160)
    p.add_argument("--json", type=Path)
    p.add_argument("--bench", type=Path, help="a bench_lip_sync.py JSON of a code-path fit (see above)")
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parents[1] / "outputs" / "evidence")
    args = p.parse_args()
    if args.bench:
        speech_chain(args.bench, args.cache)
    results = {}
    for source in args.subjects:
        results[str(source)] = r = fidelity(source, args.train_frames)
        for split, v in r.items():
            ren, real = v["rendered_opening_pct"], v["real_opening_pct"]
            print(f"{source} {split}: opening corr {v['opening_corr']:.3f}, median opening {ren['50']} (real "
                  f"{real['50']}), 95th {ren['95']} (real {real['95']}), mouth PSNR {v['psnr_mouth']:.2f} dB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
