"""Lip-sync metrics without SyncNet: bilabial closure, audio-video offset, mouth-energy correlation.

The demo clip's own audio is late: ``talkgs prepare`` measures +4 frames on it (and corrects it), and
the p/b/m closures on its frames come 3 to 5 frames before the aligned phones. So the clip with its
audio advanced by 4 frames is the in-sync real footage here, and the clip as it is doubles as the
same footage with the audio shifted by +4 frames.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from conftest import DEMO, ffmpeg, shared_file

from talkgs.audio import features as audio
from talkgs.cli.main import main
from talkgs.errors import TalkgsError
from talkgs.eval import lipsync
from talkgs.eval.lipsync import LipSyncConfig, bilabial_closures, closure_threshold, lipsync_metrics
from talkgs.utils import media

DEMO_FPS = 30
DEMO_LATE_FRAMES = 4  # what prepare measures on the demo clip (demo_subject/prepare_report.json)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("talkgs: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- closure logic on synthetic openings -----------------------------------------------------------
FPS = 25.0
# Phones at 25 fps: the B covers frames 10-11, the M frame 30, the P frames 50-52.
SEGMENTS = [("SIL", 0.0, 0.3), ("AA", 0.3, 0.4), ("B", 0.4, 0.48), ("AH", 0.48, 1.2), ("M", 1.2, 1.24),
            ("IY", 1.24, 2.0), ("P", 2.0, 2.12), ("AE", 2.12, 3.0)]


def openings(closed_frames=()) -> np.ndarray:
    x = np.full(80, 0.2)  # [T] open
    x[list(closed_frames)] = 0.0
    return x


def test_closure_rate_synthetic():
    closed = bilabial_closures(openings([10, 11, 30, 51]), SEGMENTS, FPS, threshold=0.05, tolerance=0)
    assert closed.tolist() == [True, True, True]
    closed = bilabial_closures(openings([20, 40, 70]), SEGMENTS, FPS, threshold=0.05, tolerance=1)
    assert closed.tolist() == [False, False, False]
    # Tolerance: a closure one frame before the B or after the P still counts, two frames does not.
    closed = bilabial_closures(openings([9, 32, 53]), SEGMENTS, FPS, threshold=0.05, tolerance=1)
    assert closed.tolist() == [True, False, True]
    # Frames without a face are ignored; a phone with none left out of the count.
    x = openings([10])
    x[28:33] = np.nan
    assert bilabial_closures(x, SEGMENTS, FPS, 0.05, 1).tolist() == [True, False]


def test_closure_threshold_is_relative():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0.0, 0.01, 50), rng.uniform(0.1, 0.2, 150)])  # [T] closed, then open
    thr, low, high = closure_threshold(x, LipSyncConfig())
    assert 0.0 <= low < 0.01 and 0.19 < high <= 0.2
    assert thr == pytest.approx(low + 0.25 * (high - low))
    # Scale-free: the same clip with every opening doubled gives twice the threshold.
    assert closure_threshold(2 * x, LipSyncConfig())[0] == pytest.approx(2 * thr)


# -- forced alignment on real speech ---------------------------------------------------------------
VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}


def _level_db(samples: np.ndarray, start: float, end: float) -> float:
    seg = samples[int(start * 16000): int(end * 16000)].astype(np.float64)
    return float(10 * np.log10(np.mean(seg**2) + 1e-10))


def test_forced_alignment_finds_bilabials():
    samples = media.read_audio(shared_file("audio/obama_pd_en_33s.wav"), 16000)[: 16 * 16000]  # [S] 16 s
    segments, source = lipsync.align_phones(samples)
    assert source == "forced_alignment"
    starts, ends = np.array([s for _, s, _ in segments]), np.array([e for _, _, e in segments])
    assert np.all(ends > starts) and np.all(starts[1:] >= ends[:-1] - 1e-9) and ends[-1] <= 16.0 + 1e-6
    bilabials = [(s, e) for p, s, e in segments if p in lipsync.BILABIALS]
    assert len(bilabials) >= 10  # 16 found (28 in the whole 33 s)
    assert all(0.02 < e - s < 0.3 for s, e in bilabials)
    # Plausible times, checked on the waveform: lips closed (a stop's silence, a nasal murmur) are
    # quieter than vowels. Measured 10 dB at the aligned times; shifting the phones by 80 ms either
    # way brings it to -3 and -1 dB, so this fails if the times are off by a few frames.
    b = np.mean([_level_db(samples, s, e) for s, e in bilabials])
    v = np.mean([_level_db(samples, s, e) for p, s, e in segments if p in VOWELS])
    assert v - b > 6.0, (v, b)


def test_falls_back_to_allphone(monkeypatch):
    samples = media.read_audio(shared_file("audio/obama_pd_en_33s.wav"), 16000)[: 4 * 16000]  # [S] 4 s
    monkeypatch.setattr(audio, "_forced_alignment", lambda samples: [])
    segments, source = lipsync.align_phones(samples)
    assert source == "allphone"
    assert sum(p != "SIL" for p, _, _ in segments) > 20


# -- the demo clip: real footage, its own audio ----------------------------------------------------
@pytest.fixture(scope="module")
def demo_late() -> dict:
    """The demo clip with its own audio, which is late."""
    return lipsync_metrics(DEMO)


@pytest.fixture(scope="module")
def demo_synced(tmp_path_factory) -> dict:
    """The demo clip with its audio advanced by DEMO_LATE_FRAMES, measured through the CLI."""
    tmp = tmp_path_factory.mktemp("lipsync")
    wav = tmp / "synced.wav"
    ffmpeg("-ss", f"{DEMO_LATE_FRAMES / DEMO_FPS:.6f}", "-i", str(DEMO), "-vn", "-ac", "1", "-ar", "16000", str(wav))
    video = tmp / "demo.mp4"
    video.symlink_to(DEMO)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--quiet", "eval", "--audio", str(wav), "--video", str(video)]) == 0
    report = json.loads((tmp / "demo_lipsync.json").read_text())  # the default: next to the video
    assert json.loads(stdout.getvalue()) == report
    return report


def test_demo_in_sync_is_the_ceiling(demo_synced):
    r = demo_synced
    assert r["frames"] == 599 and r["fps"] == DEMO_FPS and r["face_frames"] == 599
    assert r["phone_source"] == "forced_alignment"
    assert r["bilabial_count"] >= 8  # 12 measured
    assert r["bilabial_closure_rate"] > 0.7  # 0.83 measured (10 of 12)
    assert abs(r["av_offset_frames"]) <= 1  # +1 measured
    assert r["mouth_energy_corr"] > 0.15  # 0.25 measured
    assert r["av_offset_confident"]


def test_late_audio_is_caught(demo_late, demo_synced):
    # Audio 4 frames later: the offset moves by 4 (measured +5 against +1) ...
    assert abs(demo_late["av_offset_frames"] - demo_synced["av_offset_frames"] - DEMO_LATE_FRAMES) <= 1
    assert demo_late["av_offset_confident"]
    # ... the closures no longer fall on the p/b/m (measured 0.22: 2 of 9) ...
    assert demo_late["bilabial_closure_rate"] < 0.5
    # ... and the mouth no longer opens with the voice at lag 0 (measured 0.03).
    assert demo_late["mouth_energy_corr"] < demo_synced["mouth_energy_corr"] - 0.1
    assert demo_late["audio"] == demo_late["video"] == str(DEMO)


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input(tmp_path, capsys):
    wav = tmp_path / "speech.wav"
    media.write_wav(wav, 0.3 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000), 16000)
    code, _, err = run_cli(capsys, "eval", "--audio", str(tmp_path / "nope.wav"), "--video", str(DEMO))
    assert_one_line_error(code, err, "no such file")
    code, _, err = run_cli(capsys, "eval", "--audio", str(wav), "--video", str(tmp_path / "nope.mp4"))
    assert_one_line_error(code, err, "no such file")
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio\n" * 100)
    code, _, err = run_cli(capsys, "eval", "--audio", str(notes), "--video", str(DEMO))
    assert_one_line_error(code, err, "could not decode the audio")
    silent = tmp_path / "silent.wav"
    media.write_wav(silent, np.zeros(16000), 16000)
    code, _, err = run_cli(capsys, "eval", "--audio", str(silent), "--video", str(DEMO))
    assert_one_line_error(code, err, "silent")
    mute = tmp_path / "mute.mp4"
    ffmpeg("-i", str(DEMO), "-t", "1", "-an", "-c:v", "copy", str(mute))
    code, _, err = run_cli(capsys, "eval", "--audio", str(mute), "--video", str(DEMO))
    assert_one_line_error(code, err, "no audio stream")
    code, _, err = run_cli(capsys, "eval", "--audio", str(wav))
    assert_one_line_error(code, err, "--video")
    code, _, err = run_cli(capsys, "eval")
    assert_one_line_error(code, err, "SUBJECT_DIR")


def test_video_without_a_face(tmp_path, capsys):
    clip = tmp_path / "noface.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1", "-f", "lavfi",
           "-i", "sine=frequency=440:duration=1", "-shortest", "-c:v", "libx264", "-c:a", "aac", str(clip))
    code, _, err = run_cli(capsys, "eval", "--audio", str(clip), "--video", str(clip))
    assert_one_line_error(code, err, "no face")
    with pytest.raises(TalkgsError, match="no face"):
        lipsync_metrics(clip)
