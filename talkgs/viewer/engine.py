"""What the viewer's server renders: clips of audio and the frame of a clip at an audio time.

``ViewerEngine`` is the server without HTTP: it loads the fitted model once, holds the audio clips
(the subject's own held-out audio and uploads) and renders ``FrameRequest``s to JPEG. The HTTP
handler (``server.py``) and the benchmark (``tools/bench_viewer.py``) both call ``render``.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from talkgs.errors import TalkgsError
from talkgs.utils import media
from talkgs.utils.camera import scale_intrinsics
from talkgs.utils.threads import FairSlots
from talkgs.viewer.camera import Orbit, orbit_viewmat, project
from talkgs.viewer.config import BLINK_MODES, ViewerConfig

#: Sample rate of every clip (what the audio encoders and ``read_speech`` use).
SAMPLE_RATE = media.SAMPLE_RATE
#: Id of the subject's own held-out audio.
OWN_CLIP = "own"
LAYER_NAMES = ("face", "mouth", "torso", "background")
#: Colours (RGB) of the Gaussian centres overlay: face and mouth-interior branches.
CENTRE_COLOURS = {"face": (60, 255, 60), "mouth": (255, 60, 255)}
#: Deformed frames kept (``ViewerEngine._deformed``) beyond the batch being played: a few paused tabs.
DEFORM_CACHE = 4
#: Smallest side of a frame with the centres drawn (see ``ViewerEngine.draw_centres``).
CENTRES_MIN_SIZE = 256


@dataclass
class Clip:
    """Audio the head can speak, with its features and the WAV bytes the page plays."""

    id: str
    name: str
    samples: np.ndarray  # [S] float32 mono at SAMPLE_RATE
    features: object  # torch.Tensor [F, 2, D] on the render device; frame i of the clip is row i
    wav: bytes = field(repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def info(self) -> dict:
        return {"id": self.id, "name": self.name, "duration": round(self.duration, 3), "frames": self.num_frames}


@dataclass
class FrameRequest:
    """One frame the page asks for (the query of GET /frame)."""

    clip: str = OWN_CLIP
    t: float = 0.0
    """Audio time in seconds; the frame shown is floor(t * fps), clamped to the clip."""
    orbit: Orbit = field(default_factory=Orbit)
    scale: float = 1.0
    """Fraction of the viewer's full resolution (the page lowers it while the camera moves)."""
    layers: tuple[str, ...] = LAYER_NAMES
    centres: bool = False
    """Draw the Gaussian centres over the picture."""
    blink: str = "natural"

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> FrameRequest:
        """A request from a parsed query string (``urllib.parse.parse_qs``); bad values raise TalkgsError."""
        get = lambda key, default: query.get(key, [default])[0]  # noqa: E731
        try:
            t, scale = float(get("t", "0")), float(get("scale", "1"))
        except ValueError:
            raise TalkgsError("t and scale must be numbers") from None
        if not (math.isfinite(t) and math.isfinite(scale)) or t < 0:
            raise TalkgsError("t must be a finite time >= 0 and scale finite")
        layers = tuple(name for name in get("layers", ",".join(LAYER_NAMES)).split(",") if name)
        unknown = [name for name in layers if name not in LAYER_NAMES]
        if unknown:
            raise TalkgsError(f"unknown layer {unknown[0]!r} (layers are {', '.join(LAYER_NAMES)})")
        blink = get("blink", "natural")
        if blink not in BLINK_MODES:
            raise TalkgsError(f"unknown blink mode {blink!r} (choose from {', '.join(BLINK_MODES)})")
        return cls(clip=get("clip", OWN_CLIP), t=t, orbit=Orbit.from_json(get("cam", "")),
                   scale=min(max(scale, 0.05), 1.0), layers=layers,
                   centres=get("centres", "0") in ("1", "true", "on"), blink=blink)


@dataclass
class RenderedFrame:
    """A rendered frame and what the page shows about it."""

    jpeg: bytes
    image: np.ndarray  # uint8 [S, S, 3] (enlarged when the centres are drawn)
    index: int  # frame of the clip
    size: int  # rendered side in pixels
    wait_ms: float  # time spent waiting for the render lock (other tabs' frames)
    render_ms: float  # time holding it


def pick_size(cfg: ViewerConfig, device: str, fit_resolution: int, layer_size: int) -> int:
    """Full viewer resolution: ``cfg.size``, else the fit's resolution on CPU and the size of the
    model's stored layers on a GPU."""
    if cfg.size is not None:
        return cfg.size
    return layer_size if device == "cuda" else fit_resolution


class ViewerEngine:
    """A fitted model, its clips and the frame renderer behind the viewer's HTTP server.

    Args:
        source: a fitted subject folder (its held-out audio becomes a clip) or a fitted model file;
            anything else raises TalkgsError.
        cfg: the viewer's options.
    """

    def __init__(self, source: str | Path, cfg: ViewerConfig | None = None):
        import torch

        from talkgs.data.frames import pick_device
        from talkgs.model.fitted import load_model
        from talkgs.render.driver import DriveConfig, TalkingRenderer

        self.cfg = cfg or ViewerConfig()
        device = pick_device(self.cfg.device).type
        model = load_model(source)  # a clear error for anything that is not a fitted subject or model
        size = pick_size(self.cfg, device, model.resolution, model.layer_size)
        # DriveConfig.size sets the torso/background resolution: the full viewer size, so lower
        # scales are downsampled from it.
        self.renderer = TalkingRenderer(model, DriveConfig(blink=self.cfg.blink, size=size), device)
        self.size = self.renderer.size
        self.fps = self.renderer.fps
        self.device = str(self.renderer.device)
        source = Path(source)
        self.subject_name = source.resolve().name if source.is_dir() else model.header.get("source", source.stem)
        self._torch = torch
        self._lock = FairSlots(1)  # one render at a time, in arrival order: the cores are shared, Track is stateful
        self._upload_lock = threading.Lock()  # one audio decode/encode at a time: bounds CPU and memory
        self._clips_lock = threading.Lock()
        self._tracks = {self.cfg.blink: self.renderer.track}
        self._deform_cache: OrderedDict[tuple, object] = OrderedDict()
        self._pivot = model.replay.pivot  # head centre, canonical space
        head = self.renderer.head
        self._centres = {name: getattr(head, name).params["means"].detach().cpu().numpy().astype(np.float64)
                         for name in CENTRE_COLOURS}  # [N, 3] canonical (undeformed) centres
        self.clips: OrderedDict[str, Clip] = OrderedDict()
        self._counter = 0
        own = self._own_clip(source) if source.is_dir() else None
        if own is not None:
            self.clips[own.id] = own

    # -- clips ---------------------------------------------------------------------------------------
    def _own_clip(self, subject_dir: Path) -> Clip | None:
        """The subject's held-out audio with its precomputed features, when the model sits in its
        subject folder and the subject has audio (None otherwise)."""
        import torch

        from talkgs.data.subject import Subject

        subject = Subject(subject_dir)
        r = self.renderer
        if not subject.meta["audio"].get("file") or not set(r.encoders) <= set(subject.audio_encoders):
            return None
        frames = subject.test_indices
        if len(frames) == 0:  # no held-out frames: all of the audio
            frames = np.arange(subject.num_frames)
        a, b = int(frames[0]), int(frames[-1]) + 1
        samples, sr = subject.audio()
        samples = samples[round(a / self.fps * sr):round(b / self.fps * sr)]
        feats = np.concatenate([np.asarray(subject.audio_features(e)[a:b], np.float32) for e in r.encoders], -1)
        return Clip(OWN_CLIP, f"{self.subject_name}: held-out audio (frames {a}-{b - 1})",
                    np.asarray(samples, np.float32), torch.tensor(feats, device=r.device), wav_bytes(samples, sr))

    def add_clip(self, name: str, samples: np.ndarray) -> Clip:
        """A new clip of float32 16 kHz mono ``samples``; its features are computed here."""
        r = self.renderer
        duration = len(samples) / SAMPLE_RATE
        if duration > self.cfg.max_audio_s:
            raise TalkgsError(f"{name} lasts {duration:.0f} s; the viewer takes at most "
                              f"{self.cfg.max_audio_s:.0f} s of audio")
        with self._upload_lock:
            n = r.num_frames(samples)
            features = r.encode(samples, n)
        with self._clips_lock:
            self._counter += 1
            clip = Clip(f"u{self._counter}", name, np.asarray(samples, np.float32), features,
                        wav_bytes(samples, SAMPLE_RATE))
            self.clips[clip.id] = clip
            uploads = [k for k in self.clips if k != OWN_CLIP]
            for k in uploads[:max(0, len(uploads) - self.cfg.max_clips)]:
                del self.clips[k]  # oldest first: an OrderedDict keeps insertion order
        return clip

    def upload(self, data: bytes, filename: str) -> Clip:
        """A clip from the bytes of an uploaded audio (or video) file, checked like ``talkgs render --audio``."""
        from talkgs.render.driver import read_speech

        name = Path(filename or "upload").name[:120] or "upload"
        limit = self.cfg.max_upload_mb * 1024 * 1024
        if len(data) > limit:
            raise TalkgsError(f"{name} is {len(data) / 2**20:.1f} MB; the viewer takes at most "
                              f"{self.cfg.max_upload_mb:g} MB")
        if not data:
            raise TalkgsError(f"{name} is empty")
        suffix = Path(name).suffix[:10] if Path(name).suffix.isascii() else ""
        fd, tmp = tempfile.mkstemp(prefix="talkgs-upload-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                with self._upload_lock:
                    samples = read_speech(tmp)
            except TalkgsError as e:
                # Decoding is the type check: whatever ffmpeg cannot read as audio is refused.
                raise TalkgsError(str(e).replace(tmp, name)) from None
        finally:
            os.unlink(tmp)
        return self.add_clip(name, samples)

    def clip(self, clip_id: str) -> Clip:
        with self._clips_lock:
            clip = self.clips.get(clip_id)
        if clip is None:
            raise TalkgsError(f"no clip {clip_id!r} (upload the audio again)")
        return clip

    # -- frames --------------------------------------------------------------------------------------
    def frame_size(self, scale: float) -> int:
        """Side in pixels of a frame at ``scale``: even, and at least 16 (the rasterizer's minimum)."""
        return max(16, int(round(self.size * scale / 2)) * 2)

    def _track(self, blink: str):
        """The track of blink mode ``blink`` (built on first use; call with the render lock held)."""
        track = self._tracks.get(blink)
        if track is None:
            import dataclasses

            from talkgs.render.driver import Track

            r = self.renderer
            track = Track(r.model, dataclasses.replace(r.cfg, blink=blink))
            self._tracks[blink] = track
        return track

    def _deformed(self, clip: Clip, index: int, blink: str):
        """The ``Deformation`` of ``clip``'s frame ``index`` (B = 1), cached (render lock held).

        The audio- and blink-driven deformation does not depend on the camera, and on a CPU it costs
        about as much as rasterizing: a paused tab whose camera is dragged reuses it, so only the
        rasterization is paid per frame. A miss deforms ``cfg.deform_ahead`` frames from ``index`` on in one
        batch, the frames a playing tab asks for next.
        """
        key = (clip.id, index, blink)
        hit = self._deform_cache.get(key)
        if hit is not None:
            self._deform_cache.move_to_end(key)
            return hit
        frames = np.arange(index, min(index + self.cfg.deform_ahead, clip.num_frames))
        batch = self.renderer.deform(clip.features, frames, track=self._track(blink))
        for b, i in enumerate(frames):
            self._deform_cache[(clip.id, int(i), blink)] = batch.frame(b)
        self._deform_cache.move_to_end(key)
        while len(self._deform_cache) > DEFORM_CACHE + self.cfg.deform_ahead:
            self._deform_cache.popitem(last=False)
        return self._deform_cache[key]

    def render_image(self, req: FrameRequest) -> tuple[np.ndarray, int, float, float]:
        """(uint8 [S, S, 3] frame, clip frame index, wait ms, render ms) of ``req``."""
        from talkgs.render.driver import Layers

        clip = self.clip(req.clip)
        index = min(max(int(math.floor(req.t * self.fps + 1e-6)), 0), clip.num_frames - 1)
        size = self.frame_size(req.scale)
        layers = Layers(**{name: name in req.layers for name in LAYER_NAMES})
        torch, r = self._torch, self.renderer
        t0 = time.perf_counter()
        with self._lock, torch.no_grad():
            t1 = time.perf_counter()
            track = self._track(req.blink)
            w2c = track.pose(index)[0]
            viewmat = orbit_viewmat(w2c, self._pivot, req.orbit)
            view = torch.tensor(viewmat, dtype=torch.float32, device=r.device)
            image = r.draw(self._deformed(clip, index, req.blink), [index], layers, view[None], size, track)[0]
            t2 = time.perf_counter()
        if req.centres:
            image = self.draw_centres(image, viewmat, req.layers)
        return image, index, 1000 * (t1 - t0), 1000 * (t2 - t1)

    def render(self, req: FrameRequest) -> RenderedFrame:
        """The JPEG of ``req`` (what GET /frame answers)."""
        import cv2

        image, index, wait_ms, render_ms = self.render_image(req)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode the frame as JPEG")
        return RenderedFrame(jpeg.tobytes(), image, index, self.frame_size(req.scale), wait_ms, render_ms)

    def draw_centres(self, image: np.ndarray, viewmat: np.ndarray, layers=LAYER_NAMES) -> np.ndarray:
        """``image`` with the canonical Gaussian centres of the face and mouth branches as dots.

        A frame smaller than ``CENTRES_MIN_SIZE`` is enlarged first: the page shows it at 512 px, and
        one-pixel dots on a 64 px frame would become 8 px blocks that hide the face.
        """
        import cv2

        k = max(1, math.ceil(CENTRES_MIN_SIZE / image.shape[0]))
        out = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR) if k > 1 else image.copy()
        size = out.shape[0]
        K = scale_intrinsics(self.renderer.K.detach().cpu().numpy().astype(np.float64), size / self.size)
        # Mouth last: its few centres sit inside the face's and would be hidden under them.
        for name in ("face", "mouth"):
            if name not in layers:
                continue
            uv, front = project(self._centres[name], viewmat, K)
            px = np.floor(uv[front]).astype(np.int64)
            inside = (px >= 0).all(1) & (px < size).all(1)
            px = px[inside]
            out[px[:, 1], px[:, 0]] = CENTRE_COLOURS[name]  # one pixel each: thousands of dots, no Python loop
        return out

    def info(self) -> dict:
        """What the page needs to know (GET /info)."""
        K = self.renderer.K.detach().cpu().numpy()
        with self._clips_lock:
            clips = [c.info() for c in self.clips.values()]
        return {"subject": self.subject_name, "fps": self.fps, "size": self.size, "device": self.device,
                "focal": float(K[0, 0]) / self.size, "blink": self.cfg.blink, "blink_modes": list(BLINK_MODES),
                "layers": list(LAYER_NAMES), "moving_scale": self.cfg.moving_scale,
                "max_upload_mb": self.cfg.max_upload_mb, "clips": clips,
                "gaussians": {name: len(v) for name, v in self._centres.items()}}


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV of float ``samples`` (what the page's <audio> element plays)."""
    import wave

    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return buf.getvalue()
