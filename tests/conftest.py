"""Shared fixtures: the bundled demo clip, the real footage in ../shared/data, small derived clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from talkgs.prepare.config import PrepareConfig
from talkgs.utils.config import load_section
from talkgs.utils.media import ffmpeg_exe

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "obama2010_pd_en_20s_256.mp4"
SHARED = ROOT.parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"needs the real footage ../shared/data/{rel}, absent in this checkout")
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True)


def stream_in_chunks(stream, samples, chunk: int) -> list:
    """Every frame a ``TalkingRenderer.stream()`` returns for ``samples`` pushed ``chunk`` at a time, then closed."""
    frames = []
    for pos in range(0, len(samples), chunk):
        frames += stream.push(samples[pos:pos + chunk])
    return frames + stream.close()


def mean_abs_diffs(a: list, b: list):
    """[T] mean absolute difference (levels of 255) of two equally long lists of uint8 frames."""
    import numpy as np

    return np.array([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b)])


def tiny_config(**prepare_overrides) -> PrepareConfig:
    from talkgs.utils.config import merge

    return merge(load_section(PrepareConfig, "tiny", "prepare"), prepare_overrides)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def speech(clip_dir) -> Path:
    """3.3 s of the demo's speech as 44.1 kHz stereo MP3 (not the subject's 16 kHz mono WAV): what a user gives."""
    path = clip_dir / "speech.mp3"
    if not path.exists():
        ffmpeg("-ss", "5", "-t", "3.3", "-i", str(DEMO), "-vn", "-ac", "2", "-ar", "44100", str(path))
    return path


@pytest.fixture(scope="session")
def pcm(speech) -> bytes:
    """``speech`` as a live client sends it: 16-bit little-endian mono PCM at 16 kHz."""
    import numpy as np

    from talkgs.utils import media

    return (np.clip(media.read_audio(speech, 16000), -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="session")
def demo_subject(tmp_path_factory) -> tuple[Path, dict]:
    """The demo clip prepared once with the tiny preset (128 px) and a preview."""
    from talkgs.prepare.pipeline import prepare

    out = tmp_path_factory.mktemp("subjects") / "demo"
    report = prepare(DEMO, out, tiny_config(preview=True))
    return out, report


@pytest.fixture(scope="session")
def fitted(demo_subject, tmp_path_factory) -> tuple[Path, dict]:
    """The demo subject fitted with the tiny preset, every stage (shared by the fit, render and viewer tests)."""
    import shutil

    from talkgs.train.config import FitConfig
    from talkgs.train.trainer import Trainer

    root = tmp_path_factory.mktemp("fitted") / "demo"
    shutil.copytree(demo_subject[0], root, ignore=shutil.ignore_patterns("preview", "fit"))
    report = Trainer(root, load_section(FitConfig, "tiny", "fit")).run()
    return root, report


@pytest.fixture(scope="session")
def fitted_direct(demo_subject, tmp_path_factory) -> tuple[Path, dict]:
    """The demo subject fitted with the tiny preset on TalkingGaussian's direct path (audio nets on log-mel)."""
    import shutil

    from talkgs.train.config import FitConfig
    from talkgs.train.trainer import Trainer
    from talkgs.utils.config import merge

    root = tmp_path_factory.mktemp("fitted_direct") / "demo"
    shutil.copytree(demo_subject[0], root, ignore=shutil.ignore_patterns("preview", "fit"))
    cfg = merge(load_section(FitConfig, "tiny", "fit"), {"head": {"drive": "audio", "audio_encoders": ["mel"]}})
    return root, Trainer(root, cfg).run()


@pytest.fixture(scope="session")
def wide_subject(tmp_path_factory) -> tuple[Path, dict]:
    """The wide 960x540 shot (not square) prepared with the tiny preset."""
    from talkgs.prepare.pipeline import prepare

    video = shared_file("video/obama_pd_8s_960x540.mp4")
    out = tmp_path_factory.mktemp("subjects") / "wide"
    return out, prepare(video, out, tiny_config())
