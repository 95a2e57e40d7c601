"""Occlusions and the camera's motion in prepare; the fit's self-check (issue 28).

The occluder is a hand-shaped, skin-toned shape pasted over the demo clip's lower face (``tools/hard_cases.py``,
the benchmark's hard case), the handheld camera the clip zoomed and shifted per frame. Before issue 28 prepare
labelled the hand's pixels face, so the fit learned them; now they are ``Label.OCCLUDED`` and leave the loss.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from conftest import DEMO, ROOT, ffmpeg, tiny_config

from talkgs.data import schema
from talkgs.data.schema import Label
from talkgs.utils import media

sys.path.insert(0, str(ROOT / "tools"))
import hard_cases  # noqa: E402

#: Seconds of the demo clip that the test clips keep (the hand rises over the face between 1 and 3 s).
SECONDS = 6.0
HAND = (1.0, 3.0)


@pytest.fixture(scope="module")
def hard_clips(tmp_path_factory) -> dict:
    """The first seconds of the demo clip: with the hand in ``HAND``, and as from a handheld phone; the pasted
    masks by source frame."""
    out = tmp_path_factory.mktemp("hard")
    info = media.probe_video(DEMO)
    frames = list(media.read_frames(DEMO, (info.width, info.height), fps=info.fps))[: int(SECONDS * info.fps)]
    a, b = (int(t * info.fps) for t in HAND)
    masks = np.zeros((len(frames), info.height, info.width), bool)
    path = hard_cases.handheld_path(len(frames), info.fps)
    clips, pasted = {}, {"occluder": masks, "sleeve": masks.copy()}
    for name in ("occluder", "sleeve", "handheld"):
        with media.VideoWriter(out / f"{name}_v.mp4", (info.width, info.height), info.fps, crf=14,
                               preset="veryfast", pix_fmt="yuv420p") as w:
            for i, frame in enumerate(frames):
                if name in pasted and a <= i < b:
                    paste = hard_cases.paste_hand if name == "occluder" else hard_cases.paste_sleeve
                    frame, pasted[name][i] = paste(frame, (i - a + 0.5) / (b - a))
                elif name == "handheld":
                    frame = hard_cases.shake(frame, path[i])
                w.write(frame)
        ffmpeg("-i", str(out / f"{name}_v.mp4"), "-i", str(DEMO), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
               "-c:a", "aac", "-shortest", str(out / f"{name}.mp4"))
        clips[name] = out / f"{name}.mp4"
    return {"clips": clips, "masks": pasted, "fps": info.fps, "out": out}


def _prepare(video, out, **overrides):
    from talkgs.prepare.pipeline import prepare

    cfg = tiny_config(preview=True, video={"size": 256}, **overrides)
    return prepare(video, out, cfg)


@pytest.fixture(scope="module")
def occluder_subject(hard_clips):
    out = hard_clips["out"] / "occluder_subject"
    return out, _prepare(hard_clips["clips"]["occluder"], out)


@pytest.mark.parametrize("kind", ["occluder", "sleeve"])
def test_what_covers_the_face_is_found(hard_clips, occluder_subject, kind):
    """A skin-toned hand over the mouth and cheek, a red-orange sleeve over the forehead and eyes."""
    if kind == "occluder":
        out, report = occluder_subject
    else:
        out = hard_clips["out"] / "sleeve_subject"
        report = _prepare(hard_clips["clips"]["sleeve"], out)
    occ = report["occlusion"]
    assert occ["checked"] and occ["frames"] > 0
    # One covered stretch, inside the pasted one (where the occluder reaches the head: below); nothing else.
    fps = report["fps"]
    assert len(occ["spans"]) == 1, occ["spans"]
    start, end = occ["spans_s"][0]
    assert HAND[0] - 2 / fps <= start < end <= HAND[1] + 2 / fps, occ["spans_s"]
    if kind == "occluder":
        assert occ["mouth_frames"] > 0
    labels = list(media.read_labels(out / schema.LABELS_VIDEO, (256, 256)))
    masks, src_fps = hard_clips["masks"][kind], hard_clips["fps"]
    usable = np.load(out / schema.LANDMARKS)["found"]
    assert report["frames_mostly_covered"] == int((~usable).sum())
    recall, spill = [], []
    for i, lab in enumerate(labels):
        j = min(int(round((i + 0.5) / fps * src_fps - 0.5)), len(masks) - 1)
        # The face: over hair and ears the appearance check does not look (only a hand MediaPipe finds is painted).
        head = np.isin(lab, [Label.FACE, Label.LIPS, Label.EYES, Label.MOUTH, Label.OCCLUDED])
        hand = masks[j] & head
        found = lab == Label.OCCLUDED
        if hand.sum() > 200:  # the occluder over the head, not just its edge
            # Over a tenth of the head it is always found; the first few pixels of an edge may be missed.
            assert found.any() or hand.sum() < 0.1 * head.sum(), f"frame {i}: {hand.sum()} face pixels covered"
            recall.append((found & hand).sum() / hand.sum())
            if usable[i]:  # a mostly covered face is covered whole, by design
                spill.append((found & ~masks[j]).sum() / max(found.sum(), 1))
        elif not masks[j].any():
            assert not found.any(), f"frame {i}: nothing covers the face, yet {found.sum()} pixels are occluded"
    assert np.median(recall) > 0.6 and np.median(spill) < 0.5, (np.median(recall), np.median(spill))
    sig = np.load(out / schema.SIGNALS)
    assert sig["occluded"].shape == (report["frames"],) and (sig["occluded"] > 0).sum() == occ["frames"]
    assert report["camera_motion"]["moving"] is False


def test_covered_pixels_leave_the_loss(occluder_subject):
    """A training render is judged on what the frame shows of the head: painting the occluded pixels any colour
    changes neither the colour (L1) nor the alpha loss. (SSIM's windows see covered pixels as equal in the render
    and the truth, so it asks nothing of them either; their colour only shifts the windows' statistics.)"""
    from talkgs.data.subject import Subject
    from talkgs.train.config import FitConfig
    from talkgs.train.context import FitContext
    from talkgs.train.stages import STAGES
    from talkgs.train.trainer import Trainer
    from talkgs.utils.config import load_section

    root = occluder_subject[0]
    cfg = load_section(FitConfig, "tiny", "fit")
    ctx = FitContext(Subject(root), cfg)
    covered = np.load(root / schema.SIGNALS)["occluded"]
    frame = int(np.argmax(covered))
    assert covered[frame] > 0.05
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.subject = cfg, ctx.subject
    head = trainer._initial_head(ctx, ctx.features.shape[-1]).to(ctx.device)
    stage = STAGES["static"](ctx, cfg.stages[0], head)
    batch = ctx.batch(frame)
    hidden = batch.labels == Label.OCCLUDED
    assert hidden.any()
    out = stage.render(batch)
    _, logs = stage.loss(batch, out)
    magenta = torch.tensor([1.0, 0.0, 1.0])
    painted = dataclasses.replace(batch, image=torch.where(hidden[..., None], magenta, batch.image))
    painted_logs = stage.loss(painted, out)[1]
    assert painted_logs["l1"] == pytest.approx(logs["l1"], abs=1e-7)
    assert painted_logs["alpha"] == pytest.approx(logs["alpha"], abs=1e-7)
    # The frames that are mostly covered do not train at all; those with covered lips train no mouth.
    assert len(ctx.train_indices) < len(ctx.subject.train_indices) or covered.max() <= cfg.max_occluded
    mouth = np.load(root / schema.SIGNALS)["mouth_occluded"]
    assert not bool(ctx.landmarks_found[torch.as_tensor(np.flatnonzero(mouth))].any())


def test_a_handheld_camera_is_reported_and_its_background_replayed(hard_clips, demo_subject):
    """The camera's own motion is measured on the background; a moving camera's frames keep their background in
    the layer under the head (training's and the fitted model's), where a still camera's show the one plate."""
    from talkgs.data.subject import Subject, torso_layer
    from talkgs.train.config import FitConfig
    from talkgs.train.context import replays_background

    root = hard_clips["out"] / "handheld_subject"
    report = _prepare(hard_clips["clips"]["handheld"], root, occlusion={"hands": False})
    cam = report["camera_motion"]
    assert cam["moving"] is True and cam["p95_px"] > 1.0, cam
    assert report["occlusion"]["frames"] == 0
    subject = Subject(root)
    assert replays_background(FitConfig(), subject) and not replays_background(FitConfig(), Subject(demo_subject[0]))
    assert not replays_background(FitConfig(replay_background="never"), subject)
    frame = next(iter(media.read_frames(root / schema.FRAMES, (256, 256))))
    labels = next(iter(media.read_labels(root / schema.LABELS_VIDEO, (256, 256))))
    back = labels == Label.BACKGROUND
    assert back.any()
    assert (torso_layer(frame, labels)[back, 3] == 0).all()
    layer = torso_layer(frame, labels, background=True)
    assert (layer[back, 3] == 255).all() and (layer[back, :3] == frame[back]).all()
    assert (layer[labels == Label.FACE, 3] == 0).all()


def test_a_still_camera_is_not_moving(demo_subject):
    cam = demo_subject[1]["camera_motion"]
    assert cam["measured_frames"] > 0 and cam["moving"] is False and cam["p95_px"] < 0.3, cam
    assert demo_subject[1]["occlusion"]["frames"] == 0


def test_the_fit_reports_its_self_check(fitted):
    root, report = fitted
    check = report["self_check"]
    assert check["stages"] == [s for s in report["stages"] if "self_check" in report["stages"][s]]
    assert set(check["stages"]) == {"mouth", "face", "fuse"}
    for name in check["stages"]:
        stage = report["stages"][name]["self_check"]
        assert stage["baseline"] == "static" and stage["frames"] == report["stages"][name]["test_frames"]
        assert stage["passed"] == (stage["over_after"] == 0)
    assert json.loads((root / schema.FIT_REPORT).read_text())["self_check"] == check


def test_an_injected_blotch_is_found_and_mended(fitted):
    """A motion stage that gave some cheek Gaussians a magenta colour: the check finds the blotch on the held-out
    frames against the static head, gives those Gaussians back their static colours, and passes."""
    from talkgs.data.subject import Subject
    from talkgs.model.fitted import load_model
    from talkgs.model.gaussians import rgb_to_sh
    from talkgs.train.config import FitConfig
    from talkgs.train.context import FitContext
    from talkgs.train.selfcheck import appearance, check_and_mend
    from talkgs.train.stages import STAGES
    from talkgs.utils.config import from_dict, load_yaml

    root = fitted[0]
    cfg = from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG))
    ctx = FitContext(Subject(root), cfg)
    head = load_model(root).head.to(ctx.device)
    stage = STAGES["fuse"](ctx, cfg.stages[-1], head)
    static = appearance(head.face)
    clean = check_and_mend(stage, ctx, static, cfg.self_check)
    assert clean["over_before"] == clean["restored"] == clean["hidden"] == 0, clean

    # The Gaussians nearest the right cheek (landmark 50) in canonical space.
    means = head.face.params["means"].detach()
    cheek = torch.as_tensor(ctx.subject.template[50], dtype=means.dtype)
    near = (means - cheek).norm(dim=-1).argsort()[:12]
    with torch.no_grad():
        head.face.params["sh0"].data[near] = rgb_to_sh(torch.tensor([1.0, 0.0, 1.0])).expand(len(near), 1, 3)
        head.face.params["opacities"].data[near] = 4.0
    report = check_and_mend(stage, ctx, static, cfg.self_check)
    assert report["over_before"] > 0 and report["worst_before"] > cfg.self_check.threshold, report
    assert report["restored"] > 0 and report["passed"] and report["over_after"] == 0, report
    back = (head.face.params["sh0"][near] == static["sh0"][near]).flatten(1).all(1)
    assert int(back.sum()) >= len(near) // 2, back  # the ones that show (a few lie hidden behind others)
