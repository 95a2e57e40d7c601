"""One live session: PCM16 speech chunks in, encoded frames out (``LiveSession``), transport aside.

A session is ``TalkingRenderer.stream()`` with its options checked and its frames encoded: decoded, the PNG and
raw frames are the stream's frames bit for bit. The WebSocket protocol around it is in ``talkgs.serve.app``.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass

import numpy as np

from talkgs.errors import TalkgsError
from talkgs.serve.config import FRAME_FORMATS, ServeConfig

#: Each binary frame message starts with the frame's index (uint32) and its audio time in seconds (float64),
#: little-endian; the encoded image follows.
FRAME_HEADER = struct.Struct("<Id")
#: Speech a session takes: 16-bit little-endian mono PCM at this rate.
SAMPLE_RATE = 16000


class TooLarge(TalkgsError):
    """Speech past a limit of the server: a chunk, a session or an upload."""


#: Drive options a client may set, with their types; paths (pose files, background images) are not among them:
#: a remote client names nothing on the server's disk.
SESSION_OPTIONS = {"size": int, "pose": str, "static_frame": int, "yaw": float, "pitch": float, "blink": str,
                   "background": str, "seed": int}


@dataclass
class SessionOptions:
    """What a client asks for when it opens a session (or a job): a model, drive options and a frame format."""

    model: str
    drive: dict
    format: str = "jpeg"
    lookahead_s: float | None = None

    @classmethod
    def parse(cls, data: dict) -> SessionOptions:
        """Options from a client's JSON object (a session's first message) or a job's query; one line if bad."""
        if not isinstance(data, dict):
            raise TalkgsError("a session opens with a JSON object, e.g. {\"model\": \"anna\", \"format\": \"jpeg\"}")
        data = dict(data)
        model = data.pop("model", None)
        if not isinstance(model, str) or not model:
            raise TalkgsError("name the model: {\"model\": NAME} (GET /models lists them)")
        fmt = data.pop("format", "jpeg")
        if fmt not in FRAME_FORMATS:
            raise TalkgsError(f"unknown frame format {fmt!r} (choose from {', '.join(FRAME_FORMATS)})")
        lookahead = data.pop("lookahead_s", None)
        drive = {}
        for key, value in data.items():
            kind = SESSION_OPTIONS.get(key)
            if kind is None:
                raise TalkgsError(f"unknown option {key!r} (options: model, format, lookahead_s, "
                                  f"{', '.join(SESSION_OPTIONS)})")
            try:
                if isinstance(value, (bool, dict, list)) or value is None:
                    raise TypeError
                drive[key] = kind(value)
            except (TypeError, ValueError):
                raise TalkgsError(f"option {key} must be {kind.__name__}, got {value!r}") from None
        if drive.get("pose", "replay") not in ("replay", "static"):
            raise TalkgsError("a served model's pose is 'replay' or 'static' (pose files are for talkgs render)")
        try:
            lookahead = None if lookahead is None else float(lookahead)
        except (TypeError, ValueError):
            raise TalkgsError(f"lookahead_s must be a number of seconds, got {lookahead!r}") from None
        return cls(model=model, drive=drive, format=fmt, lookahead_s=lookahead)

    def drive_config(self):
        """The ``DriveConfig`` of these options; a background must be 'original' or a colour, not a file."""
        from talkgs.render.driver import DriveConfig, parse_colour

        # A colour or the plate: anything else would be read as an image path, which a remote client must not name.
        background = self.drive.get("background", "original")
        if background != "original" and parse_colour(background) is None:
            raise TalkgsError(f"background {background!r} is not 'original' or a colour (white, #00ff00, 0,255,0)")
        return DriveConfig(**self.drive)


def _check_pcm16(data: bytes) -> None:
    if len(data) % 2:
        raise TalkgsError(f"a speech chunk must be 16-bit PCM: {len(data)} bytes is an odd count")


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Float32 samples in [-1, 1) of 16-bit little-endian PCM bytes."""
    _check_pcm16(data)
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


class LiveSession:
    """A model's renderer streaming one client's speech (``TalkingRenderer.stream``).

    ``push`` and ``close`` return (index, frame) pairs in order; ``encode`` makes a frame message of one. Not
    thread-safe: the server calls one session from one render at a time.
    """

    def __init__(self, model, options: SessionOptions, cfg: ServeConfig, device: str | None = None):
        from talkgs.render.driver import TalkingRenderer

        self.options = options
        self.cfg = cfg
        self.renderer = TalkingRenderer(model, options.drive_config(), device)
        self.stream = self.renderer.stream(lookahead_s=options.lookahead_s)
        self.fps = self.renderer.fps
        self.samples = 0  # received so far
        self.started: float | None = None  # when the first speech arrived (perf_counter)

    @property
    def frames(self) -> int:
        """Frames accounted for so far: returned or skipped."""
        return self.stream.next_frame

    @property
    def skipped(self) -> int:
        return self.stream.skipped

    def info(self) -> dict:
        """The session's ``ready`` message."""
        return {"type": "ready", "model": self.options.model, "fps": self.fps, "size": self.renderer.size,
                "format": self.options.format, "sample_rate": SAMPLE_RATE,
                "latency_ms": round(self.stream.latency_ms, 1), "header": "<Id: frame index, audio time (s)"}

    def _late_before(self, now: float) -> int:
        """Frames before this one are due on screen more than ``late_after_s`` ago: rendering them would only delay
        the frames that can still be on time (``ServeConfig.late_frames``)."""
        if self.cfg.late_frames == "keep" or self.started is None:
            return 0
        behind = now - self.started - self.stream.latency_ms / 1000.0 - self.cfg.late_after_s
        return max(0, math.floor(behind * self.fps))

    def check_chunk(self, pcm: bytes) -> None:
        """One client message of speech: 16-bit samples, at most ``max_chunk_s`` of them."""
        _check_pcm16(pcm)
        if len(pcm) // 2 > self.cfg.max_chunk_s * SAMPLE_RATE:
            raise TooLarge(f"a chunk of {len(pcm) / 2 / SAMPLE_RATE:.1f} s is longer than the "
                           f"{self.cfg.max_chunk_s:g} s this server takes at once")

    def push(self, pcm: bytes, now: float | None = None) -> list[tuple[int, np.ndarray]]:
        """The (index, frame) pairs PCM16 speech completes (one chunk or several joined); ``now`` (perf_counter):
        the time that decides which frames are too late (``ServeConfig.late_frames``), by default the present."""
        samples = pcm16_to_float(pcm)
        if self.samples + len(samples) > self.cfg.max_session_s * SAMPLE_RATE:
            raise TooLarge(f"the session passed {self.cfg.max_session_s:g} s of speech, this server's limit")
        now = time.perf_counter() if now is None else now
        if self.started is None and len(samples):
            self.started = now
        self.samples += len(samples)
        return self._number(self.stream.push(samples, skip_before=self._late_before(now)))

    def close(self, now: float | None = None) -> list[tuple[int, np.ndarray]]:
        """The frames still owed once the speech has ended (none if no speech came)."""
        if self.samples == 0:
            return []
        now = time.perf_counter() if now is None else now
        return self._number(self.stream.close(skip_before=self._late_before(now)))

    def _number(self, frames: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
        return list(enumerate(frames, self.stream.next_frame - len(frames)))

    def encode(self, index: int, frame: np.ndarray) -> bytes:
        """A frame message: ``FRAME_HEADER`` then the image in the session's format."""
        import cv2

        head = FRAME_HEADER.pack(index, index / self.fps)
        fmt = self.options.format
        if fmt == "raw":
            return head + np.ascontiguousarray(frame).tobytes()
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality] if fmt == "jpeg" else \
            [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {fmt} frame")
        return head + data.tobytes()

    def release(self) -> None:
        self.renderer.close()


def warm_up(model, device: str | None = None) -> None:
    """Stream a moment of silence through ``model`` once: the audio encoders' weights, the compiled kernels and the
    lazy imports load now, when the model is loaded, not in the first client's session."""
    from talkgs.render.driver import TalkingRenderer

    renderer = TalkingRenderer(model, device=device)
    try:
        stream = renderer.stream()
        stream.push(np.zeros(SAMPLE_RATE // 2, np.float32))
        stream.close()
    finally:
        renderer.close()


def decode_frame(message: bytes, fmt: str, size: int) -> tuple[int, float, np.ndarray]:
    """(index, audio time, uint8 [S, S, 3] RGB) of a frame message: what a Python client does with one."""
    import cv2

    index, t = FRAME_HEADER.unpack_from(message)
    body = message[FRAME_HEADER.size:]
    if fmt == "raw":
        return index, t, np.frombuffer(body, np.uint8).reshape(size, size, 3)
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    return index, t, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
