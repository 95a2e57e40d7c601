"""talkgs fit, static stage: the generic trainer on the demo subject (tiny preset, CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from talkgs.cli.main import main
from talkgs.data import Subject, schema
from talkgs.errors import TalkgsError
from talkgs.model import GaussianModel, load_ply
from talkgs.model.fitted import load_model
from talkgs.train import stages as stages_module
from talkgs.train.config import FitConfig
from talkgs.train.trainer import Trainer
from talkgs.utils import media
from talkgs.utils.config import from_dict, load_section, load_yaml, to_dict


def tiny_fit(**overrides) -> FitConfig:
    return dataclasses.replace(load_section(FitConfig, "tiny", "fit"), **overrides)


def fitted_face(root) -> GaussianModel:
    """The static head (the face branch's canonical Gaussians) of a fitted subject's model."""
    return load_model(root).head.face


def fitted_stage(root, name: str | None = None):
    """(context, stage ``name`` (default: the run's last) over the fitted model's head), built through
    their real constructors from the run's saved config."""
    from talkgs.train.context import FitContext
    from talkgs.train.stages import STAGES

    cfg = from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG))
    ctx = FitContext(Subject(root), dataclasses.replace(cfg, device="cpu"))
    stage_cfg = next((s for s in cfg.stages if s.name == name), cfg.stages[-1])
    return ctx, STAGES[stage_cfg.name](ctx, stage_cfg, load_model(root).head)


@pytest.fixture()
def subject(demo_subject, tmp_path):
    """A private copy of the prepared demo subject (fitting writes into the folder)."""
    root = tmp_path / "demo"
    shutil.copytree(demo_subject[0], root, ignore=shutil.ignore_patterns("preview", "fit"))
    return root


def test_static_fit_learns_the_head(fitted):
    root, report = fitted
    stage = report["stages"]["static"]
    assert stage["iterations"] == 60 and stage["test_frames"] == 45
    # The tiny preset (64 px, 60 iterations) reaches about 28 dB on the held-out head region; a
    # model that had not learned (its initial colours) gives about 21 dB.
    assert stage["psnr_head"] > 25.0
    assert stage["gaussians"] == report["gaussians"] > 1000  # densification grew it
    model = fitted_face(root)
    assert model.num_gaussians == report["gaussians"] and model.sh_degree == 1
    assert json.loads((root / schema.FIT_REPORT).read_text()) == report
    # The run's config is saved and rebuilds the same config.
    assert from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG)) == tiny_fit()
    assert (root / schema.VAL_DIR / "static_final.png").is_file()


def test_head_stays_inside_the_head_mask(fitted):
    """The alpha loss keeps Gaussians on the head: opaque on it, transparent on the background."""
    root, _ = fitted
    from talkgs.data import Label

    ctx, stage = fitted_stage(root, "static")
    batch = ctx.batch(int(ctx.test_indices[10]))
    with torch.no_grad():
        out = stage.render(batch)
    alpha = out.face[0].alpha[..., 0]
    labels = batch.labels
    assert alpha[labels == Label.FACE].mean() > 0.9
    assert alpha[labels == Label.BACKGROUND].mean() < 0.1


def test_fit_is_deterministic_and_resumes_exactly(subject, tmp_path, monkeypatch):
    other = tmp_path / "again"
    shutil.copytree(subject, other)
    cfg = tiny_fit()
    Trainer(subject, cfg).run()
    straight = fitted_face(subject)

    # Ctrl-C in the middle of step 31 (the 31st loss): the step completes, a checkpoint is saved.
    calls = {"n": 0}
    original = stages_module.Stage.loss

    def loss_with_ctrl_c(self, *args):
        calls["n"] += 1
        if calls["n"] == 31:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(stages_module.Stage, "loss", loss_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        Trainer(other, cfg).run()
    monkeypatch.setattr(stages_module.Stage, "loss", original)
    assert (other / schema.CHECKPOINT).is_file() and not (other / schema.MODEL).exists()
    saved = torch.load(other / schema.CHECKPOINT, weights_only=True)
    assert saved["step"] == 31
    Trainer(other, cfg, resume=True).run()
    resumed = fitted_face(other)
    for name in straight.params:
        assert torch.equal(straight.params[name], resumed.params[name]), name


def test_refusals(subject):
    with pytest.raises(TalkgsError, match="--resume"):
        Trainer(subject, tiny_fit(), resume=True)
    Trainer(subject, tiny_fit(stages=[dataclasses.replace(tiny_fit().stages[0], iterations=5)])).run()
    with pytest.raises(TalkgsError, match="--force"):
        Trainer(subject, tiny_fit())
    with pytest.raises(TalkgsError, match="nothing to resume|config differs"):
        Trainer(subject, tiny_fit(seed=1), resume=True)


def test_a_fit_never_trains_above_the_subjects_size(subject):
    """A preset's resolution is a ceiling: a 128-px subject fits at 128 px, and the saved config says so."""
    trainer = Trainer(subject, tiny_fit(resolution=512))
    assert trainer.cfg.resolution == Subject(subject).size == 128
    assert from_dict(FitConfig, load_yaml(subject / schema.FIT_CONFIG)).resolution == 128


def test_cli_fit_and_export(subject, tmp_path, capsys):
    assert main(["--quiet", "fit", str(subject), "--config", "tiny", "--stage", "static", "--iterations", "20"]) == 0
    report = json.loads((subject / schema.FIT_REPORT).read_text())
    assert report["stages"]["static"]["iterations"] == 20
    ply = tmp_path / "head.ply"
    assert main(["--quiet", "export", str(subject), "--ply", str(ply)]) == 0
    loaded = load_ply(ply)
    model = fitted_face(subject)
    assert loaded.num_gaussians == model.num_gaussians
    assert torch.equal(loaded.params["means"], model.params["means"])
    capsys.readouterr()
    code = main(["--quiet", "fit", str(subject), "--config", "tiny", "--stage", "lips"])
    assert code == 2 and "unknown stage" in capsys.readouterr().err
    code = main(["--quiet", "fit", str(subject), "--config", "tiny"])
    assert code == 2 and "--force" in capsys.readouterr().err


def test_presets_have_fit_sections():
    for preset in ("cpu", "quality", "tiny"):
        cfg = load_section(FitConfig, preset, "fit")
        assert [s.name for s in cfg.stages] == ["static", "mouth", "face", "fuse"]
        assert from_dict(FitConfig, to_dict(cfg)) == cfg
    assert load_section(FitConfig, "cpu", "fit").resolution == 256
    assert load_section(FitConfig, "quality", "fit").resolution == 512


def test_initial_points_lie_on_the_head(demo_subject):
    from talkgs.model.init_head import head_ellipsoid, initial_points
    from talkgs.train.config import InitConfig

    s = Subject(demo_subject[0])
    frames = [f for _, f in zip(range(1), s.frames())]
    labels = [lb for _, lb in zip(range(1), s.labels())]
    pts, rgb = initial_points(s.template, frames, labels, [s.w2c[0]], s.K, InitConfig(), seed=0)
    assert pts.shape[1] == 3 and rgb.shape == pts.shape and 0 <= rgb.min() and rgb.max() <= 1
    centre, radii = head_ellipsoid(s.template, InitConfig().ellipsoid_margin)
    inside = (((pts - centre) / radii) ** 2).sum(-1)
    assert np.percentile(inside, 95) < 1.3  # on or inside the rough skull
    # Projected into the frame, the points land on the head, not on the background.
    cam = pts @ s.w2c[0, :3, :3].T + s.w2c[0, :3, 3]
    uv = (cam @ s.K.T)[:, :2] / cam[:, 2:3]
    lab = labels[0][np.clip(uv[:, 1].astype(int), 0, s.size - 1), np.clip(uv[:, 0].astype(int), 0, s.size - 1)]
    assert np.isin(lab, list(schema.HEAD_LABELS) + [schema.Label.MOUTH]).mean() > 0.9


def test_eval_report_and_side_by_side_video(fitted, tmp_path, capsys):
    root, _ = fitted
    out = tmp_path / "report.json"
    video = tmp_path / "sbs.mp4"
    assert main(["--quiet", "eval", str(root), "--json", str(out), "--video", str(video)]) == 0
    report = json.loads(out.read_text())
    for key in ("psnr", "ssim", "lpips", "lmd_px", "mouth_open_corr", "mouth_open_spread", "blink_agreement"):
        assert key in report
    assert report["mouth_open_spread"] > 0
    assert report["lpips"] is None  # no LPIPS weights on this machine
    assert 20 < report["psnr"] < 50 and 0 < report["ssim"] <= 1
    assert report["landmark_frames"] >= 40 and 0 < report["lmd_px"] < 20
    # The baseline without motion is rendered from the same Gaussians: the same head, another mouth.
    base = report["no_motion"]
    assert set(base) == {"psnr_head", "psnr_mouth", "lmd_px", "mouth_open_corr", "mouth_open_spread"}
    assert abs(base["psnr_head"] - report["psnr_head"]) < 3 and base["psnr_mouth"] != report["psnr_mouth"]
    # The local check, driven by speech and (the code path) by each frame's own tracked mouth.
    for key in ("local_error", "local_error_tracked"):
        check = report[key]
        assert check["threshold"] == 0.07 and 0 <= check["frames_over"] <= 45 and check["median_excess"] >= 0
        assert report["test_frames"][0] <= check["worst_frame"] < report["test_frames"][1]
    verdict = report["local_check"]
    assert verdict["drive"] == "tracked"
    assert verdict["passed"] == (verdict["frames_over"] == 0 == report["local_error_tracked"]["frames_over"])
    info = media.probe_video(video)
    assert info.has_audio and info.width == 3 * 64 and abs(info.duration - 45 / 25) < 0.1
    assert sum(1 for _ in media.read_frames(video, (192, 64))) == 45


def test_landmark_metrics_on_real_frames(demo_subject):
    from talkgs.eval.landmark_metrics import landmark_metrics, track_landmarks

    s = Subject(demo_subject[0])
    frames = [f for _, f in zip(range(60), s.frames())]
    pts = track_landmarks(frames)
    same = landmark_metrics(pts, pts)
    assert same["lmd_px"] == 0 and same["mouth_open_corr"] == pytest.approx(1.0)
    # A sequence against itself shifted in time (0.4 s): the mouth no longer agrees. The correlation is
    # None only when either mouth does not move, which 50 frames of speech rule out.
    shifted = landmark_metrics(pts[10:], pts[:-10])
    assert shifted["lmd_px"] > 1.0
    assert shifted["mouth_open_corr"] is not None and shifted["mouth_open_corr"] < 0.9


def test_every_stage_runs_and_the_head_reloads(fitted):
    root, report = fitted
    assert list(report["stages"]) == ["static", "mouth", "face", "fuse"]
    for result in report["stages"].values():
        assert result["psnr_head"] > 25.0 and result["psnr_mouth"] is not None
    assert report["mouth_gaussians"] > 0
    model = load_model(root)
    head = model.head
    tensors = head.tensors()
    assert head.cfg.drive == "code" and head.speech.dim_in == 512  # the default: Whisper's features
    assert head.mouth.num_gaussians == report["mouth_gaussians"] and head.cfg == tiny_fit().head
    assert model.draws == {"mouth": True, "face_motion": True, "mouth_motion": True}
    # The face stage trained the face motion field: its offsets are no longer zero.
    last = [k for k in tensors if k.startswith("face_motion.") and "out" in k]
    assert last and any(tensors[k].abs().sum() > 0 for k in last)


def _random_head(ctx, fit):
    """A head of a few random Gaussians, built as the trainer builds one: the samplers do not look at them."""
    from talkgs.model.talking_head import TalkingHead

    g = torch.Generator().manual_seed(0)
    face = GaussianModel.from_points(torch.randn(40, 3, generator=g) * 0.05, torch.rand(40, 3, generator=g),
                                     sh_degree=fit.sh_degree)
    mouth = GaussianModel.from_points(torch.randn(20, 3, generator=g) * 0.01, torch.rand(20, 3, generator=g),
                                      sh_degree=fit.sh_degree)
    return TalkingHead(face, mouth, ctx.features.shape[-1], fit.head)


def test_incremental_sampling_moves_through_mouth_then_eyes(demo_subject, tmp_path):
    from talkgs.train.context import FitContext
    from talkgs.train.stages import FaceStage

    fit = tiny_fit(device="cpu")
    ctx = FitContext(Subject(demo_subject[0]), fit)
    cfg = dataclasses.replace(fit.stages[2], iterations=1000, sample_window=0.2, incremental_fraction=0.6)
    assert cfg.name == "face" and cfg.sampler == "incremental"
    stage = FaceStage(ctx, cfg, _random_head(ctx, fit))
    gen = torch.Generator().manual_seed(0)
    train = ctx.train_indices
    mouth_rank = {int(f): r for r, f in enumerate(train[np.argsort(ctx.mouth_open[train], kind="stable")])}
    early = [mouth_rank[stage.sample(s, gen)] for s in range(0, 10)]
    late = [mouth_rank[stage.sample(s, gen)] for s in range(270, 299)]
    assert max(early) < 0.3 * len(train) and min(late) > 0.6 * len(train)
    eye_rank = {int(f): r for r, f in enumerate(train[np.argsort(ctx.eye_open[train], kind="stable")])}
    assert max(eye_rank[stage.sample(s, gen)] for s in range(300, 310)) < 0.3 * len(train)
    # After the incremental part, every training frame can come up.
    assert len({stage.sample(s, gen) for s in range(600, 1000)}) > 0.5 * len(train)


def test_open_sampling_draws_the_frames_where_the_mouth_interior_shows(demo_subject):
    """The mouth stage's "open" sampler draws frames in proportion to their tracked opening: the interior it
    trains on shows in them, and a closed mouth still comes up now and then."""
    from talkgs.train.context import FitContext
    from talkgs.train.stages import MouthStage

    fit = tiny_fit(device="cpu")
    ctx = FitContext(Subject(demo_subject[0]), fit)
    cfg = fit.stages[1]
    assert cfg.name == "mouth" and cfg.sampler == "open"
    stage = MouthStage(ctx, cfg, _random_head(ctx, fit))
    gen = torch.Generator().manual_seed(0)
    drawn = np.array([stage.sample(s, gen) for s in range(2000)])
    train = ctx.train_indices
    assert set(drawn) <= set(train.tolist())
    opening = ctx.mouth_open
    expected = float((opening[train] ** 2).sum() / opening[train].sum())  # the opening-weighted mean
    assert abs(opening[drawn].mean() - expected) < 0.1 * expected
    assert opening[drawn].mean() > 1.2 * opening[train].mean()
    closed = train[opening[train] < np.percentile(opening[train], 20)]
    assert np.isin(drawn, closed).any()


def test_render_test_split(fitted, tmp_path, capsys):
    root, _ = fitted
    out = tmp_path / "held_out.mp4"
    assert main(["--quiet", "render", str(root), "--split", "test", "-o", str(out)]) == 0
    info = media.probe_video(out)
    assert info.has_audio and info.width == 64 and abs(info.duration - 45 / 25) < 0.1
    frames = [f.astype(float) for f in media.read_frames(out, (64, 64))]
    assert len(frames) == 45
    # Frame i matches held-out frame (test_start + i), with its own torso, better than frames 10 away.
    s = Subject(root)
    start = s.test_range[0]
    import cv2

    truth = [cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA).astype(float) for f in s.frames(start)]
    for i in (12, 20, 30):
        errs = [np.abs(frames[i] - truth[j]).mean() for j in (i - 10, i, i + 10)]
        assert int(np.argmin(errs)) == 1
    assert main(["--quiet", "render", str(root), "--split", "test", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_fit_a_video_prepares_then_fits(tmp_path):
    from conftest import DEMO, ffmpeg

    clip = tmp_path / "clip.mp4"
    ffmpeg("-i", str(DEMO), "-t", "4", "-c:v", "libx264", "-crf", "14", "-c:a", "aac", str(clip))
    out = tmp_path / "subject"
    assert main(["--quiet", "fit", str(clip), "-o", str(out), "--config", "tiny", "--iterations", "5"]) == 0
    report = json.loads((out / schema.FIT_REPORT).read_text())
    assert list(report["stages"]) == ["static", "mouth", "face", "fuse"]
    assert (out / schema.MANIFEST).is_file() and (out / schema.MODEL).is_file()
    assert main(["--quiet", "fit", str(clip), "--config", "tiny"]) == 2  # a video needs -o


def test_landmark_loss_matches_tracking_and_trains_the_face_field(fitted):
    """The landmark loss projects like prepare: the unmoved template lands within a pixel or two of the
    tracked lips and eyelids; and it sends gradients to the face field, not to the Gaussians."""
    ctx, stage = fitted_stage(fitted[0])
    frame = int(ctx.train_indices[10])
    batch = ctx.batch(frame)
    stage.head.requires_grad_(False)
    stage.head.face_motion.requires_grad_(True)
    deltas = stage.render(batch).face_deltas
    moved = stage._landmark_loss(batch, deltas)
    still = dataclasses.replace(deltas, d_means=torch.zeros_like(deltas.d_means))
    unmoved = float(stage._landmark_loss(batch, still))
    assert unmoved < 2.0  # pixels at 64 px: the tracker's own residual, not a convention error
    moved.backward()
    grads = [p.grad for p in stage.head.face_motion.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert stage.head.face.params["means"].grad is None


def test_landmark_loss_over_extra_frames_matches_rendering_them(fitted):
    """The extra frames of the landmark loss deform only the anchor Gaussians; the loss must equal the
    mean of the per-frame losses computed the slow way, each from a full render of that frame."""
    ctx, stage = fitted_stage(fitted[0])
    frames = [int(i) for i in ctx.train_indices[[3, 17, 29]]]
    with torch.no_grad():
        slow = []
        stage.landmark_extra = None
        for i in frames:
            batch = ctx.batch(i)
            slow.append(float(stage._landmark_loss(batch, stage.render(batch).face_deltas)))
        batch = ctx.batch(frames[0])
        deltas = stage.render(batch).face_deltas
        stage.landmark_extra = torch.tensor(frames[1:])
        fast = float(stage._landmark_loss(batch, deltas))
    assert fast == pytest.approx(float(np.mean(slow)), rel=1e-5)


def test_face_stage_draws_extra_landmark_frames_from_the_training_frames(fitted):
    ctx, stage = fitted_stage(fitted[0])
    gen = torch.Generator().manual_seed(0)
    drawn = set()
    for step in range(20):
        stage.sample(step, gen)
        assert len(stage.landmark_extra) == stage.cfg.loss.landmark_frames - 1
        drawn.update(int(i) for i in stage.landmark_extra)
    assert drawn <= set(int(i) for i in ctx.train_indices) and len(drawn) > 20


def test_mouth_stage_trains_the_mouth_alone_and_fixed_gaussians_show_every_band(fitted):
    """The mouth stage's training render leaves the face out (TalkingGaussian's inside-mouth branch), its
    evaluation render does not; and a stage's SH warm-up never applies to Gaussians it does not train."""
    from talkgs.train.stages import STAGES

    ctx, fuse = fitted_stage(fitted[0])
    mouth = STAGES["mouth"](ctx, dataclasses.replace(fuse.cfg, name="mouth"), fuse.head)
    batch = ctx.batch(int(ctx.train_indices[5]))
    with torch.no_grad():
        assert float(mouth.render(batch, training=True).face[0].alpha.max()) == 0
        assert float(mouth.render(batch).face[0].alpha.max()) > 0.9
        # The fuse stage trains no Gaussians: a warm-up degree must not change its picture.
        full = fuse.render(batch).image
        warm = fuse.render(batch, sh_degree=0, training=True).image
        assert torch.equal(full, warm)
        # The mouth stage's own Gaussians follow the schedule (the tiny preset has one SH band, which
        # the tiny fit barely trained: give it colour so that it shows).
        fuse.head.mouth.params["shN"].normal_(0, 0.5)
        a = mouth.render(batch, sh_degree=0, training=True).image
        b = mouth.render(batch, training=True).image
    assert fuse.head.mouth.sh_degree == 1 and not torch.equal(a, b)
