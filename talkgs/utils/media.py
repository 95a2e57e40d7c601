"""Video and audio I/O through the ffmpeg binary that imageio-ffmpeg ships.

Frames are streamed one at a time through pipes, so no function here ever holds a whole video.
ffmpeg does the decoding, the auto-rotation (display-matrix metadata), the resampling of any
(variable) frame rate to a constant one, and the crop and resize.
"""

from __future__ import annotations

import logging
import os
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talkgs.errors import TalkgsError

# imageio-ffmpeg warns whenever a filter changes the frame size, which every crop does.
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


#: Sample rate of every audio talkgs stores and encodes: the subject's audio.wav, the audio encoders
#: (pocketsphinx's en-us model, HuBERT and wav2vec2 are all 16 kHz) and the speech ``talkgs render`` reads.
SAMPLE_RATE = 16000


def to_uint8(image) -> np.ndarray:
    """A float image tensor in [0, 1] (any device; [H, W, 3] or [H, W]) as a uint8 numpy frame, clamped
    and rounded."""
    return (image.clamp(0, 1).detach().cpu().numpy() * 255).round().astype(np.uint8)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg says about a video file, after auto-rotation."""

    path: str
    width: int  # displayed width, rotation applied
    height: int
    fps: float  # nominal (average) rate; the actual rate may vary
    duration: float  # seconds
    has_audio: bool
    codec: str


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's header. Raises TalkgsError for a missing file or one that is not a video."""
    import imageio_ffmpeg

    path = str(path)
    if not os.path.exists(path):
        raise TalkgsError(f"no such file: {path}")
    if os.path.isdir(path):
        raise TalkgsError(f"{path} is a folder, not a video file")
    try:
        gen = imageio_ffmpeg.read_frames(path)
        meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, StopIteration, AttributeError, ValueError):
        raise TalkgsError(f"{path} is not a video ffmpeg can read") from None
    w, h = meta.get("size", (0, 0))
    duration = float(meta.get("duration") or 0.0)
    if w <= 0 or h <= 0:
        raise TalkgsError(f"{path} has no video stream")
    return VideoInfo(
        path=path,
        width=int(w),
        height=int(h),
        fps=float(meta.get("fps") or 0.0),
        duration=duration,
        has_audio="audio_codec" in meta,
        codec=str(meta.get("codec", "")),
    )


def read_frames(
    path: str | os.PathLike,
    size: tuple[int, int],
    fps: float | None = None,
    filters: str = "",
    start_frame: int = 0,
) -> Iterator[np.ndarray]:
    """Yield frames as uint8 [H, W, 3] RGB.

    With ``fps`` set, any (variable) frame rate is resampled to that constant rate, and
    ``fps=F:start_time=0`` pins frame 0 to the file's time origin (the earliest stream), the same
    origin ``read_audio`` uses, so audio and video line up even when one stream starts late.
    Without it the file's own frames are returned (for constant-rate files written by talkgs).

    Args:
        size: (width, height) of the frames after ``filters``; checked against ffmpeg's own answer.
        filters: an ffmpeg filter chain applied after the frame-rate conversion (crop, scale, ...).
        start_frame: first frame to return, for constant-rate files (``fps`` must be None); the
            seek is frame-accurate.
    """
    return _read(path, size, "rgb24", fps, filters, start_frame)


def read_labels(path: str | os.PathLike, size: tuple[int, int], start_frame: int = 0) -> Iterator[np.ndarray]:
    """Yield the uint8 [H, W] label maps of a ``VideoWriter(kind="labels")`` file, losslessly."""
    return _read(path, size, "gray", None, "", start_frame)


def _read(path, size, pix_fmt: str, fps: float | None, filters: str, start_frame: int) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    chain = [f"fps={fps}:start_time=0"] if fps else []
    chain += [filters] if filters else []
    output = ["-map", "0:v:0"] + (["-vf", ",".join(chain)] if chain else [])
    inputs = []
    if start_frame:
        if fps:
            raise ValueError("start_frame needs a constant-rate file read without fps resampling")
        rate = probe_video(path).fps
        # Half a frame early: frame k has pts k / rate exactly, which float rounding could overshoot.
        inputs = ["-ss", f"{(start_frame - 0.5) / rate:.6f}"]
    channels = 3 if pix_fmt == "rgb24" else 1
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt=pix_fmt, bits_per_pixel=8 * channels, input_params=inputs,
                                     output_params=output)
    shape = (size[1], size[0], 3) if channels == 3 else (size[1], size[0])
    try:
        meta = next(gen)
        if tuple(meta["size"]) != tuple(size):
            raise RuntimeError(f"ffmpeg gives frames of {meta['size']}, expected {size}")
        for buf in gen:
            yield np.frombuffer(buf, np.uint8).reshape(shape)
    except (RuntimeError, OSError) as e:
        raise TalkgsError(f"could not decode {path}: {str(e).splitlines()[0]}") from None
    finally:
        gen.close()


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """Decode the first audio stream to float32 mono [S] at ``sample_rate``; None if there is none.

    ``aresample=async=1:first_pts=0`` pads silence before an audio stream that starts after the
    file's time origin, so sample 0 is time 0, like frame 0 of ``read_frames``.
    """
    cmd = [
        ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
        "-af", "aresample=async=1:first_pts=0", "-ac", "1", "-ar", str(sample_rate),
        "-f", "s16le", "-acodec", "pcm_s16le", "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        if "matches no streams" in err or "does not contain any stream" in err:
            return None
        first = err.strip().splitlines()[-1] if err.strip() else "unknown ffmpeg error"
        raise TalkgsError(f"could not decode the audio of {path}: {first}")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write float mono samples in [-1, 1] as 16-bit PCM."""
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM mono wav written by ``write_wav``: (float32 [S], sample_rate)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise TalkgsError(f"{path}: expected 16-bit mono PCM")
        sr = f.getframerate()
        data = np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768.0
    return data, sr


class VideoWriter:
    """Stream uint8 frames into an ffmpeg encoder.

    Two uses in talkgs: ``rgb`` (H.264 at a given CRF, 4:4:4 chroma so lip edges keep their
    colour) and ``labels`` (one-channel FFV1, lossless, for label maps).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        size: tuple[int, int],
        fps: float,
        kind: str = "rgb",
        crf: int = 12,
        preset: str = "medium",
        pix_fmt: str = "yuv444p",
    ):
        import imageio_ffmpeg

        self.path = Path(path)
        self.size = tuple(size)
        if kind == "rgb":
            pix_in, codec, pix_out = "rgb24", "libx264", pix_fmt
            params = ["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"]
        elif kind == "labels":
            pix_in, codec, pix_out = "gray", "ffv1", "gray"
            params = ["-level", "3", "-g", "1"]
        else:
            raise ValueError(f"unknown writer kind {kind!r}")
        self.channels = 3 if kind == "rgb" else 1
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path), self.size, pix_fmt_in=pix_in, pix_fmt_out=pix_out, fps=fps, quality=None,
            codec=codec, macro_block_size=1, output_params=params, ffmpeg_log_level="error",
        )
        self._gen.send(None)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        w, h = self.size
        expected = (h, w, 3) if self.channels == 3 else (h, w)
        if frame.shape != expected or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {expected}, got {frame.dtype} {frame.shape}")
        self._gen.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mux_audio(video: str | os.PathLike, audio: str | os.PathLike, out: str | os.PathLike, start_s: float = 0.0) -> None:
    """Copy ``video``'s stream into ``out`` with ``audio`` from ``start_s`` on, encoded as AAC and cut
    to the video's length."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(video), "-ss", f"{start_s:.6f}", "-i", str(audio),
           "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", str(out)]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise TalkgsError(f"could not mux audio into {out}: {err[-1] if err else 'ffmpeg failed'}")
