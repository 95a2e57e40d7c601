"""``talkgs eval SUBJECT_DIR``: render the held-out frames and compare them with the real ones.

The head is the fitted model (SUBJECT_DIR/fit/model.safetensors) drawn through the one forward pass
(``talkgs.render.forward``) that training used, so the evaluation sees exactly what was trained.
Frames stream: each held-out frame is rendered, scored, written to the side-by-side video and dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from talkgs.data import schema
from talkgs.data.frames import Batch, SubjectFrames, label_mask, label_table, pick_device
from talkgs.data.subject import Subject
from talkgs.eval.landmark_metrics import LandmarkTracker, landmark_metrics
from talkgs.model.fitted import FittedModel, load_model
from talkgs.model.local_check import LOCAL_EXCESS_MAX, local_excess, local_patch_px, local_shift_px  # noqa: F401
from talkgs.model.losses import psnr, ssim
from talkgs.render.forward import FrameOutput, render_frames
from talkgs.utils import log, media


def load_fitted(subject_dir: str | Path, device: str | None = None) -> tuple[FittedModel, SubjectFrames]:
    """(fitted model, the subject's frames at the fit's resolution on ``device``) of a fitted subject.

    Everything that draws comes from the fitted model (fit/model.safetensors); the subject folder
    gives only what is compared with: the real frames, their poses, torso layers and audio.
    """
    subject = Subject(subject_dir)
    model = load_model(subject.root)
    dev = pick_device(device or model.header["device"])
    model.head.to(dev)
    frames = SubjectFrames(subject, model.resolution, dev, model.encoders, tuple(model.head.cfg.expression),
                           model.neck_extension, model.layer_background)
    return model, frames


def render_frame(model: FittedModel, frames: SubjectFrames, index: int, motion: bool = True,
                 drive: torch.Tensor | None = None) -> tuple[Batch, FrameOutput]:
    """(the real frame ``index``, the model's render of it with that frame's own audio, pose and torso).

    ``motion`` False: the same Gaussians without their motion fields (the no-motion baseline).
    ``drive``: what moves the fields instead of the audio features, e.g. a code track [F, C].
    """
    batch = frames.batch(int(index))
    draws = model.draws
    idx = torch.tensor([batch.index], device=frames.device)
    features = frames.features if drive is None else drive
    out = render_frames(model.head, features, idx, frames.expression[idx], batch.viewmat[None], batch.K,
                        batch.under[None], mouth=draws["mouth"], face_motion=draws["face_motion"] and motion,
                        mouth_motion=draws["mouth_motion"] and motion, backend=model.backend)
    return batch, out


def _local_report(excess: list[float], frames: np.ndarray, res: int) -> dict | None:
    """The local check's report over the held-out ``frames`` of their ``excess`` (None: not run)."""
    if not excess:
        return None
    return {"worst_excess": round(max(excess), 4), "median_excess": round(float(np.median(excess)), 4),
            "threshold": LOCAL_EXCESS_MAX, "frames_over": int(sum(e > LOCAL_EXCESS_MAX for e in excess)),
            "worst_frame": int(frames[int(np.argmax(excess))]), "patch_px": local_patch_px(res),
            "shift_px": local_shift_px(res)}


def _local_verdict(speech: dict | None, tracked: dict | None) -> dict | None:
    """Whether the picture has a blotch, from the local check's reports: the one with each frame's own tracked
    mouth where the model has a mouth code (speech moves the chin by the lip-sync error, which ``local_error``
    counts too), else the speech-driven one."""
    chosen, drive = (tracked, "tracked") if tracked is not None else (speech, "speech")
    if chosen is None:
        return None
    return {"drive": drive, "frames_over": chosen["frames_over"], "passed": chosen["frames_over"] == 0}


def _lpips_fn(device):
    """LPIPS (AlexNet) when the lpips package and its weights are on this machine, else None."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        # Naming the installed torch keeps pip from replacing a CPU build with a CUDA one for lpips.
        return None, ("the lpips package is not installed; install it with "
                      f"pip install 'talkgs[eval]' torch=={torch.__version__.split('+')[0]}")
    try:
        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as e:  # weights missing: lpips tries to download them
        return None, f"LPIPS weights are not available ({type(e).__name__})"
    return net, None


@torch.no_grad()
def evaluate(subject_dir: str | Path, json_path: str | Path | None = None, video_path: str | Path | None = None,
             device: str | None = None) -> dict:
    model, ctx = load_fitted(subject_dir, device)
    root = ctx.subject.root
    json_path = Path(json_path) if json_path else root / schema.EVAL_REPORT
    video_path = Path(video_path) if video_path else root / schema.EVAL_VIDEO
    lpips_net, lpips_reason = _lpips_fn(ctx.device)
    if lpips_net is None:
        log.info(f"lpips: null ({lpips_reason})")
    res = ctx.resolution
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_head": [], "psnr_mouth": [], "lpips": []}
    # The baseline: the same Gaussians without their motion fields. Pose alone moves what MediaPipe
    # reads as mouth opening, so a motionless mouth scores a correlation too, and the report says how much.
    moving = ctx.features is not None and (model.draws["face_motion"] or model.draws["mouth_motion"])
    head_labels = label_table(schema.HEAD_LABELS, ctx.device)
    still_scores: dict[str, list[float]] = {"psnr_head": [], "psnr_mouth": []}
    excess: list[float] = []  # per held-out frame, ``local_excess``
    # The same check with the mouth code driven by each frame's own tracked mouth: what speech opens differently
    # from the truth (a chin lower or higher) is left to the lip-sync measures; what remains is the picture's.
    tracked = None
    if moving and model.head.cfg.drive == "code":
        tracked = model.head.mouth_code.encode(ctx.subject.canonical_landmarks).to(ctx.device)  # [F, C]
    excess_tracked: list[float] = []
    # Landmarks are tracked while the frames stream, so no frame is kept.
    rendered, truth = LandmarkTracker(), LandmarkTracker()
    still = LandmarkTracker() if moving else None
    tmp_video = video_path.with_name(video_path.name + ".tmp.mp4")
    with media.VideoWriter(tmp_video, (3 * res, res), ctx.subject.fps, crf=16, preset="veryfast",
                           pix_fmt="yuv420p") as out:
        for i in log.progress(ctx.test_indices, desc="eval", unit="frame"):
            batch, rendered_frame = render_frame(model, ctx, int(i))
            image = rendered_frame.image[0].clamp(0, 1)
            head_mask = label_mask(batch.labels, head_labels)[..., None].float()
            mouth = (batch.labels == schema.Label.MOUTH) | (batch.labels == schema.Label.LIPS)
            scores["psnr"].append(float(psnr(image, batch.image)))
            scores["ssim"].append(float(ssim(image, batch.image)))
            scores["psnr_head"].append(float(psnr(image, batch.image, head_mask)))
            if mouth.any():
                scores["psnr_mouth"].append(float(psnr(image, batch.image, mouth[..., None].float())))
            if lpips_net is not None:
                to = lambda x: x.permute(2, 0, 1)[None] * 2 - 1  # noqa: E731
                scores["lpips"].append(float(lpips_net(to(image), to(batch.image))))
            r8 = media.to_uint8(image)
            g8 = media.to_uint8(batch.image)
            err = np.clip(np.abs(r8.astype(int) - g8.astype(int)) * 4, 0, 255).astype(np.uint8)
            out.write(np.concatenate([g8, r8, err], 1))
            rendered.add(r8)
            truth.add(g8)
            if moving:
                base = render_frame(model, ctx, int(i), motion=False)[1].image[0].clamp(0, 1)
                excess.append(local_excess(image, base, batch.image, batch.labels))
                if tracked is not None:
                    own = render_frame(model, ctx, int(i), drive=tracked)[1].image[0].clamp(0, 1)
                    excess_tracked.append(local_excess(own, base, batch.image, batch.labels))
                still_scores["psnr_head"].append(float(psnr(base, batch.image, head_mask)))
                if mouth.any():
                    still_scores["psnr_mouth"].append(float(psnr(base, batch.image, mouth[..., None].float())))
                still.add(media.to_uint8(base))
    mux_split_audio(ctx.subject, tmp_video, video_path, int(ctx.test_indices[0]))
    truth_marks = truth.result()
    marks = landmark_metrics(rendered.result(), truth_marks)
    mean = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    rounded = lambda d: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}  # noqa: E731
    no_motion = None
    if moving:
        base_marks = landmark_metrics(still.result(), truth_marks)
        no_motion = rounded({**{k: mean(v) for k, v in still_scores.items()},
                             **{k: base_marks[k] for k in ("lmd_px", "mouth_open_corr", "mouth_open_spread")}})
    report = {
        "psnr": mean(scores["psnr"]), "ssim": mean(scores["ssim"]),
        "lpips": mean(scores["lpips"]) if lpips_net is not None else None,
        **rounded(marks),
        "psnr_head": mean(scores["psnr_head"]), "psnr_mouth": mean(scores["psnr_mouth"]),
        "no_motion": no_motion,
        "local_error": _local_report(excess, ctx.test_indices, res),
        "local_error_tracked": _local_report(excess_tracked, ctx.test_indices, res),
        "test_frames": [int(ctx.test_indices[0]), int(ctx.test_indices[-1]) + 1],
        "resolution": res, "video": str(video_path),
    }
    verdict = report["local_check"] = _local_verdict(report["local_error"], report["local_error_tracked"])
    if verdict is not None and not verdict["passed"]:
        log.warn(f"local check failed: {verdict['frames_over']} of {len(ctx.test_indices)} held-out frames have a "
                 f"patch of the head worse with motion than without by more than {LOCAL_EXCESS_MAX}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1))
    return report


def mux_split_audio(subject: Subject, video: Path, out: Path, start_frame: int) -> None:
    """Put the subject's audio from ``start_frame`` on under ``video`` as ``out`` (or move it as it is
    when the subject has no audio); ``video`` is removed."""
    try:
        if subject.meta["audio"].get("file"):
            media.mux_audio(video, subject.root / schema.AUDIO, out, start_frame / subject.fps)
        else:
            video.replace(out)
    finally:
        video.unlink(missing_ok=True)
