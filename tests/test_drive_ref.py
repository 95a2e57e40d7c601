"""Lip sync against another person's real mouth (talkgs eval --drive-ref): the measures and their chance levels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_file

from talkgs.cli.main import main
from talkgs.eval.drive_ref import DriveRefConfig, aperture_correlation, closure_events, drive_ref_metrics, match_events


@pytest.fixture(scope="module")
def real_opening():
    """[T] mouth opening of a real talking video (another speaker's), at 25 fps."""
    from talkgs.eval.lipsync import mouth_openings
    from talkgs.utils import media

    video = shared_file("video/feifeili_en_10s_256.mp4")
    info = media.probe_video(video)
    return mouth_openings(video, (info.width, info.height), 25.0)


def test_event_helpers():
    opening = np.array([5, 5, 0, 0, 5, 5, 5, 0, 5, 0, 0, 0, 0, 0, 0, 5], float)
    # Runs of closed frames: 2-3 (centre 2.5), 7 (7.0), 9-14 (too long with max 4: a pause).
    assert closure_events(opening, 1.0, max_frames=4).tolist() == [2.5, 7.0]
    assert match_events(np.array([3.0, 20.0]), np.array([2.5, 7.0]), 1) == (0.5, 0.5)
    assert match_events(np.array([]), np.array([2.5]), 1) == (0.0, None)
    t = np.arange(200)
    wave = np.sin(t / 3.0) + 0.3 * np.sin(t / 7.1)
    corr, lag = aperture_correlation(np.roll(wave, 2), wave, 5)  # the render is 2 frames late
    assert lag == 2 and corr > 0.99


def test_real_mouth_against_itself_and_against_chance(real_opening):
    """A render that moved exactly like the reference scores 1 where chance scores far less; one two
    frames late is found at lag +2; a still mouth makes no closure."""
    assert np.isfinite(real_opening).mean() > 0.95
    same = drive_ref_metrics(real_opening, real_opening)
    assert same["aperture_corr"] == pytest.approx(1.0) and same["lag_frames"] == 0
    assert same["closures_reference"] >= 5 and same["closure_recall"] == 1.0 and same["closure_precision"] == 1.0
    chance = same["chance"]
    assert chance["aperture_corr"] < 0.5 and chance["closure_recall"] < 0.7
    late = drive_ref_metrics(np.concatenate([real_opening[:2], real_opening[:-2]]), real_opening)
    assert late["lag_frames"] == 2 and late["aperture_corr"] > 0.95
    still = drive_ref_metrics(np.full_like(real_opening, 0.3), real_opening)
    assert still["aperture_corr"] is None and still["closure_recall"] == 0.0 and still["closures_rendered"] == 0
    with pytest.raises(ValueError, match="frames"):
        drive_ref_metrics(real_opening[:5], real_opening[:5], DriveRefConfig())


def test_cli_drive_ref_reports_beside_chance(fitted, tmp_path, capsys):
    root, _ = fitted
    video = shared_file("video/retalk_mcguinness_en_5s_524.mp4")
    out = tmp_path / "drive.json"
    assert main(["--quiet", "eval", str(root), "--drive-ref", str(video), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    from talkgs.utils import media

    expected = round(len(media.read_audio(video)) / media.SAMPLE_RATE * 25)  # the soundtrack at the subject's fps
    assert abs(report["frames"] - expected) <= 1 and abs(report["lag_frames"]) <= 5
    for key in ("aperture_corr", "closure_recall", "closure_precision"):
        assert key in report and key in report["chance"]
    capsys.readouterr()
    assert main(["eval", str(root), "--drive-ref", str(tmp_path / "missing.mp4")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
