"""talkgs prepare on real footage: the demo clip and a wide, non-square shot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from talkgs.data import Label, Subject, schema
from talkgs.data import topology as topo
from talkgs.data.subject import torso_layer
from talkgs.prepare.sync import energy_envelope, estimate_offset
from talkgs.utils import media

REPORT_KEYS = {"frames", "fps", "size", "duration_s", "seconds", "reprojection_rmse_px", "frames_without_face",
               "av_offset_frames", "audio_encoders", "crop", "test_frames"}


def test_demo_folder_is_complete_and_consistent(demo_subject):
    root, report = demo_subject
    assert REPORT_KEYS <= set(report)
    assert json.loads((root / schema.REPORT).read_text()) == report
    s = Subject(root)
    # The video stream lasts 20.0 s (600 frames at 30 fps): 499 or 500 frames at 25 fps.
    assert s.num_frames == report["frames"] in (499, 500)
    assert s.fps == 25.0 and s.size == report["size"] == 128
    assert report["frames_without_face"] == 0
    assert report["crop"] == [0, 0, 256, 256]  # the source is already a tight square crop
    # The standard protocol: the last 1/11 of the frames is held out.
    a, b = s.test_range
    assert b == s.num_frames and abs((b - a) - s.num_frames / 11) <= 1
    assert report["test_frames"] == [a, b]
    # Frame i of frames.mp4 and labels.mkv <-> row i of every array.
    assert sum(1 for _ in s.frames()) == s.num_frames
    assert sum(1 for _ in s.labels()) == s.num_frames
    assert media.probe_video(root / schema.FRAMES).fps == 25.0
    assert s.landmarks.shape == (s.num_frames, 478, 3)
    assert s.w2c.shape == (s.num_frames, 4, 4)
    for key in ("blink_left", "blink_right", "mouth_open", "lip_spread", "brow_raise"):
        assert s.signals[key].shape == (s.num_frames,)
    assert s.signals["expression"].shape == (s.num_frames, 5)
    samples, sr = s.audio()
    assert sr == 16000 and len(samples) == round(s.num_frames / 25 * 16000)
    assert sorted(s.audio_encoders) == ["cepstra", "mel", "phonemes", "visemes", "whisper"]
    for enc in s.audio_encoders:
        feats = s.audio_features(enc)
        assert feats.shape[:2] == (s.num_frames, 2) and np.isfinite(feats).all()
    assert s.background.shape == (128, 128, 3)


def test_frames_seek_exactly(demo_subject):
    s = Subject(demo_subject[0])
    all_frames = [f for _, f in zip(range(40), s.frames())]
    for start in (1, 17, 33):
        assert np.array_equal(next(iter(s.frames(start))), all_frames[start])
    labels = [f for _, f in zip(range(40), s.labels())]
    assert np.array_equal(next(iter(s.labels(29))), labels[29])


def test_saved_cameras_reproject_the_landmarks(demo_subject):
    """Project the rigid template through K and w2c as saved: it must land on the landmarks."""
    root, report = demo_subject
    s = Subject(root)
    X = s.template[list(topo.RIGID)]  # [P, 3] head space
    cam = np.einsum("fij,pj->fpi", s.w2c[:, :3, :3], X) + s.w2c[:, None, :3, 3]  # [F, P, 3]
    assert (cam[..., 2] > 0).all()
    uv = np.einsum("ij,fpj->fpi", s.K, cam)
    uv = uv[..., :2] / uv[..., 2:]
    err = np.linalg.norm(uv - s.landmarks[:, list(topo.RIGID), :2], axis=-1)
    rmse = float(np.sqrt(np.mean(err**2)))
    assert rmse == pytest.approx(report["reprojection_rmse_px"], rel=0.05, abs=0.02)
    # Measured 0.35 px at 128 px, i.e. 0.70 px at the source's own 256 px. The 1.5 px bar
    # is for 512 px footage; at 256 px it is stricter.
    assert rmse * 256 / s.size < 1.2
    # transforms.json holds the same cameras, OpenGL-style.
    tj = json.loads((root / schema.TRANSFORMS).read_text())
    c2w_gl = np.array([f["transform_matrix"] for f in tj["frames"]])
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    assert np.allclose(c2w_gl @ flip, np.linalg.inv(s.w2c), atol=1e-6)
    assert tj["fl_x"] == pytest.approx(s.K[0, 0]) and tj["w"] == s.size
    assert [f["split"] for f in tj["frames"]].count("test") == s.test_range[1] - s.test_range[0]


def test_pose_is_smooth_and_plausible(demo_subject):
    root, report = demo_subject
    s = Subject(root)
    t = s.w2c[:, :3, 3]
    # The speaker sits about half a metre to a few metres from the camera, in front of it.
    assert 0.2 < np.median(t[:, 2]) < 5.0
    # Optical flow at skin points the tracker never used: the tracked head moves with the image far
    # more closely than MediaPipe's landmarks do (measured at 128 px: 0.11 px against 0.23 px).
    motion = report["motion_error_px"]
    assert motion["tracked_head"] < 0.7 * motion["raw_landmarks"]
    assert motion["tracked_head"] < 0.25 * s.size / 128
    # The frame-to-frame rotation stays small in a talking head.
    R = s.w2c[:, :3, :3]
    rel = np.einsum("fji,fjk->fik", R[:-1], R[1:])
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert np.percentile(angle, 99) < 2.0
    # Field of view within the range of real cameras.
    fov = np.degrees(2 * np.arctan(s.size / 2 / s.K[0, 0]))
    assert 3 < fov < 70


def test_masks_label_the_face_regions(demo_subject):
    s = Subject(demo_subject[0])
    lm = s.landmarks
    counts = np.zeros(len(Label))
    for i, labels in enumerate(s.labels()):
        if i % 50:
            continue
        p = lm[i, :, :2]

        def at(idx, labels=labels, p=p):
            return labels[int(p[idx, 1]), int(p[idx, 0])]

        assert at(topo.RIGHT_IRIS_CENTER) == Label.EYES and at(topo.LEFT_IRIS_CENTER) == Label.EYES
        assert at(1) == Label.FACE  # nose tip
        assert at(17) == Label.LIPS  # lower lip centre
        lips_centre = p[list(topo.LIPS_INNER)].mean(0)
        assert labels[int(lips_centre[1]), int(lips_centre[0])] in (Label.MOUTH, Label.LIPS)
        chin = p[topo.CHIN]
        below = labels[min(s.size - 1, int(chin[1] + 0.15 * s.size)), int(chin[0])]
        assert below in (Label.NECK, Label.TORSO)
        counts += np.bincount(labels.ravel(), minlength=len(Label))
    frac = counts / counts.sum()
    assert 0.15 < frac[Label.FACE] < 0.6
    for label in (Label.HAIR, Label.TORSO, Label.NECK, Label.LIPS, Label.EYES, Label.BACKGROUND):
        assert frac[label] > 0.002, label.name
    # The mouth interior shows while speaking.
    assert frac[Label.MOUTH] > 0.0005


def test_torso_layer_and_background(demo_subject):
    s = Subject(demo_subject[0])
    frame, labels = next(iter(s.frames(100))), next(iter(s.labels(100)))
    layer = torso_layer(frame, labels)
    alpha = layer[..., 3] > 0
    assert np.array_equal(alpha, np.isin(labels, schema.TORSO_LABELS))
    assert np.array_equal(layer[alpha, :3], frame[alpha])
    # Continued under the head: head pixels just above the neck take the neck's top colour, nothing else changes.
    extended = torso_layer(frame, labels, neck_extension=0.06)
    grown = (extended[..., 3] > 0) & ~alpha
    reach = round(0.06 * labels.shape[0])
    assert grown.sum() > reach * 10 and np.isin(labels[grown], schema.HEAD_LABELS).all()
    neck = labels == Label.NECK
    top = np.argmax(neck, axis=0)
    ys, xs = np.nonzero(grown)
    assert np.all((ys < top[xs]) & (ys >= top[xs] - reach))
    assert np.array_equal(extended[ys, xs, :3], frame[top[xs], xs])
    assert np.array_equal(extended[alpha], layer[alpha])
    # The plate matches the frame where the frame shows background.
    bg = labels == Label.BACKGROUND
    diff = np.abs(s.background.astype(int) - frame.astype(int))[bg].mean()
    assert diff < 12


def test_blinks_and_mouth_follow_the_video(demo_subject):
    root, report = demo_subject
    s = Subject(root)
    sig = s.signals
    for eye in ("blink_left", "blink_right"):
        v = sig[eye]
        assert 0 <= v.min() and v.max() <= 1
        assert np.median(v) > 0.6  # eyes are open most of the time
    # Both eyes close together in a blink: the demo speaker blinks several times in 20 s.
    both_closed = (sig["blink_left"] < 0.3) & (sig["blink_right"] < 0.3)
    events = np.count_nonzero(np.diff(both_closed.astype(int)) == 1)
    assert 2 <= events <= 20
    # Mouth opening follows the (offset-corrected) speech energy.
    samples, sr = s.audio()
    energy = energy_envelope(samples, sr, s.num_frames, s.fps)
    off = estimate_offset(sig["mouth_open"], energy, s.fps, 8)
    assert abs(off.frames) <= 1 and off.corr > 0.15
    # Lip boxes enclose the lip landmarks.
    box = sig["lips_bbox"]
    lips = s.landmarks[:, list(topo.LIPS_OUTER), :2]
    assert np.allclose(box[:, :2], lips.min(1), atol=1e-3) and np.allclose(box[:, 2:], lips.max(1), atol=1e-3)


def test_demo_audio_offset_is_detected(demo_subject):
    """The demo's audio lags its video (measured +3.7 frames at 25 fps); prepare corrects it."""
    report = demo_subject[1]
    assert 2 <= report["av_offset_frames"] <= 5
    assert report["av_offset_applied_frames"] == report["av_offset_frames"]


def test_offset_estimator_tracks_a_known_shift(demo_subject):
    """Delaying the corrected audio by k frames must move the estimate by k."""
    s = Subject(demo_subject[0])
    samples, sr = s.audio()
    mouth = s.signals["mouth_open"]
    spf = sr // 25
    for k in (-3, 2, 5):
        shifted = np.roll(samples, k * spf)
        off = estimate_offset(mouth, energy_envelope(shifted, sr, s.num_frames, 25.0), 25.0, 8)
        assert abs(off.frames - k) <= 1, (k, off)


def test_preview_files(demo_subject):
    import cv2

    root, report = demo_subject
    sheet = cv2.imread(str(root / schema.PREVIEW_SHEET))
    assert sheet is not None and sheet.shape[0] > 500 and sheet.shape[1] >= 1000
    info = media.probe_video(root / schema.PREVIEW_VIDEO)
    assert info.fps == 25.0 and abs(info.duration - report["duration_s"]) < 0.1


def test_wide_non_square_shot(wide_subject):
    root, report = wide_subject
    s = Subject(root)
    x, y, w, h = report["crop"]
    assert w == h and 0 <= x and x + w <= 960 and 0 <= y and y + h <= 540
    assert w < 540  # a head-and-shoulders crop, not the whole frame
    lm = s.landmarks[:, :, :2]
    nose_x = lm[:, 1, 0] / s.size
    assert 0.35 < np.median(nose_x) < 0.65  # centred
    assert np.min(lm[:, topo.FOREHEAD, 1]) / s.size > 0.12  # room for the hair
    assert np.max(lm[:, topo.CHIN, 1]) / s.size < 0.8  # room for the neck and shoulders
    # The principal point is the source frame's centre, mapped into the crop.
    scale = s.size / w
    assert s.K[0, 2] == pytest.approx((480 - x) * scale, abs=1e-3)
    assert s.K[1, 2] == pytest.approx((270 - y) * scale, abs=1e-3)
    assert report["reprojection_rmse_px"] * 512 / s.size < 1.5
    fractions = np.bincount(next(iter(s.labels(50))).ravel(), minlength=len(Label)) / s.size**2
    assert fractions[Label.TORSO] > 0.1 and fractions[Label.BACKGROUND] > 0.1


def test_background_plate_is_the_masked_median():
    from talkgs.prepare.background import BackgroundPlate
    from talkgs.prepare.config import BackgroundConfig

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 40, 40, 3)).astype(np.uint8)
    labels = (rng.random((7, 40, 40)) < 0.4).astype(np.uint8)
    labels[:, :5, :5] = Label.TORSO  # never background: inpainted
    plate = BackgroundPlate(40, BackgroundConfig(person_margin_px=0))
    for f, lab in zip(frames, labels):
        plate.add(f, lab)
    image, inpainted = plate.finish()
    valid = labels == Label.BACKGROUND
    assert inpainted == pytest.approx((~valid.any(0)).mean())
    for y, x in zip(*np.nonzero(valid.any(0))):
        expected = np.median(frames[valid[:, y, x], y, x], axis=0).round()
        assert np.array_equal(image[y, x], expected)


def test_offset_confidence():
    rng = np.random.default_rng(0)
    n = 500
    mouth = np.convolve(rng.normal(size=n + 20), np.ones(5) / 5, mode="same")[:n]
    late = np.roll(mouth, 3) + 0.3 * rng.normal(size=n)
    off = estimate_offset(mouth, late, 25.0, 8)
    assert off.frames == 3 and off.confident
    # A pure rhythm has a peak every period: no single answer.
    rhythm = np.sin(2 * np.pi * np.arange(n) / 6.0)
    assert not estimate_offset(rhythm, np.roll(rhythm, 1), 25.0, 8).confident
    # A peak at the edge of the search range may lie beyond it.
    assert not estimate_offset(mouth, np.roll(mouth, 10), 25.0, 8).confident
    # Unrelated signals.
    assert not estimate_offset(mouth, rng.normal(size=n), 25.0, 8).confident
