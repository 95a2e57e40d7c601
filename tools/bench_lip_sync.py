"""Lip sync against real mouths, every drive path: the benchmark behind docs/lip_sync.md.

    python tools/bench_lip_sync.py [--subjects demo,anchor] [--paths audio,code,visemes] [--work outputs/bench]
                                   [--out docs/benchmarks/lip_sync.json] [--strip-driver noem_en_18s_256]

For each subject (the demo clip in assets/, the 71 s anchor clip of ../shared/data) and each drive path
(``audio``: TalkingGaussian's direct audio nets; ``code``: the mouth code and its speech model on Whisper's
features, the default; ``visemes``: the code path on pocketsphinx's visemes and the normalised cepstra, the
default until session 13), it prepares and fits the subject with the cpu preset (skipped when
WORK/<subject>_<path> holds a fit), then:

- drives it with the longest clip of every other speaker in ../shared/data, video/ and speakers/ (their soundtracks
  through the model's audio path) and compares the mouths MediaPipe sees in the render and in that
  video (``talkgs eval --drive-ref``), each figure beside its chance level; a code-path speech model
  pooled with the prior (``head.code.prior``) has heard the public-domain speakers (Obama, Reagan), so
  they do not drive it (the result's ``drivers_left_out``);
- on the code path also drives it with those videos' tracked mouths (``talkgs render --drive``);
- evaluates the held-out split self-driven (``talkgs eval``: mouth_open_corr, the opening's spread, LMD, mouth
  and head PSNR, each beside the same Gaussians without motion).

For the first --strip-driver clip it also writes docs/images/lip_sync_<subject>_<path>_strip.png: the
driver's real mouth above, the rendered mouth below, on the same frames (spread from its most closed to
its most open); and, for seed 0, docs/images/lip_sync_<subject>_<path>_held_out.jpg: a contact sheet of
held-out frames (truth, render, error).

Train/test split: every fit trains on the first 10/11 of its clip; the held-out figures are on the
last 1/11; the drivers are other people, never seen by the fit. The JSON keeps every per-clip figure
and the per-frame openings; a markdown table is printed for docs/lip_sync.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHARED = DATA / "video"
SUBJECTS = {"demo": ROOT / "assets" / "obama2010_pd_en_20s_256.mp4", "anchor": SHARED / "anchor_en_71s_512.mp4"}
#: Who speaks in each clip of ../shared/data/video (speakers/ names its speaker in the file name): a subject is
#: never driven by its own speaker.
SPEAKER = {
    "anchor_en_71s_512": "anchor", "feifeili_en_10s_256": "feifeili", "feifeili_en_15s_256": "feifeili",
    "hdtf_katiehill_8s_512": "katiehill", "noem_en_18s_256": "noem", "obama2010_pd_en_20s_256": "obama",
    "obama_diwali_pd_en_30s_256": "obama", "obama_pd_8s_960x540": "obama", "reagan_pd_en_26s_256": "reagan",
    "retalk_anchor_f_en_7s_700": "anchor_f", "retalk_mcguinness_en_5s_524": "mcguinness",
    "retalk_swalwell_en_5s_844": "swalwell",
}
SUBJECT_SPEAKER = {"demo": "obama", "anchor": "anchor"}
#: Speakers of the public-domain clips, which talkgs/data/mouth_prior.npz holds (``head.code.prior``).
PRIOR_SPEAKERS = {SPEAKER[c] for c in SPEAKER if "_pd_" in c}
#: Fit settings per drive path, over the cpu preset: the code path as it is by default (Whisper's features), as
#: it was until session 13 (pocketsphinx's visemes and the normalised cepstra, with that evidence's window and
#: ridge), and TalkingGaussian's direct path.
PATH_OVERRIDES = {"audio": {"head": {"drive": "audio", "audio_encoders": ["mel"]}},
                  "code": {"head": {"drive": "code", "audio_encoders": ["whisper"]}},
                  "visemes": {"head": {"drive": "code", "audio_encoders": ["visemes", "cepstra"],
                                       "code": {"window": 5, "ridge": 10.0, "prior_weight": 1.0}}}}


def speaker_of(clip: Path) -> str | None:
    """The speaker of a clip of ../shared/data (video/: ``SPEAKER``; speakers/: <source>_<name>_<lang>_<len>_<px>)."""
    if clip.parent.name == "speakers":
        match = re.match(r"^[a-z0-9]+_(.*)_[a-z]+_\d+s_\d+$", clip.stem)
        return match.group(1) if match else None
    return SPEAKER.get(clip.stem)


def longest_clips(folders: tuple[str, ...] = ("video", "speakers")) -> dict[str, Path]:
    """The longest clip of every speaker in those folders of ../shared/data, by speaker (video/ alone: the 9
    speakers of issue 13's benchmark; with speakers/: 33 people)."""
    from talkgs.utils import media

    best: dict[str, tuple[float, Path]] = {}
    for clip in sorted(c for folder in folders for c in (DATA / folder).glob("*.mp4")):
        speaker = speaker_of(clip)
        if speaker is None:
            continue
        duration = media.probe_video(clip).duration
        if speaker not in best or duration > best[speaker][0]:
            best[speaker] = (duration, clip)
    return {s: best[s][1] for s in sorted(best)}


def drivers(subject: str, exclude: set[str] | frozenset[str] = frozenset(),
            folders: tuple[str, ...] = ("video", "speakers")) -> list[Path]:
    """The longest clip of every speaker other than the subject's and those in ``exclude``."""
    return [clip for speaker, clip in longest_clips(folders).items()
            if speaker != SUBJECT_SPEAKER[subject] and speaker not in exclude]


def fitted_subject(subject: str, path: str, work: Path, seed: int, size: int | None = None) -> tuple[Path, dict]:
    """WORK/<subject>_<path>[_s<seed>], prepared and fitted with the cpu preset (reused when fitted); ``size``
    replaces the preset's subject side and training resolution."""
    from talkgs.data import schema
    from talkgs.prepare.config import PrepareConfig
    from talkgs.prepare.pipeline import prepare
    from talkgs.train.config import FitConfig
    from talkgs.train.trainer import Trainer
    from talkgs.utils.config import load_section, merge

    sized = {} if size is None else {"video": {"size": size}}
    prepared = work / f"{subject}_prepared"
    if not (prepared / schema.MANIFEST).is_file():
        prepare(SUBJECTS[subject], prepared, merge(load_section(PrepareConfig, "cpu", "prepare"), sized), force=True)
    root = work / (f"{subject}_{path}" + ("" if seed == 0 else f"_s{seed}"))
    if not (root / schema.MODEL).is_file():
        # An interrupted benchmark fit continues where it stopped (the stages' times survive in its report).
        resume = (root / schema.CHECKPOINT).is_file()
        if not resume:
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(prepared, root, ignore=shutil.ignore_patterns("fit", "preview"))
        cfg = merge(load_section(FitConfig, "cpu", "fit"),
                    {**PATH_OVERRIDES[path], "seed": seed, **({} if size is None else {"resolution": size})})
        Trainer(root, cfg, resume=resume, force=not resume).run()
    return root, json.loads((root / schema.FIT_REPORT).read_text())


def mouth_strip(root: Path, video: Path, out: Path, frames: int = 10, zoom: int = 3) -> None:
    """The driver's mouth above, the render's (driven by its soundtrack) below, on the same frames."""
    import cv2
    import torch

    from talkgs.data import topology as topo
    from talkgs.eval.landmark_metrics import DETECT_SIZE, track_landmarks
    from talkgs.eval.lipsync import mouth_openings
    from talkgs.render.driver import TalkingRenderer, read_speech
    from talkgs.utils import media

    renderer = TalkingRenderer(root)
    samples = read_speech(video)
    n = renderer.num_frames(samples)
    info = media.probe_video(video)
    opening = mouth_openings(video, (info.width, info.height), renderer.fps)[:n]
    valid = np.flatnonzero(np.isfinite(opening))
    order = valid[np.argsort(opening[valid], kind="stable")]
    picks = np.sort(order[np.linspace(0, len(order) - 1, frames).round().astype(int)])
    with torch.no_grad():
        rendered = renderer.render_batch(renderer.encode(samples, n), picks)
    real = [f for i, f in enumerate(media.read_frames(video, (info.width, info.height), fps=renderer.fps))
            if i in set(picks.tolist())]
    rows = []
    for images in (real, rendered):
        tiles = []
        for image, pts in zip(images, track_landmarks(images)):
            lips = pts[list(topo.LIPS_OUTER)] * image.shape[0] / DETECT_SIZE  # [20, 2] in image pixels
            found = bool(np.isfinite(lips).all())
            cx, cy = np.nanmean(lips, 0).round().astype(int) if found else (image.shape[1] // 2, image.shape[0] // 2)
            # A box twice as wide as tall, 1.8 lip widths across: the lips, the chin's top and the teeth.
            half = max(4, int(0.9 * np.ptp(lips[:, 0]))) if found else image.shape[0] // 6
            crop = image[max(0, cy - half // 2): cy + half // 2, max(0, cx - half): cx + half]
            tiles.append(cv2.resize(crop, (48 * zoom, 24 * zoom), interpolation=cv2.INTER_AREA))
        rows.append(np.concatenate(tiles, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def contact_sheet(eval_video: Path, out: Path, frames: int = 6) -> None:
    """Held-out frames spread over the test split, one row each: truth, render, error (``talkgs eval``'s
    side-by-side video), enlarged to about 256 px a frame for the docs."""
    import cv2

    from talkgs.utils import media

    info = media.probe_video(eval_video)
    zoom = max(1, round(256 / info.height))
    total = round(info.duration * info.fps)
    picks = set(np.linspace(0, total - 1, frames).round().astype(int).tolist())
    rows = [f for i, f in enumerate(media.read_frames(eval_video, (info.width, info.height))) if i in picks]
    sheet = np.concatenate(rows, 0)
    sheet = cv2.resize(sheet, (sheet.shape[1] * zoom, sheet.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def _summary(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.median(values)), 3) if values else None


def run_one(subject: str, path: str, work: Path, seed: int, strip_driver: str | None = None,
            size: int | None = None) -> dict:
    from talkgs.eval.drive_ref import evaluate_drive_ref
    from talkgs.eval.evaluate import evaluate
    from talkgs.model.fitted import load_model

    root, fit_report = fitted_subject(subject, path, work, seed, size)
    images = f"lip_sync_{subject}_{path}" + ("" if size is None else f"_{size}")
    head = load_model(root).head.cfg
    # A speech model that learned from the prior's clips has heard those speakers: they do not drive it.
    left_out = PRIOR_SPEAKERS if head.drive == "code" and head.code.prior else frozenset()
    held_out = evaluate(root, root / "bench_eval.json", root / "bench_eval.mp4")
    if seed == 0:
        contact_sheet(root / "bench_eval.mp4", ROOT / "docs" / "images" / f"{images}_held_out.jpg")
    result: dict = {"subject": subject, "path": path, "seed": seed, "fit": str(root),
                    "fit_seconds": round(sum(s.get("seconds", 0.0) for s in fit_report["stages"].values())),
                    "held_out": held_out, "mouth_code": fit_report.get("mouth_code"),
                    "drivers_left_out": sorted(left_out), "drive": {}}
    for mode in ("audio", "video") if path != "audio" else ("audio",):
        rows = []
        for video in drivers(subject, left_out):
            r = evaluate_drive_ref(root, video, drive=mode)
            rows.append({**{k: v for k, v in r.items() if k != "config"}, "video": video.stem})
            print(f"{subject} {path} {mode} {video.stem}: aperture {r['aperture_corr']} at {r['lag_frames']:+d} "
                  f"(chance {r['chance']['aperture_corr']}), closures recall {r['closure_recall']} precision "
                  f"{r['closure_precision']}", flush=True)
        if mode == "audio" and strip_driver:
            mouth_strip(root, SHARED / f"{strip_driver}.mp4",
                        ROOT / "docs" / "images" / f"{images}_strip.png")
        result["drive"][mode] = {
            "clips": rows,
            "median": {k: _summary(rows, k) for k in ("aperture_corr", "lag_frames", "closure_recall",
                                                      "closure_precision", "bilabial_closure",
                                                      "bilabial_closure_reference")},
            "median_chance": {k: _summary([r["chance"] for r in rows], k) for k in
                              ("aperture_corr", "closure_recall", "closure_precision")},
        }
    return result


def table(results: list[dict]) -> str:
    """The markdown table of docs/lip_sync.md."""
    lines = ["| subject | path | driven by | aperture corr (chance) | lag | closure recall (chance) | "
             "closure precision (chance) | p/b/m closed (real footage) | held-out mouth_open_corr (no motion) | "
             "held-out spread (no motion) | LMD px (no motion) | mouth PSNR (no motion) | head PSNR (no motion) |",
             "|" + "---|" * 13]
    for r in results:
        h, still = r["held_out"], r["held_out"].get("no_motion") or {}
        for mode, d in r["drive"].items():
            m, c = d["median"], d["median_chance"]
            lines.append(
                f"| {r['subject']} | {r['path']} | {'speech' if mode == 'audio' else 'tracked mouth'} "
                f"({len(d['clips'])} speakers) | {m['aperture_corr']} ({c['aperture_corr']}) | {m['lag_frames']} | "
                f"{m['closure_recall']} ({c['closure_recall']}) | "
                f"{m['closure_precision']} ({c['closure_precision']}) | "
                f"{m['bilabial_closure']} ({m['bilabial_closure_reference']}) | "
                f"{h.get('mouth_open_corr')} ({still.get('mouth_open_corr')}) | "
                f"{h.get('mouth_open_spread')} ({still.get('mouth_open_spread')}) | {h.get('lmd_px')} "
                f"({still.get('lmd_px')}) | {h.get('psnr_mouth')} ({still.get('psnr_mouth')}) | "
                f"{h.get('psnr_head')} ({still.get('psnr_head')}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="demo,anchor")
    ap.add_argument("--paths", default="audio,code")
    ap.add_argument("--seeds", default="0", help="comma-separated fit seeds (stability: 0,1,2)")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "lip_sync.json")
    ap.add_argument("--size", type=int, default=None,
                    help="subject side and training resolution instead of the cpu preset's 256 px")
    ap.add_argument("--strip-driver", default="noem_en_18s_256", help="clip stem of the mouth strip ('' for none)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the real footage in {SHARED}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for subject in args.subjects.split(","):
        for path in args.paths.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                results.append(run_one(subject, path, args.work, seed, args.strip_driver if seed == 0 else None,
                                       args.size))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"command": "python tools/bench_lip_sync.py " + " ".join(
                    f"--{k} {v}" for k, v in (("subjects", args.subjects), ("paths", args.paths),
                                               ("seeds", args.seeds), ("size", args.size)) if v is not None),
                    "results": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
