"""Ordinary footage, no artifacts (issue 28): every benchmark subject prepared, fitted and checked for blotches.

    python tools/bench_footage.py [--subjects demo,occluder,sleeve,logo,handheld,anchor,ted_lieu] [--work DIR]

Each subject is prepared and fitted with the cpu preset (one at a time; a finished fit is reused) and scored by
``talkgs eval`` on its held-out frames (the last 1/11 of the clip): the local error check (frames where a patch of
the head outside the lips is worse with motion than without, by more than 0.07), PSNR, LMD and the mouth opening,
each beside the same Gaussians without motion. Beside them: what ``talkgs prepare`` found (occlusions, the camera's
motion) and what the fit's self-check found and mended. The occluded fits are also rendered at the training frames
the hand or sleeve covered, and compared with the same frames of the clean clip (is the face still the face there?).

Subjects: ``demo`` (assets/), the hard cases made from it by ``tools/hard_cases.py`` (``occluder``, ``logo``,
``handheld``, ``sleeve``), and from ../shared/data ``anchor`` (71 s, jump cuts) and ``ted_lieu`` (60 s).

Writes ``docs/benchmarks/footage.json`` (with ``--json``) and, per subject, a contact sheet of held-out frames
(rows: truth, render, error) to ``docs/images/footage_<subject>_held_out.jpg`` and prepare's contact sheet to
``docs/images/footage_<subject>_prepare.jpg``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_lip_sync import contact_sheet  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEMO = ROOT / "assets" / "obama2010_pd_en_20s_256.mp4"
HARD = ("occluder", "sleeve", "logo", "handheld")
SHARED = {"anchor": DATA / "video" / "anchor_en_71s_512.mp4",
          "ted_lieu": DATA / "speakers" / "edtalk_ted_lieu_en_60s_256.mp4"}


def source(subject: str, work: Path) -> Path:
    if subject == "demo":
        return DEMO
    if subject in HARD:
        made = work / "hard" / f"{subject}.mp4"
        if not made.is_file():
            import hard_cases

            hard_cases.make(DEMO, work / "hard")
        return made
    if not SHARED[subject].is_file():
        raise SystemExit(f"{SHARED[subject]} is missing: the {subject} subject needs ../shared/data")
    return SHARED[subject]


def fitted(subject: str, work: Path) -> tuple[Path, dict, float]:
    """WORK/<subject>: prepared and fitted with the cpu preset (reused when fitted); (root, prepare report,
    seconds spent now)."""
    from talkgs.data import schema
    from talkgs.prepare.config import PrepareConfig
    from talkgs.prepare.pipeline import prepare
    from talkgs.train.config import FitConfig
    from talkgs.train.trainer import Trainer
    from talkgs.utils.config import load_section, merge

    root = work / subject
    t0 = time.perf_counter()
    if not (root / schema.MANIFEST).is_file():
        prepare(source(subject, work), root, merge(load_section(PrepareConfig, "cpu", "prepare"), {"preview": True}),
                force=True)
    if not (root / schema.MODEL).is_file():
        resume = (root / schema.CHECKPOINT).is_file()
        Trainer(root, load_section(FitConfig, "cpu", "fit"), resume=resume, force=not resume).run()
    return root, json.loads((root / schema.REPORT).read_text()), time.perf_counter() - t0


def covered_frames_against_clean(root: Path, clean: Path, covered: np.ndarray | None = None) -> dict:
    """An occluded clip's fit rendered at the training frames that were covered (``covered``; by default those its
    own prepare found), against the clean clip's frames (head PSNR, local excess over the same Gaussians without
    motion). A fit from before occlusions were looked for is scored on the frames a newer prepare found."""
    import torch

    from talkgs.data import schema
    from talkgs.data.frames import label_mask, label_table
    from talkgs.eval.evaluate import load_fitted, local_excess, render_frame
    from talkgs.model.losses import psnr

    model, ctx = load_fitted(root, "cpu")
    _, truth = load_fitted(clean, "cpu")
    if covered is None:
        covered = np.flatnonzero(np.load(root / schema.SIGNALS)["occluded"] > 0)
    head_ids = label_table(schema.HEAD_LABELS)
    scores, excess = [], []
    with torch.no_grad():
        for i in covered:
            _, out = render_frame(model, ctx, int(i))
            real = truth.batch(int(i))
            image = out.image[0].clamp(0, 1)
            scores.append(float(psnr(image, real.image, label_mask(real.labels, head_ids)[..., None].float())))
            still = render_frame(model, ctx, int(i), motion=False)[1].image[0].clamp(0, 1)
            excess.append(local_excess(image, still, real.image, real.labels))
    return {"frames": len(covered), "psnr_head_median": round(float(np.median(scores)), 2),
            "psnr_head_min": round(float(np.min(scores)), 2), "local_excess_median": round(float(np.median(excess)), 4),
            "local_excess_max": round(float(np.max(excess)), 4)}


def run(subject: str, work: Path, images: Path | None) -> dict:
    import cv2

    from talkgs.data import schema
    from talkgs.eval.evaluate import evaluate

    root, prep, seconds = fitted(subject, work)
    fit = json.loads((root / schema.FIT_REPORT).read_text())
    ev = evaluate(root, root / "bench_eval.json", root / "bench_eval.mp4")
    row = {"subject": subject, "frames": prep["frames"], "size": prep["size"], "test_frames": prep["test_frames"],
           "seconds_now": round(seconds),
           "prepare": {k: prep.get(k) for k in ("occlusion", "camera_motion", "frames_mostly_covered", "cuts")},
           "self_check": {k: v["self_check"] for k, v in fit["stages"].items() if "self_check" in v},
           "eval": {k: ev[k] for k in ("psnr", "ssim", "psnr_head", "psnr_mouth", "lmd_px", "mouth_open_corr",
                                       "mouth_open_spread", "local_error", "local_error_tracked", "local_check",
                                       "no_motion")}}
    if subject in ("occluder", "sleeve"):
        clean, _, _ = fitted("demo", work)
        row["covered_training_frames"] = covered_frames_against_clean(root, clean)
    if images is not None:
        contact_sheet(root / "bench_eval.mp4", images / f"footage_{subject}_held_out.jpg")
        sheet = cv2.imread(str(root / schema.PREVIEW_SHEET))
        if sheet is not None:
            scale = 1024 / sheet.shape[1]
            sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(images / f"footage_{subject}_prepare.jpg"), sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    local, speech = row["eval"]["local_check"], row["eval"]["local_error"]
    print(f"{subject}: held-out PSNR {ev['psnr']:.2f} dB, local check ({local['drive']} mouth) {local['frames_over']} "
          f"of {prep['test_frames'][1] - prep['test_frames'][0]} frames over, speech-driven {speech['frames_over']} "
          f"(worst {speech['worst_excess']:.3f}); "
          f"occluded frames {prep['occlusion'].get('frames')}; camera moving {prep['camera_motion']['moving']}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="demo,occluder,sleeve,logo,handheld,anchor,ted_lieu")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "footage")
    ap.add_argument("--json", type=Path, help="write the rows here (e.g. docs/benchmarks/footage.json)")
    ap.add_argument("--images", type=Path, default=ROOT / "docs" / "images",
                    help="folder for the contact sheets ('' for none)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    images = Path(args.images) if str(args.images) else None
    rows = []
    for subject in args.subjects.split(","):
        rows.append(run(subject, args.work, images))
        if args.json:
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps({"command": "python tools/bench_footage.py " + " ".join(sys.argv[1:]),
                                       "results": rows}, indent=1))
            shutil.move(tmp, args.json)


if __name__ == "__main__":
    main()
