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
