"""How faithfully does a code-path fit draw a mouth code? Frames rendered from their own tracked code and pose.

    python tools/research/probe_code_fidelity.py FITTED_SUBJECT [FITTED_SUBJECT ...] [--train-frames 160] [--json OUT]
    python tools/research/probe_code_fidelity.py --bench docs/benchmarks/lip_sync_anchor_code_jaw_256.json

Each fitted subject (``head.drive: code``) renders an even sample of its training frames and all of its held-out
frames with the frame's own tracked mouth code (not speech), pose, blinks and torso, and MediaPipe reads the
rendered and the real mouths. Reported per split: the correlation of the two openings, their percentiles (a
render whose mouth opens less than the truth's shows lower ones) and the mouth-region PSNR. Beside them, the
lips' geometric opening: the template's landmarks moved by the deformed face Gaussians around them (the 8
nearest, inverse-distance weighted, as the landmark loss moves them) and projected, measured with the same
formula, against the tracked landmarks' opening: whether the motion fields move the lips, apart from whether
the picture shows it.

``--mouth-gain G [--mouth-gain-full-mm MM]`` is a counterfactual: the mouth branch's colour scaled by G (its SH
coefficients edited so that the rendered RGB is G times the trained one), or by a gain that rises from G with the
code's inner-lip gap to 1 at MM millimetres. It asks whether a darker interior lets MediaPipe read the openings.

``--optimal-gain`` asks what the colour loss wants instead: per frame (300 training frames and the held-out ones),
the gain of the mouth branch's colour that fits the real lips and mouth pixels best in least squares (the
composite is linear in it), by the frame's tracked opening.

``--layers-strip PNG`` writes, for training frames of increasing tracked opening, mouth crops of the truth, the
render, the face layer alone and the mouth branch alone.

This is a diagnostic of the renderer, the ceiling of everything driven through the code: it uses the training
video's own tracked mouth at render time, so none of its figures is a lip-sync result.

``--bench``: for a ``tools/bench_lip_sync.py`` result of a code-path fit, splits each speech-driven figure into its
two links: the speech model's predicted opening against the driver's real mouth (before rendering; the driver's
evidence from ``tools/research/probe_mouth_evidence.py``'s cache) and the rendered opening against that prediction,
and gives the closure events (recall, precision) of the prediction and of the render. ``--speech-from FIT``: the
prediction of another fit's speech model (e.g. one solved again by ``tools/research/refit_speech.py``) on the same
clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)
ROOT = Path(__file__).resolve().parents[2]
# bench_lip_sync, imported below, lives one folder up in tools/.
sys.path.append(str(ROOT / "tools"))


def _percentiles(x: np.ndarray) -> dict[str, float]:
    return dict(zip(map(str, PERCENTILES), np.round(np.percentile(x, PERCENTILES), 4).tolist()))


def _mouth_region(labels):  # [H, W] labels -> [H, W, 1] float: the lips and the mouth interior
    from talkgs.data import schema

    return ((labels == schema.Label.MOUTH) | (labels == schema.Label.LIPS))[..., None].float()


def load(source: Path):
    """(model, frames, codes [F, C] tracked, tracked landmarks [F, 478, 2] at the fit's size) of a code-path fit."""
    from talkgs.eval.evaluate import load_fitted

    model, ctx = load_fitted(source, "cpu")
    if model.head.cfg.drive != "code":
        raise SystemExit(f"{source}: not a code-path fit (head.drive: {model.head.cfg.drive})")
    codes = model.head.mouth_code.encode(ctx.subject.canonical_landmarks).to(ctx.device)
    tracked = ctx.subject.landmarks[..., :2] * (ctx.resolution / ctx.subject.size)
    return model, ctx, codes, tracked


def _moved_landmarks(template, face_deltas, viewmat, K, anchors) -> np.ndarray:
    """[478, 2] pixels: the ``template`` [478, 3] landmarks moved by the face Gaussians ``anchors`` = ([478, k]
    indices, [478, k] weights) around them, seen through ``viewmat`` [4, 4] and ``K`` [3, 3]."""
    idx, weight = anchors
    points = template + (face_deltas.d_means[0][idx] * weight[..., None]).sum(1)  # [478, 3]
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = cam @ K.T
    return (uv[:, :2] / uv[:, 2:]).numpy()


def fidelity(loaded, train_frames: int, mouth_gain: float = 1.0, gain_full_mm: float | None = None) -> dict:
    import torch

    from talkgs.eval.evaluate import render_frame
    from talkgs.eval.landmark_metrics import LandmarkTracker, mouth_opening
    from talkgs.model.gaussians import SH_C0
    from talkgs.model.losses import psnr
    from talkgs.train.stages import landmark_anchors
    from talkgs.utils import media

    model, ctx, codes, tracked = loaded
    head = model.head
    template = torch.tensor(ctx.subject.template, dtype=torch.float32)  # [478, 3]
    anchors = landmark_anchors(template, head.face.params["means"].detach(), 8)  # as the landmark loss moves them
    with torch.no_grad():
        gap_mm = 1000 * head.mouth_code.opening(codes).numpy()  # [F] the code's inner-lip gap
    sh0, shN = (head.mouth.params[k].detach().clone() for k in ("sh0", "shN"))

    def shade(g: float) -> None:
        """Scale the mouth branch's rendered colour by ``g`` (RGB = SH_C0 * sh0 + 0.5 + higher bands)."""
        head.mouth.params["sh0"].data.copy_((g * (0.5 + SH_C0 * sh0) - 0.5) / SH_C0)
        head.mouth.params["shN"].data.copy_(g * shN)

    train = np.asarray(ctx.train_indices)
    splits = {"train": train[np.linspace(0, len(train) - 1, min(train_frames, len(train))).astype(int)],
              "held_out": np.asarray(ctx.test_indices)}
    result = {}
    with torch.no_grad():
        for name, frames in splits.items():
            rendered, truth, mouth_psnr, moved = LandmarkTracker(), LandmarkTracker(), [], []
            for i in frames:
                if mouth_gain != 1.0:  # the counterfactual; otherwise the colours stay exactly as fitted
                    gain = mouth_gain if gain_full_mm is None else np.clip(gap_mm[i] / gain_full_mm, mouth_gain, 1)
                    shade(float(gain))
                batch, out = render_frame(model, ctx, int(i), drive=codes)
                moved.append(_moved_landmarks(template, out.face_deltas, batch.viewmat, batch.K, anchors))
                image = out.image[0].clamp(0, 1)
                mouth = _mouth_region(batch.labels)
                if mouth.any():
                    mouth_psnr.append(float(psnr(image, batch.image, mouth)))
                rendered.add(media.to_uint8(image))
                truth.add(media.to_uint8(batch.image))
            r, t = mouth_opening(rendered.result()), mouth_opening(truth.result())
            g, tr = mouth_opening(np.stack(moved)), mouth_opening(tracked[frames])
            ok = np.isfinite(r) & np.isfinite(t)
            result[name] = {
                "frames": int(ok.sum()), "opening_corr": round(float(np.corrcoef(r[ok], t[ok])[0, 1]), 3),
                "rendered_opening_pct": _percentiles(r[ok]), "real_opening_pct": _percentiles(t[ok]),
                "psnr_mouth": round(float(np.mean(mouth_psnr)), 2),
                "geometric_opening_pct": _percentiles(g), "tracked_opening_pct": _percentiles(tr),
                "geometric_vs_tracked_corr": round(float(np.corrcoef(g, tr)[0, 1]), 3),
                "rendered_vs_geometric_corr": round(float(np.corrcoef(r[ok], g[ok])[0, 1]), 3)}
    for k, v in (("sh0", sh0), ("shN", shN)):  # exactly as fitted again, for the probes after this one
        head.mouth.params[k].data.copy_(v)
    return result


def optimal_gain(loaded) -> dict:
    """Per tracked-opening bin: the median least-squares gain of the mouth branch's colour (see the docstring)."""
    import torch

    from talkgs.eval.evaluate import render_frame
    from talkgs.eval.landmark_metrics import mouth_opening

    model, ctx, codes, tracked = loaded
    opening = mouth_opening(tracked)
    train = np.asarray(ctx.train_indices)
    frames = np.concatenate([train[np.linspace(0, len(train) - 1, 300).astype(int)], np.asarray(ctx.test_indices)])
    gains, opens = [], []
    with torch.no_grad():
        for i in frames:
            batch, out = render_frame(model, ctx, int(i), drive=codes)
            face, mouth = out.face[0], out.mouth[0]
            # composite = fixed + g * scaled: the face over the mouth (colour x g) over the torso and background.
            fixed = face.image + (1 - face.alpha) * (1 - mouth.alpha) * batch.under
            scaled = (1 - face.alpha) * mouth.image
            region = _mouth_region(batch.labels)
            energy = float((scaled * scaled * region).sum())
            if energy > 1e-6:  # the mouth branch shows in this frame
                gains.append(float(((batch.image - fixed) * scaled * region).sum()) / energy)
                opens.append(float(opening[i]))
    gains, opens = np.array(gains), np.array(opens)
    bins = {}
    for lo, hi in ((0, 0.005), (0.005, 0.015), (0.015, 0.03), (0.03, 0.05), (0.05, 0.08), (0.08, 1.0)):
        m = (opens >= lo) & (opens < hi)
        if m.any():
            bins[f"{lo}-{hi}"] = {"frames": int(m.sum()), "median": round(float(np.median(gains[m])), 3),
                                  "p25": round(float(np.percentile(gains[m], 25)), 3),
                                  "p75": round(float(np.percentile(gains[m], 75)), 3)}
    return {"frames": len(gains), "median": round(float(np.median(gains)), 3), "by_opening": bins}


def layers_strip(loaded, out: Path, openings=(0.005, 0.015, 0.025, 0.035, 0.05, 0.08)) -> None:
    """Mouth crops (x4) of the training frames whose tracked opening is nearest each of ``openings``: truth |
    render | face layer alone | mouth branch alone, each moved by the frame's own tracked code."""
    import cv2
    import torch

    from talkgs.eval.landmark_metrics import mouth_opening
    from talkgs.render.forward import render_frames
    from talkgs.utils import media

    model, ctx, codes, tracked = loaded
    head = model.head
    opening = mouth_opening(tracked)
    train = np.asarray(ctx.train_indices)
    half = max(8, ctx.resolution // 10)
    rows = []
    with torch.no_grad():
        for target in openings:
            i = int(train[np.argmin(np.abs(opening[train] - target))])
            batch, index = ctx.batch(i), torch.tensor([i])
            images = [batch.image]
            for face, mouth in ((True, True), (True, False), (False, True)):
                images.append(render_frames(head, codes, index, ctx.expression[index], batch.viewmat[None], batch.K,
                                            batch.under[None], face=face, mouth=mouth, face_motion=True,
                                            mouth_motion=True, backend=model.backend).image[0])
            cx, cy = tracked[i, [13, 14]].mean(0).round().astype(int)
            crops = [media.to_uint8(im.clamp(0, 1))[max(cy - half, 0):cy + half, max(cx - 2 * half, 0):cx + 2 * half]
                     for im in images]
            row = cv2.resize(np.concatenate(crops, 1), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
            cv2.putText(row, f"frame {i}, tracked opening {opening[i]:.3f}", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                        (255, 255, 0), 2)
            rows.append(row)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def speech_chain(bench: Path, cache: Path, speech_from: Path | None = None) -> dict:
    """Per speech-driven clip of a bench_lip_sync result: the aperture correlations and closure events (recall,
    precision) of the speech model's predicted opening and of the render, each against the driver's real mouth."""
    import torch
    from bench_lip_sync import longest_clips
    from probe_mouth_evidence import _collect

    from talkgs.eval.drive_ref import DriveRefConfig, aperture_correlation, closure_events, match_events
    from talkgs.eval.evaluate import load_fitted
    from talkgs.eval.lipsync import closure_threshold

    data = json.loads(bench.read_text())
    result = (data["results"] if "results" in data else data["code"]["results"])[0]  # session 7's file nests it
    fit = speech_from or Path(result["fit"])
    if not fit.exists():  # the benchmarks of sessions 7-9 ran from tools/
        fit = ROOT / "tools" / fit
    model, _ = load_fitted(fit, "cpu")
    head = model.head
    cfg = DriveRefConfig()
    clips = {c.stem: c for c in longest_clips().values()}

    def closures(x: np.ndarray, ref: np.ndarray) -> list[float]:
        found, truth = (closure_events(v, closure_threshold(v, cfg.lipsync)[0], cfg.closure_max_frames)
                        for v in (x, ref))
        return [round(v or 0.0, 2) for v in match_events(found, truth, cfg.event_tolerance)]

    out = {}
    for clip in result["drive"]["audio"]["clips"]:
        stem = Path(clip["video"]).stem
        data = _collect(clips[stem], cache)  # the cache holds each frame's evidence averaged over its two steps
        evidence = np.concatenate([data[e] for e in head.cfg.audio_encoders], -1)
        evidence = torch.tensor(np.repeat(evidence[:, None], 2, 1), dtype=torch.float32)
        with torch.no_grad():
            predicted = head.mouth_code.opening(head.speech(evidence, torch.arange(len(evidence)))).numpy()
        rendered, real = (np.array([np.nan if v is None else v for v in clip[k]], float)
                          for k in ("rendered_opening", "reference_opening"))
        n = min(len(predicted), len(rendered), len(real))
        predicted, rendered, real = predicted[:n].astype(float), rendered[:n], real[:n]
        out[stem] = {name: round(aperture_correlation(a, b, 5)[0], 3) for name, a, b in (
            ("predicted_vs_real", predicted, real), ("rendered_vs_real", rendered, real),
            ("rendered_vs_predicted", rendered, predicted))}
        out[stem].update({"predicted_closures_recall_precision": closures(predicted, real),
                          "rendered_closures_recall_precision": closures(rendered, real)})
        print(stem, out[stem], flush=True)
    first = next(iter(out.values()))
    print("median", {k: np.round(np.median([v[k] for v in out.values()], 0), 3).tolist() for k in first})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", type=Path, nargs="*")
    p.add_argument("--train-frames", type=int, default=160)
    p.add_argument("--json", type=Path)
    p.add_argument("--mouth-gain", type=float, default=1.0, help="counterfactual: the mouth branch's colour x G")
    p.add_argument("--mouth-gain-full-mm", type=float, help="with --mouth-gain: G when closed, 1 from this gap on")
    p.add_argument("--optimal-gain", action="store_true", help="the mouth colour gain the colour loss wants")
    p.add_argument("--layers-strip", type=Path, help="image of the first subject's mouth layers (see above)")
    p.add_argument("--bench", type=Path, help="a bench_lip_sync.py JSON of a code-path fit (see above)")
    p.add_argument("--speech-from", type=Path, help="with --bench: another fit's speech model predicts")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "evidence")
    args = p.parse_args()
    if args.bench:
        speech_chain(args.bench, args.cache, args.speech_from)
    results = {}
    for k, source in enumerate(args.subjects):
        loaded = load(source)
        results[str(source)] = r = fidelity(loaded, args.train_frames, args.mouth_gain, args.mouth_gain_full_mm)
        for split, v in r.items():
            ren, real = v["rendered_opening_pct"], v["real_opening_pct"]
            print(f"{source} {split}: opening corr {v['opening_corr']:.3f}, median opening {ren['50']} (real "
                  f"{real['50']}), 95th {ren['95']} (real {real['95']}), mouth PSNR {v['psnr_mouth']:.2f} dB")
            print(f"  lips' geometric opening: median {v['geometric_opening_pct']['50']} (tracked "
                  f"{v['tracked_opening_pct']['50']}), corr with tracked {v['geometric_vs_tracked_corr']:.3f}, "
                  f"render vs geometric {v['rendered_vs_geometric_corr']:.3f}")
        if args.optimal_gain:
            print(f"{source}: optimal mouth colour gain {json.dumps(optimal_gain(loaded))}")
        if args.layers_strip and k == 0:
            layers_strip(loaded, args.layers_strip)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
