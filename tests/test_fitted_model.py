"""The fitted model stands alone, and every path draws a frame through the one forward pass (tiny preset)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import DEMO, ffmpeg

from talkgs.cli.main import main
from talkgs.data import schema
from talkgs.model.fitted import load_model
from talkgs.utils import media


@pytest.fixture(scope="module")
def speech(clip_dir):
    path = clip_dir / "model_speech.wav"
    if not path.exists():
        ffmpeg("-ss", "2", "-t", "2", "-i", str(DEMO), "-vn", "-ac", "1", "-ar", "16000", str(path))
    return path


def test_the_model_file_alone_renders_exports_and_views(fitted, speech, tmp_path, monkeypatch):
    """fit/model.safetensors copied alone to an empty folder on another path: render, export and the
    viewer need nothing else, and give the same frames as the subject folder does."""
    root, _ = fitted
    alone = tmp_path / "elsewhere" / "empty"
    alone.mkdir(parents=True)
    shutil.copy(root / schema.MODEL, alone / "head.safetensors")
    monkeypatch.chdir(alone)
    assert main(["--quiet", "render", "head.safetensors", "--audio", str(speech), "-o", "talk.mp4"]) == 0
    assert main(["--quiet", "export", "head.safetensors", "--ply", "head.ply"]) == 0
    assert sorted(p.name for p in alone.iterdir()) == ["head.ply", "head.safetensors", "talk.mp4"]
    info = media.probe_video(alone / "talk.mp4")
    assert info.has_audio and info.width == 64 and abs(info.duration - 2.0) < 0.05
    # The same render from the subject folder: the model file carried everything the frames depend on.
    assert main(["--quiet", "render", str(root), "--audio", str(speech), "-o", str(tmp_path / "ref.mp4")]) == 0
    alone_frames = list(media.read_frames(alone / "talk.mp4", (64, 64)))
    ref_frames = list(media.read_frames(tmp_path / "ref.mp4", (64, 64)))
    assert len(alone_frames) == len(ref_frames) == 50
    diffs = [int(np.abs(a.astype(int) - b).max()) for a, b in zip(alone_frames, ref_frames)]
    assert not any(diffs), f"max absolute difference per frame: {diffs}"

    from talkgs.viewer.engine import FrameRequest, ViewerEngine

    engine = ViewerEngine(alone / "head.safetensors")
    assert engine.clips == {}  # no subject folder: no held-out audio of its own
    clip = engine.add_clip("speech", media.read_audio(speech))
    frame = engine.render(FrameRequest(clip=clip.id, t=0.5)).image
    assert frame.shape == (64, 64, 3) and frame.std() > 10


def test_inference_path_equals_training_path_bit_for_bit(fitted):
    """The renderer loaded from the model file (replay poses, blinks, stored torso layers) draws replay
    frame i exactly as the training stage draws its source frame, batched or not."""
    from talkgs.data import Subject
    from talkgs.render.driver import DriveConfig, TalkingRenderer
    from talkgs.train.config import FitConfig
    from talkgs.train.context import FitContext
    from talkgs.train.stages import STAGES
    from talkgs.utils.config import from_dict, load_yaml

    root, _ = fitted
    cfg = from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG))
    ctx = FitContext(Subject(root), cfg)
    model = load_model(root / schema.MODEL)
    stage = STAGES[cfg.stages[-1].name](ctx, cfg.stages[-1], model.head)
    run = model.torso_frames
    indices = np.arange(12)
    with torch.no_grad():
        training = [media.to_uint8(stage.render(ctx.batch(int(run[i]))).image[0]) for i in indices]
    for batch in (1, 8):
        renderer = TalkingRenderer(root / schema.MODEL, DriveConfig(batch=batch), "cpu")
        frames = []
        for a in range(0, len(indices), batch):
            # Output frame i shows source frame run[i]: give it that frame's audio features.
            frames += renderer.render_batch(ctx.features, indices[a:a + batch], feature_offset=-int(run[0]))
        assert [renderer.track.pose(int(i))[1] for i in indices] == run[indices].tolist()
        for i in indices:
            assert np.array_equal(frames[i], training[i]), f"batch {batch}, frame {i}"


def test_held_out_render_is_the_training_stage_render(fitted):
    """``talkgs eval`` and ``render --split`` draw held-out frames with the training stage's pixels."""
    from talkgs.eval.evaluate import load_fitted, render_frame
    from talkgs.train.config import FitConfig
    from talkgs.train.context import FitContext
    from talkgs.train.stages import STAGES
    from talkgs.utils.config import from_dict, load_yaml

    root, _ = fitted
    model, frames = load_fitted(root, "cpu")
    cfg = from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG))
    ctx = FitContext(frames.subject, cfg)
    stage = STAGES[cfg.stages[-1].name](ctx, cfg.stages[-1], model.head)
    with torch.no_grad():
        for i in frames.test_indices[::15]:
            batch, out = render_frame(model, frames, int(i))
            assert torch.equal(out.image, stage.render(ctx.batch(int(i))).image)
            still = render_frame(model, frames, int(i), motion=False)[1]
            assert torch.equal(still.image, stage.render(ctx.batch(int(i)), motion=False).image)


def test_model_file_contents(fitted):
    root, report = fitted
    model = load_model(root)
    assert model.resolution == model.layer_size == 64 and model.fps == 25
    assert model.head.face.num_gaussians == report["gaussians"]
    run = model.torso_frames
    assert len(run) > 100 and np.all(np.diff(run) == 1)  # the replay run: consecutive training frames
    assert set(run.tolist()) <= set(model.replay.train.tolist())
    torso = model.torso(int(run[0]))
    alpha = torso[..., 3]
    assert set(np.unique(alpha).tolist()) <= {0, 255} and 0.05 < (alpha > 0).mean() < 0.9
    assert (torso[..., :3][alpha == 0] == 0).all()  # premultiplied: nothing outside the torso
    assert model.background().shape == (64, 64, 3)
    assert report["model_mb"] == pytest.approx((root / schema.MODEL).stat().st_size / 2**20, abs=0.01)


def test_bad_model_files_get_one_line(fitted, speech, tmp_path, capsys):
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(other))
    for path, words in ((garbage, "damaged"), (other, "not a fitted talkgs model"),
                        (tmp_path / "missing.safetensors", "does not exist"), (tmp_path, "neither")):
        capsys.readouterr()
        code = main(["render", str(path), "--audio", str(speech), "-o", str(tmp_path / "x.mp4")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x.mp4").exists()
    # --split needs the subject's own frames: a model file alone is refused in one line.
    code = main(["render", str(fitted[0] / schema.MODEL), "--split", "test", "-o", str(tmp_path / "y.mp4")])
    assert code == 2 and "not a subject folder" in capsys.readouterr().err


def test_a_fit_without_its_model_file_is_finished_by_resume(fitted, speech, tmp_path, capsys):
    """A subject whose fit has a final checkpoint but no model file (interrupted while writing it, or
    fitted by an older talkgs) says how to finish it, and --resume writes the same model."""
    root = tmp_path / "subject"
    shutil.copytree(fitted[0], root, ignore=shutil.ignore_patterns("preview", "cache"))
    (root / schema.MODEL).unlink()
    capsys.readouterr()
    assert main(["render", str(root), "--audio", str(speech), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert main(["--quiet", "fit", str(root), "--config", "tiny", "--resume"]) == 0
    again, original = load_model(root).head.tensors(), load_model(fitted[0]).head.tensors()
    assert all(torch.equal(again[k], original[k]) for k in original)


def _renders(model, subject_frames, features, indices):
    """(held-out frames as ``talkgs eval`` draws them, new-speech frames as ``talkgs render`` draws them) of
    ``model``, uint8."""
    from talkgs.eval.evaluate import render_frame
    from talkgs.render.driver import DriveConfig, TalkingRenderer

    with torch.no_grad():
        held_out = [media.to_uint8(render_frame(model, subject_frames, int(i))[1].image[0].clamp(0, 1))
                    for i in subject_frames.test_indices]
        speech = TalkingRenderer(model, DriveConfig(batch=8), "cpu").render_batch(features, indices)
    return held_out, speech


def test_the_compact_model_file_renders_within_a_level(fitted, tmp_path):
    """float16 tensors and WebP layers (the default) against the same head stored in float32 with PNG layers as
    model format 1 wrote it: a smaller file, held-out PSNR within 0.05 dB, every rendered frame within 1 level of
    255 at the 99th percentile; and the old file still loads and renders."""
    import cv2

    from talkgs.eval.evaluate import load_fitted
    from talkgs.model.fitted import FittedModel, encode_layer
    from talkgs.model.losses import psnr
    from talkgs.model.talking_head import TalkingHead
    from talkgs.train.checkpoint import load_checkpoint

    root, _ = fitted
    model, subject_frames = load_fitted(root, "cpu")
    # The fit's float32 head (its last checkpoint) with the model file's replay data and layers.
    head = TalkingHead.from_tensors(load_checkpoint(root / schema.CHECKPOINT)["model"], int(model.header["audio_dim"]),
                                    model.head.cfg).eval()
    png = lambda image: cv2.imencode(".png", cv2.cvtColor(  # noqa: E731
        image, cv2.COLOR_RGBA2BGRA if image.shape[-1] == 4 else cv2.COLOR_RGB2BGR))[1].tobytes()
    # Written as format 1 did: float32 tensors, PNG layers.
    FittedModel(head, {**model.header, "format_version": 1}, model.replay, png(model.background()),
                {int(f): png(model.torso(int(f))) for f in model.torso_frames}
                ).save(tmp_path / "old.safetensors", float16=False)
    FittedModel(head, model.header, model.replay, encode_layer(model.background()),
                {int(f): encode_layer(model.torso(int(f))) for f in model.torso_frames}
                ).save(tmp_path / "compact.safetensors")
    old, compact = load_model(tmp_path / "old.safetensors"), load_model(tmp_path / "compact.safetensors")
    assert (tmp_path / "compact.safetensors").stat().st_size < 0.8 * (tmp_path / "old.safetensors").stat().st_size
    assert all(np.array_equal(compact.torso(int(f)), old.torso(int(f))) for f in model.torso_frames)
    assert any(not torch.equal(a, b) for a, b in zip(compact.head.tensors().values(), old.head.tensors().values()))
    indices = np.arange(40)
    features = subject_frames.features
    ref_held, ref_speech = _renders(old, subject_frames, features, indices)
    got_held, got_speech = _renders(compact, subject_frames, features, indices)
    for ref, got in ((ref_held, got_held), (ref_speech, got_speech)):
        diff = np.abs(np.stack(ref).astype(int) - np.stack(got).astype(int))
        assert np.percentile(diff, 99) <= 1 and diff.max() < 64
    truth = [media.to_uint8(subject_frames.batch(int(i)).image) for i in subject_frames.test_indices]
    score = lambda frames: np.mean([float(psnr(torch.from_numpy(f).float() / 255, torch.from_numpy(t).float() / 255))  # noqa: E731
                                    for f, t in zip(frames, truth)])
    assert abs(score(got_held) - score(ref_held)) <= 0.05
    assert compact.header["format_version"] == 2 and old.header["format_version"] == 1
