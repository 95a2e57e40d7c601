"""``talkgs eval SUBJECT_DIR``: render the held-out frames and compare them with the real ones.

The renderer is rebuilt from the run's saved config (SUBJECT_DIR/fit/config.yaml) and model, so the
evaluation sees exactly what was trained. Frames stream: each held-out frame is rendered, scored,
written to the side-by-side video and dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from talkgs.data import schema
from talkgs.data.subject import Subject
from talkgs.errors import TalkgsError
from talkgs.eval.landmark_metrics import LandmarkTracker, landmark_metrics
from talkgs.model.losses import psnr, ssim
from talkgs.utils import log, media

EVAL_REPORT = "eval_report.json"
EVAL_VIDEO = "eval_side_by_side.mp4"


def load_fitted(subject_dir: str | Path, device: str | None = None):
    """(context, stage) able to render any frame of a fitted subject, rebuilt from its saved config."""
    import dataclasses

    from safetensors.torch import load_file

    from talkgs.model.talking_head import TalkingHead
    from talkgs.train.config import FitConfig
    from talkgs.train.context import FitContext
    from talkgs.train.stages import STAGES
    from talkgs.utils.config import from_dict, load_yaml

    subject = Subject(subject_dir)
    root = subject.root
    if not (root / schema.TALKING_HEAD).is_file() or not (root / schema.FIT_CONFIG).is_file():
        raise TalkgsError(f"{root} is not fitted yet; run talkgs fit {root} first")
    cfg = from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG))
    if device:
        cfg = dataclasses.replace(cfg, device=device)
    ctx = FitContext(subject, cfg)
    audio_dim = ctx.features.shape[-1] if ctx.features is not None else 1
    head = TalkingHead.from_tensors(load_file(str(root / schema.TALKING_HEAD)), audio_dim, cfg.head).to(ctx.device)
    last = cfg.stages[-1]
    return ctx, STAGES[last.name](ctx, last, head)


def _lpips_fn(device):
    """LPIPS (AlexNet) when the lpips package and its weights are on this machine, else None."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None, "the lpips package is not installed"
    try:
        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as e:  # weights missing: lpips tries to download them
        return None, f"LPIPS weights are not available ({type(e).__name__})"
    return net, None


@torch.no_grad()
def evaluate(subject_dir: str | Path, json_path: str | Path | None = None, video_path: str | Path | None = None,
             device: str | None = None) -> dict:
    ctx, stage = load_fitted(subject_dir, device)
    root = ctx.subject.root
    json_path = Path(json_path) if json_path else root / EVAL_REPORT
    video_path = Path(video_path) if video_path else root / EVAL_VIDEO
    lpips_net, lpips_reason = _lpips_fn(ctx.device)
    if lpips_net is None:
        log.info(f"lpips: null ({lpips_reason})")
    res = ctx.resolution
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_head": [], "psnr_mouth": [], "lpips": []}
    # The baseline: the same Gaussians without their motion fields. Pose alone moves what MediaPipe
    # reads as mouth opening, so a motionless mouth scores a correlation too, and the report says how much.
    moving = stage.face_motion or stage.mouth_motion
    still_scores: dict[str, list[float]] = {"psnr_head": [], "psnr_mouth": []}
    # Landmarks are tracked while the frames stream, so no frame is kept.
    rendered, truth = LandmarkTracker(), LandmarkTracker()
    still = LandmarkTracker() if moving else None
    tmp_video = video_path.with_name(video_path.name + ".tmp.mp4")
    with media.VideoWriter(tmp_video, (3 * res, res), ctx.subject.fps, crf=16, preset="veryfast",
                           pix_fmt="yuv420p") as out:
        for i in log.progress(ctx.test_indices, desc="eval", unit="frame"):
            batch = ctx.batch(int(i))
            image, _ = stage.render(batch)
            image = image.clamp(0, 1)
            masks = stage.masks(batch)
            mouth = (batch.labels == schema.Label.MOUTH) | (batch.labels == schema.Label.LIPS)
            scores["psnr"].append(float(psnr(image, batch.image)))
            scores["ssim"].append(float(ssim(image, batch.image)))
            scores["psnr_head"].append(float(psnr(image, batch.image, masks["head"])))
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
                base = stage.render(batch, motion=False)[0].clamp(0, 1)
                still_scores["psnr_head"].append(float(psnr(base, batch.image, masks["head"])))
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
                             **{k: base_marks[k] for k in ("lmd_px", "mouth_open_corr")}})
    report = {
        "psnr": mean(scores["psnr"]), "ssim": mean(scores["ssim"]),
        "lpips": mean(scores["lpips"]) if lpips_net is not None else None,
        **rounded(marks),
        "psnr_head": mean(scores["psnr_head"]), "psnr_mouth": mean(scores["psnr_mouth"]),
        "no_motion": no_motion,
        "test_frames": [int(ctx.test_indices[0]), int(ctx.test_indices[-1]) + 1],
        "resolution": res, "video": str(video_path),
    }
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
