"""Odd and bad input to talkgs prepare: rotated, variable-rate, several faces, gaps, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DEMO, ffmpeg, shared_file, tiny_config

from talkgs.cli.main import main
from talkgs.data import Subject, schema
from talkgs.data.topology import FOREHEAD
from talkgs.prepare import pipeline
from talkgs.prepare.pipeline import prepare


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["--quiet", *argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("talkgs: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def demo4s(clip_dir):
    """The first 4 s of the demo clip."""
    path = clip_dir / "demo4s.mp4"
    if not path.exists():
        ffmpeg("-i", str(DEMO), "-t", "4", "-c:v", "libx264", "-crf", "14", "-c:a", "aac", str(path))
    return path


# -- bad input -------------------------------------------------------------------------------------
def test_missing_file(tmp_path, capsys):
    code, err = run_cli(capsys, "prepare", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "s"))
    assert_one_line_error(code, err, "no such file")
    assert not (tmp_path / "s").exists()


def test_not_a_video(tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 100)
    code, err = run_cli(capsys, "prepare", str(fake), "-o", str(tmp_path / "s"))
    assert_one_line_error(code, err, "not a video")
    assert not (tmp_path / "s").exists()


def test_video_without_a_face(tmp_path, capsys):
    clip = tmp_path / "noface.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4", "-f", "lavfi",
           "-i", "sine=frequency=440:duration=4", "-shortest", "-c:v", "libx264", "-c:a", "aac", str(clip))
    code, err = run_cli(capsys, "prepare", str(clip), "-o", str(tmp_path / "s"), "--config", "tiny")
    assert_one_line_error(code, err, "no face")
    assert not (tmp_path / "s").exists()
    assert not list(tmp_path.glob(".s.talkgs-tmp-*"))


def test_too_short(tmp_path, capsys):
    clip = tmp_path / "short.mp4"
    ffmpeg("-i", str(DEMO), "-t", "1.5", "-c:v", "libx264", "-c:a", "aac", str(clip))
    code, err = run_cli(capsys, "prepare", str(clip), "-o", str(tmp_path / "s"), "--config", "tiny")
    assert_one_line_error(code, err, "at least 3 s")


def test_unknown_encoder_and_bad_offset(tmp_path, demo4s, capsys):
    code, err = run_cli(capsys, "prepare", str(demo4s), "-o", str(tmp_path / "s"), "--audio-encoder", "deepspeech")
    assert_one_line_error(code, err, "deepspeech")
    code, err = run_cli(capsys, "prepare", str(demo4s), "-o", str(tmp_path / "s"), "--av-offset", "soon")
    assert_one_line_error(code, err, "--av-offset")
    code, err = run_cli(capsys, "prepare", str(demo4s), "-o", str(tmp_path / "s"), "--config", "nonesuch")
    assert_one_line_error(code, err, "nonesuch")


def test_missing_hubert_weights_fail_fast(tmp_path, demo4s, capsys):
    code, err = run_cli(capsys, "prepare", str(demo4s), "-o", str(tmp_path / "s"), "--audio-encoder", "hubert")
    assert_one_line_error(code, err, "mel")
    assert not (tmp_path / "s").exists()


def test_no_audio_track(tmp_path, demo4s, capsys):
    clip = tmp_path / "silent_film.mp4"
    ffmpeg("-i", str(demo4s), "-an", "-c:v", "copy", str(clip))
    out = tmp_path / "s"
    code = main([*("prepare", str(clip), "-o", str(out), "--config", "tiny")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no audio track" in err and "fit will need audio" in err
    report = json.loads((out / schema.REPORT).read_text())
    assert report["has_audio"] is False and report["audio_encoders"] == []
    assert not (out / schema.AUDIO).exists()
    assert Subject(out).num_frames == 100


def test_existing_folder_needs_force_and_keeps_user_files(tmp_path, demo4s, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    code, err = run_cli(capsys, "prepare", str(demo4s), "-o", str(out), "--config", "tiny")
    assert_one_line_error(code, err, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt"]
    # With --force talkgs writes its files and leaves the user's alone; a second forced run with
    # fewer outputs (no preview) removes only its own stale preview files.
    assert main(["--quiet", "prepare", str(demo4s), "-o", str(out), "--config", "tiny", "--force",
                 "--preview"]) == 0
    assert (out / schema.PREVIEW_SHEET).is_file() and (out / "my_notes.txt").read_text() == "mine"
    assert main(["--quiet", "prepare", str(demo4s), "-o", str(out), "--config", "tiny", "--force"]) == 0
    assert not (out / schema.PREVIEW_SHEET).exists()
    assert (out / "my_notes.txt").read_text() == "mine"
    assert Subject(out).num_frames == 100


def test_interrupted_run_leaves_nothing_half_written(tmp_path, demo4s, monkeypatch, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")

    class Boom:
        def __init__(self, *a, **k):
            pass

        def add(self, *a, **k):
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "BackgroundPlate", Boom)
    code = main(["--quiet", "prepare", str(demo4s), "-o", str(out), "--config", "tiny", "--force"])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".s.talkgs-tmp-*"))


# -- odd but valid video ---------------------------------------------------------------------------
def test_rotation_metadata_is_applied(tmp_path):
    """A phone-style file: pixels stored sideways, display matrix saying rotate them back."""
    src = shared_file("video/obama_pd_8s_960x540.mp4")
    sideways = tmp_path / "sideways.mp4"
    ffmpeg("-i", str(src), "-t", "4", "-vf", "transpose=1", "-c:v", "libx264", "-crf", "14", "-c:a", "copy",
           str(tmp_path / "stored.mp4"))
    ffmpeg("-display_rotation", "90", "-i", str(tmp_path / "stored.mp4"), "-c", "copy", str(sideways))
    upright = tmp_path / "upright.mp4"
    ffmpeg("-i", str(src), "-t", "4", "-c:v", "libx264", "-crf", "14", "-c:a", "copy", str(upright))
    a = prepare(sideways, tmp_path / "a", tiny_config())
    b = prepare(upright, tmp_path / "b", tiny_config())
    assert a["source"]["width"] == 960 and a["source"]["height"] == 540
    assert a["crop"] == pytest.approx(b["crop"], abs=3)
    la, lb = Subject(tmp_path / "a").landmarks, Subject(tmp_path / "b").landmarks
    assert np.median(np.abs(la[..., :2] - lb[..., :2])) < 1.0
    assert (la[:, FOREHEAD, 1] < la[:, 152, 1]).all()  # upright: forehead above the chin


def test_variable_frame_rate_keeps_audio_in_sync(tmp_path):
    """3 s at 30 fps then 3 s at 12 fps in one file: 6 s at 25 fps out, audio exactly as long."""
    parts = []
    for k, (start, rate) in enumerate(((0, 30), (3, 12))):
        p = tmp_path / f"part{k}.mkv"
        ffmpeg("-ss", str(start), "-t", "3", "-i", str(DEMO), "-vf", f"fps={rate}", "-c:v", "libx264", "-crf", "14",
               "-c:a", "pcm_s16le", str(p))
        parts.append(p)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    vfr = tmp_path / "vfr.mkv"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(vfr))
    report = prepare(vfr, tmp_path / "s", tiny_config())
    s = Subject(tmp_path / "s")
    assert abs(s.num_frames - 150) <= 1
    samples, sr = s.audio()
    assert len(samples) == round(s.num_frames / 25 * sr)
    assert report["frames_without_face"] == 0


def test_short_face_gap_is_interpolated_long_gap_is_refused(tmp_path, capsys):
    base = tmp_path / "base.mp4"
    ffmpeg("-i", str(DEMO), "-t", "8", "-vf", "fps=25", "-c:v", "libx264", "-crf", "14", "-c:a", "aac", str(base))
    short_gap = tmp_path / "short_gap.mp4"  # 0.2 s of black = 5 frames of 200 (2.5 %)
    ffmpeg("-i", str(base), "-vf", "drawbox=enable='between(t,4,4.19)':x=0:y=0:w=iw:h=ih:color=black:t=fill",
           "-c:v", "libx264", "-crf", "14", "-c:a", "copy", str(short_gap))
    report = prepare(short_gap, tmp_path / "a", tiny_config())
    assert 4 <= report["frames_without_face"] <= 6
    lm = Subject(tmp_path / "a").landmarks
    gap = slice(99, 106)
    assert np.all(np.abs(np.diff(lm[gap, 1, :2], axis=0)) < 3)  # smooth through the gap

    long_gap = tmp_path / "long_gap.mp4"  # 1.5 s of black (19 %)
    ffmpeg("-i", str(base), "-vf", "drawbox=enable='between(t,2,3.49)':x=0:y=0:w=iw:h=ih:color=black:t=fill",
           "-c:v", "libx264", "-crf", "14", "-c:a", "copy", str(long_gap))
    code, err = run_cli(capsys, "prepare", str(long_gap), "-o", str(tmp_path / "b"), "--config", "tiny")
    assert_one_line_error(code, err, "2.00-3.", "trim")


def test_several_faces_follow_the_largest_central_one(tmp_path, capsys):
    """The demo face in the middle with a small copy of it at the side: follow the big one."""
    two = tmp_path / "two.mp4"
    ffmpeg("-i", str(DEMO), "-t", "4", "-filter_complex",
           "[0:v]split[a][b];[b]scale=128:128[s];[a]pad=512:256:128:0[p];[p][s]overlay=0:64",
           "-c:v", "libx264", "-crf", "14", "-c:a", "aac", str(two))
    out = tmp_path / "s"
    assert main(["prepare", str(two), "-o", str(out), "--config", "tiny"]) == 0
    err = capsys.readouterr().err
    assert "several faces" in err
    report = json.loads((out / schema.REPORT).read_text())
    assert report["faces_max"] == 2
    x, y, w, h = report["crop"]
    assert x <= 128 + 40 and x + w >= 384 - 40  # the big face's crop, not the small one's
    assert report["frames_without_face"] == 0
