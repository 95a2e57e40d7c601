"""``talkgs prepare``: a raw talking video in, a tracked and segmented subject folder out.

Two streaming passes over the video, so memory stays flat in its length:
1. landmarks on the source frames, which fix the one crop for the whole video;
2. the cropped frames: segmentation, label maps, encoding, background samples, preview.
Between them run the per-frame computations that need every frame's landmarks but no pixels:
head tracking, expression signals, the audio-video offset and the audio features.
Everything is written to a staging folder and moved into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import talkgs
from talkgs.audio import features as audio_features
from talkgs.data import schema
from talkgs.data.topology import MOTION_CHECK, RIGID
from talkgs.errors import TalkgsError
from talkgs.prepare.background import BackgroundPlate, sample_indices
from talkgs.prepare.config import PrepareConfig
from talkgs.prepare.flow import CameraMotion, MotionCheck, klt
from talkgs.prepare.landmarks import FaceMeshDetector, SubjectFollower, choose_crop, fill_gaps
from talkgs.prepare.masks import LabelMapper, PersonSegmenter
from talkgs.prepare.occlusion import COVERABLE, FaceTexture, OcclusionFinder, Occlusions, paint, runs
from talkgs.prepare.signals import compute_signals
from talkgs.prepare.sync import energy_envelope, estimate_offset, shift_audio
from talkgs.prepare.tracking import track_head
from talkgs.utils import log, media
from talkgs.utils.config import to_dict
from talkgs.utils.fs import StagingDir, check_destination


class _Timer:
    def __init__(self):
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._t, 3)
        self._t = now


def _old_files(out: Path) -> list[str]:
    """Files an earlier prepare wrote into ``out`` (so a --force run can drop the ones it no longer makes)."""
    try:
        return list(json.loads((out / schema.MANIFEST).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return []


@dataclass
class _Detections:
    """Pass 1 results, in source pixels."""

    points: np.ndarray  # [F, 478, 3] the subject's landmarks (zeros where not found)
    found: np.ndarray  # [F] bool
    flow: np.ndarray  # [F, P, 2] KLT motion of the rigid landmarks from frame i-1 to i
    flow_valid: np.ndarray  # [F, P] bool
    max_faces: int
    occlusions: Occlusions | None  # what covers the face, per frame (None: not looked for)


def _detect(video: Path, info: media.VideoInfo, cfg: PrepareConfig) -> _Detections:
    """Pass 1: the subject's landmarks, and the optical flow of its rigid points between frames."""
    w, h = info.width, info.height
    ds = min(1.0, cfg.video.detect_max_side / max(w, h))
    dw, dh = (w, h) if ds == 1.0 else (int(round(w * ds / 2)) * 2, int(round(h * ds / 2)) * 2)
    filters = "" if ds == 1.0 else f"scale={dw}:{dh}:flags=area"
    scale = w / dw  # source pixels per detection pixel
    detector = FaceMeshDetector(cfg.face)
    follower = SubjectFollower(cfg.face, (w, h))
    subject: list[np.ndarray | None] = []
    flow: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    grays: dict[int, np.ndarray] = {}  # frames whose flow into the next frame is still to be measured
    colours: dict[int, np.ndarray] = {}  # frames read but not yet decided (their face texture is still to take)
    rigid = list(RIGID)
    occlusion = OcclusionFinder(cfg.occlusion) if cfg.occlusion.enabled else None

    def decided(faces: list[np.ndarray | None]) -> None:
        # The follower decides frames in order, possibly a few frames late (subject selection).
        for lm in faces:
            j = len(subject)
            subject.append(lm)
            if occlusion is not None:
                occlusion.add_texture(colours.pop(j), lm, scale)
            prev = subject[j - 1] if j else None
            if prev is None:
                flow.append(np.zeros((len(rigid), 2)))
                valid.append(np.zeros(len(rigid), bool))
            else:
                d, v = klt(grays[j - 1], grays[j], prev[rigid, :2] / scale, cfg.tracking.flow_fb_max_px)
                flow.append(d * scale)
                valid.append(v)
            grays.pop(j - 1, None)

    expected = int(round(info.duration * cfg.video.fps)) or None
    try:
        frames = media.read_frames(video, (dw, dh), fps=cfg.video.fps, filters=filters)
        for k, frame in enumerate(log.progress(frames, total=expected, desc="landmarks", unit="frame")):
            grays[k] = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            if occlusion is not None:
                colours[k] = frame
                occlusion.add_hands(frame, scale)
            decided(follower.push(detector(frame, scale=scale)))
        decided(follower.flush())
    finally:
        detector.close()
    occlusions = occlusion.finish() if occlusion is not None else None
    found = np.array([s is not None for s in subject], bool)
    pts = np.zeros((len(subject), 478, 3), np.float32)
    for i, s in enumerate(subject):
        if s is not None:
            pts[i] = s
    return _Detections(pts, found, np.array(flow).reshape(-1, len(rigid), 2),
                       np.array(valid).reshape(-1, len(rigid)), follower.max_faces_seen, occlusions)


def prepare(video: str | Path, out: str | Path, cfg: PrepareConfig | None = None, force: bool = False) -> dict:
    """Prepare ``video`` into the subject folder ``out``; returns the report (also written there)."""
    cfg = cfg or PrepareConfig()
    video, out = Path(video), Path(out)
    start = time.perf_counter()
    timer = _Timer()
    fps, sr = cfg.video.fps, cfg.video.sample_rate

    info = media.probe_video(video)
    check_destination(out, force, "subject folder")
    if out.resolve() == video.resolve().parent and not force:
        raise TalkgsError(f"{out} is the folder of the video itself; choose another output folder")
    encoders = list(dict.fromkeys(cfg.audio.encoders))
    for enc in encoders:  # fail on a missing checkpoint now, not after minutes of work
        audio_features.feature_dim(enc, cfg.audio)
    if cfg.audio.av_offset != "auto":
        try:
            int(cfg.audio.av_offset)
        except ValueError:
            raise TalkgsError(
                f"--av-offset must be 'auto' or a whole number of frames, got {cfg.audio.av_offset!r}"
            ) from None
    if 0 < info.duration < cfg.video.min_duration_s:
        raise TalkgsError(f"{video} is {info.duration:.1f} s long; talkgs needs at least "
                          f"{cfg.video.min_duration_s:g} s of video")
    log.info(f"{video.name}: {info.width}x{info.height}, {info.fps:g} fps, {info.duration:.1f} s"
             + ("" if info.has_audio else ", no audio"))

    # -- pass 1: landmarks, the subject, the crop --------------------------------------------------
    det = _detect(video, info, cfg)
    pts_src, found, max_faces = det.points, det.found, det.max_faces
    num = len(found)
    if num / fps < cfg.video.min_duration_s:
        raise TalkgsError(f"{video} has {num} frames ({num / fps:.1f} s at {fps:g} fps); talkgs needs at least "
                          f"{cfg.video.min_duration_s:g} s of video")
    if not found.any():
        raise TalkgsError(f"no face found in {video}")
    pts_src = fill_gaps(pts_src, found, fps, cfg.face)
    usable = found
    if det.occlusions is not None:
        # A mostly covered face's landmarks follow the occluder: take them (and the pose) from the frames around.
        usable = found & ~(det.occlusions.face_fraction > cfg.occlusion.max_face_fraction)
        if (found & ~usable).any():
            pts_src = fill_gaps(pts_src, usable, fps, dataclasses.replace(cfg.face, max_missing_fraction=1.0))
    crop = choose_crop(pts_src, (info.width, info.height), cfg.video.size, cfg.video.allow_upscale, cfg.face)
    size = crop.out_size
    pts = crop.to_output(pts_src).astype(np.float32)  # [F, 478, 3] output pixels
    timer.lap("landmarks")

    # -- tracking and signals ----------------------------------------------------------------------
    principal = tuple(crop.to_output(np.array([[info.width / 2, info.height / 2]]))[0])
    # Interpolated frames have no flow of their own, and flow into or out of them is meaningless.
    flow_valid = det.flow_valid & usable[:, None] & np.concatenate([[False], usable[:-1]])[:, None]
    track = track_head(pts[..., :2], pts, principal, info.width * crop.scale, cfg.tracking,
                       flow=det.flow * crop.scale, flow_valid=flow_valid)
    sig = compute_signals(track.landmarks3d, pts, cfg.signals)
    timer.lap("tracking")

    # -- audio -------------------------------------------------------------------------------------
    samples = media.read_audio(video, sr) if info.has_audio else None
    offset = None
    applied = 0
    if samples is None:
        log.warn("the video has no audio track: prepare goes on, but talkgs fit will need audio")
        encoders = []
    else:
        n = int(round(num / fps * sr))
        samples = np.pad(samples[:n], (0, max(0, n - len(samples))))
        if np.sqrt(np.mean(samples.astype(np.float64) ** 2)) < 1e-4:
            log.warn("the audio track is silent: the audio-driven model will have nothing to learn from")
        offset = estimate_offset(sig["mouth_open"], energy_envelope(samples, sr, num, fps), fps,
                                 cfg.audio.max_offset_frames, cfg.audio.min_offset_corr, cfg.audio.min_offset_margin)
        late = "late" if offset.frames > 0 else "early" if offset.frames < 0 else "in sync"
        if cfg.audio.av_offset != "auto":
            applied = int(cfg.audio.av_offset)
        elif offset.confident:
            applied = offset.frames
        else:
            log.warn(f"the audio-video offset is unclear (best guess {offset.frames:+d} frames, correlation "
                     f"{offset.corr:.2f}); leaving the audio as it is (force one with --av-offset N)")
        samples = shift_audio(samples, applied, sr, fps)
        log.info(f"audio-video offset: {offset.frames:+d} frames measured (audio {late}), {applied:+d} applied")
    feats = {}
    for enc in encoders:
        feats[enc] = audio_features.encode_audio(enc, samples, num, fps, cfg.audio, sample_rate=sr)
    timer.lap("audio")

    n_test = max(1, int(round(num * cfg.test_fraction)))
    test = (num - n_test, num)

    with StagingDir(out, stale=_old_files(out)) as tmp:
        # -- pass 2: cropped frames, labels, background, preview -------------------------------------
        plate = BackgroundPlate(size, cfg.background)
        plate_at = set(sample_indices(num, cfg.background.samples).tolist())
        segmenter = PersonSegmenter()
        mapper = LabelMapper(size, cfg.masks)
        preview = None
        if cfg.preview:
            from talkgs.prepare.preview import PreviewWriter

            (tmp / schema.PREVIEW_DIR).mkdir()
            preview = PreviewWriter(tmp / schema.PREVIEW_VIDEO, size, fps, num, track.K, track.R, track.t, sig,
                                    None if det.occlusions is None else det.occlusions.face_fraction)
        # Optical-flow check of the tracked motion at points the tracker never used.
        check = MotionCheck(cfg.tracking.flow_fb_max_px)
        check_idx = list(MOTION_CHECK)
        cam = np.einsum("fij,pj->fpi", track.R, track.template[check_idx]) + track.t[:, None]  # [F, P, 3]
        check_uv = np.einsum("ij,fpj->fpi", track.K, cam)
        check_uv = check_uv[..., :2] / check_uv[..., 2:]  # [F, P, 2]
        check_at = usable & np.concatenate([[False], usable[:-1]])
        check_at[track.cuts] = False
        camera = CameraMotion(cfg.tracking.flow_fb_max_px, cfg.background.person_margin_px)
        occlusions = det.occlusions
        triangle_ids = FaceTexture.triangle_ids() if occlusions is not None else None
        covered = np.zeros(num, np.float32)  # [F] share of the head's pixels covered
        mouth_covered = np.zeros(num, bool)  # [F] the lips mostly covered
        prev_gray = prev_background = None
        written = 0
        try:
            with media.VideoWriter(tmp / schema.FRAMES, (size, size), fps, "rgb", cfg.video.crf,
                                   cfg.video.x264_preset) as frames_out, \
                    media.VideoWriter(tmp / schema.LABELS_VIDEO, (size, size), fps, "labels") as labels_out:
                stream = media.read_frames(video, (size, size), fps=fps, filters=crop.ffmpeg_filter())
                for i, frame in enumerate(log.progress(stream, total=num, desc="frames", unit="frame")):
                    if i >= num:
                        break
                    labels = mapper(segmenter(frame), pts[i])
                    if occlusions is not None and occlusions.any(i):
                        painted = paint(labels, pts[i], occlusions.triangles[i],
                                        [crop.to_output(h) for h in occlusions.hands[i]], triangle_ids, cfg.occlusion)
                        head = np.isin(labels, COVERABLE)
                        lips = (labels == schema.Label.LIPS) | (labels == schema.Label.MOUTH)
                        hidden = painted == schema.Label.OCCLUDED
                        covered[i] = hidden.sum() / max(int(head.sum()), 1)
                        share = (hidden & lips).sum() / max(int(lips.sum()), 1)
                        mouth_covered[i] = share > cfg.occlusion.mouth_fraction
                        labels = painted
                    frames_out.write(frame)
                    labels_out.write(labels)
                    if i in plate_at:
                        plate.add(frame, labels)
                    if preview is not None:
                        preview.add(i, frame, labels, pts[i])
                    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
                    if check_at[i]:
                        check.add(prev_gray, gray, check_uv[i - 1], check_uv[i], pts[i - 1, check_idx, :2],
                                  pts[i, check_idx, :2])
                        camera.add(i, prev_gray, gray, prev_background)
                    prev_gray, prev_background = gray, labels == schema.Label.BACKGROUND
                    written += 1
        finally:
            segmenter.close()
        if written != num:
            raise TalkgsError(f"the video gave {written} frames on the second read, {num} on the first; "
                              "it may be damaged")
        background, inpainted = plate.finish()
        if covered.any():
            log.info(f"something covers the face in {int((covered > 0).sum())} frames ({int(mouth_covered.sum())} "
                     "with the lips): those pixels are left out of the fit (prepare_report.json: occlusion)")
        camera_report = camera.result(cfg.tracking.camera_moving_px * size / 256)
        if camera_report["moving"]:
            log.warn(f"the camera moves: the background shifts by {camera_report['p95_px']:.1f} px between frames "
                     f"(95th percentile; {camera_report['extent_px']:.0f} px in all). The fit follows the head and "
                     "replays the torso and background from the frames; the background plate, one picture for the "
                     "whole video, is smeared where a render shows it")
        timer.lap("frames")

        # -- arrays, manifest, report ---------------------------------------------------------------
        cv2.imwrite(str(tmp / schema.BACKGROUND), cv2.cvtColor(background, cv2.COLOR_RGB2BGR))
        w2c = np.tile(np.eye(4), (num, 1, 1))
        w2c[:, :3, :3] = track.R
        w2c[:, :3, 3] = track.t
        c2w = np.linalg.inv(w2c)
        np.savez(tmp / schema.CAMERAS, K=track.K, w2c=w2c, c2w=c2w, template=track.template,
                 rigid=np.array(RIGID), cuts=np.array(track.cuts, np.int64))
        np.savez_compressed(tmp / schema.LANDMARKS, points=pts, found=usable,
                            canonical=track.landmarks3d.astype(np.float32))
        np.savez(tmp / schema.SIGNALS, **sig, occluded=covered, mouth_occluded=mouth_covered)
        files = [schema.FRAMES, schema.LABELS_VIDEO, schema.LANDMARKS, schema.CAMERAS, schema.TRANSFORMS,
                 schema.SIGNALS, schema.BACKGROUND, schema.REPORT]
        if samples is not None:
            media.write_wav(tmp / schema.AUDIO, samples, sr)
            files.append(schema.AUDIO)
        for enc, f in feats.items():
            np.save(tmp / schema.audio_features(enc), f)
            files.append(schema.audio_features(enc))
        _write_transforms(tmp / schema.TRANSFORMS, track.K, c2w, size, fps, test)
        if preview is not None:
            title = (f"{video.name}  {num} frames @ {fps:g} fps  {size}px  f={track.K[0, 0]:.0f}px  "
                     f"rmse={track.rmse_px:.2f}px  av={applied:+d}"
                     + ("  camera moves" if camera_report["moving"] else "")
                     + (f"  covered: {int((covered > 0).sum())} frames" if covered.any() else ""))
            preview.finish(tmp / schema.PREVIEW_SHEET, track.cuts, test, title, camera.per_frame(num))
            files += [schema.PREVIEW_VIDEO, schema.PREVIEW_SHEET]
        timer.lap("write")

        report = {
            "frames": num,
            "fps": fps,
            "size": size,
            "duration_s": round(num / fps, 3),
            "seconds": None,
            "reprojection_rmse_px": round(track.rmse_px, 4),
            "reprojection_rmse_unsmoothed_px": round(track.rmse_raw_px, 4),
            "focal_px": round(float(track.K[0, 0]), 3),
            "frames_without_face": int((~found).sum()),
            "frames_mostly_covered": int((found & ~usable).sum()),
            "faces_max": int(max_faces),
            "av_offset_frames": None if offset is None else offset.frames,
            "av_offset_fine_frames": None if offset is None else round(offset.frames_fine, 3),
            "av_offset_corr": None if offset is None else round(offset.corr, 4),
            "av_offset_confident": None if offset is None else offset.confident,
            "av_offset_applied_frames": applied,
            "audio_encoders": encoders,
            "has_audio": samples is not None,
            "crop": [crop.x, crop.y, crop.side, crop.side],
            "test_frames": list(test),
            "cuts": list(track.cuts),
            "motion_error_px": check.result(),
            "camera_motion": camera_report,
            "occlusion": occlusion_report(occlusions, covered, mouth_covered, fps),
            "background_inpainted_fraction": round(inpainted, 4),
            "source": {"path": str(video), "width": info.width, "height": info.height, "fps": info.fps,
                       "duration_s": info.duration, "codec": info.codec},
            "stage_seconds": timer.stages,
            "peak_rss_mb": None,
        }
        manifest = {
            "format_version": schema.FORMAT_VERSION,
            "talkgs_version": talkgs.__version__,
            "num_frames": num,
            "fps": fps,
            "size": size,
            "crop": report["crop"],
            "camera": {"convention": "opencv", "world": "canonical head space, metres",
                       "K": track.K.tolist()},
            "split": {"train": [0, test[0]], "test": list(test)},
            "audio": {"file": schema.AUDIO if samples is not None else None, "sample_rate": sr,
                      "av_offset_applied_frames": applied,
                      "encoders": {e: {"file": schema.audio_features(e), "dim": int(f.shape[-1])}
                                   for e, f in feats.items()},
                      "steps_per_frame": 2},
            "labels": schema.LABELS,
            "expression_channels": list(schema.EXPRESSION_CHANNELS),
            "files": files,
            "config": to_dict(cfg),
        }
        (tmp / schema.MANIFEST).write_text(json.dumps(manifest, indent=1))
        report["seconds"] = round(time.perf_counter() - start, 3)
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        (tmp / schema.REPORT).write_text(json.dumps(report, indent=1))
    log.info(f"wrote {out} ({num} frames, {size}px, rmse {track.rmse_px:.2f} px) in {report['seconds']:.1f} s")
    return report


def _write_transforms(path: Path, K: np.ndarray, c2w: np.ndarray, size: int, fps: float,
                      test: tuple[int, int]) -> None:
    """NeRF-style transforms.json: OpenGL camera-to-world (x right, y up, z back) per frame."""
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = [
        {"frame_index": i, "time": round(i / fps, 6), "split": "test" if test[0] <= i < test[1] else "train",
         "transform_matrix": (c2w[i] @ flip).round(8).tolist()}
        for i in range(len(c2w))
    ]
    data = {
        "camera_model": "PINHOLE",
        "convention": "camera-to-world, OpenGL camera axes; world = canonical head space (metres)",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": size, "h": size, "fps": fps, "frames_file": schema.FRAMES, "frames": frames,
    }
    path.write_text(json.dumps(data))


def occlusion_report(occlusions: Occlusions | None, covered: np.ndarray, mouth: np.ndarray, fps: float) -> dict:
    """``prepare_report.json: occlusion``: which frames something covers the face in, and how much of it."""
    if occlusions is None:
        return {"checked": False}
    hit = covered > 0
    spans = [[a, b] for a, b in runs(hit)]
    return {"checked": True, "frames": int(hit.sum()), "mouth_frames": int(mouth.sum()),
            "hand_frames": int(sum(bool(h) for h in occlusions.hands)),
            "max_head_fraction": round(float(covered.max(initial=0.0)), 4),
            "spans": spans, "spans_s": [[round(a / fps, 2), round(b / fps, 2)] for a, b in spans]}


def track_face(video: str | Path, fps: float, cfg: PrepareConfig | None = None) -> np.ndarray:
    """[T, 478, 3] canonical landmarks (head pose removed, metres) of the main face in ``video``, at
    ``fps``: the mouth of a driving video (``talkgs render --drive``), tracked as ``prepare`` tracks a
    subject, without cropping or writing anything. Frames without a face are interpolated."""
    cfg = cfg or PrepareConfig()
    # Only the mouth's movement is wanted here: no label maps, so no occlusions to look for.
    cfg = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, fps=fps),
                              occlusion=dataclasses.replace(cfg.occlusion, enabled=False))
    video = Path(video)
    if not video.is_file():
        raise TalkgsError(f"video {video} does not exist")
    info = media.probe_video(video)
    det = _detect(video, info, cfg)
    if not det.found.any():
        raise TalkgsError(f"no face found in {video}")
    pts = fill_gaps(det.points, det.found, fps, cfg.face).astype(np.float32)
    flow_valid = det.flow_valid & det.found[:, None] & np.concatenate([[False], det.found[:-1]])[:, None]
    track = track_head(pts[..., :2], pts, (info.width / 2, info.height / 2), float(info.width), cfg.tracking,
                       flow=det.flow, flow_valid=flow_valid)
    return track.landmarks3d.astype(np.float32)
