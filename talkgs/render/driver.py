"""Drive a fitted head with any speech: audio -> features -> per-frame pose, blink and torso -> frames.

``TalkingRenderer`` loads a fitted model (``talkgs.model.fitted``: the one file ``talkgs fit`` writes)
and turns audio into frames through the head's one forward pass (``talkgs.render.forward``), offline
(``frames``) or as a stream (``stream``): audio chunks in, finished frames out. Both call the same
per-frame code, so a stream gives the offline frames (exactly with the ``mel`` encoder; see
``AudioStream`` for the others).

What drives frame i besides the audio (``Track``):

- the head pose: the training track played forward and backward (``replay``), one held frame
  (``static``), or a poses file; then an optional free-view rotation about the head centre;
- the torso and neck: those of the training frame whose pose is used, so they move with the head;
- the blink signal: replayed with the pose (``natural``), eyes held open (``none``), or synthetic
  blinks at a natural rate (``auto``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from talkgs.audio.config import AudioConfig
from talkgs.data.frames import pick_device
from talkgs.errors import TalkgsError
from talkgs.model.fitted import FittedModel, load_model
from talkgs.model.talking_head import Deformation
from talkgs.render.forward import draw
from talkgs.utils import media
from talkgs.utils.camera import scale_intrinsics
from talkgs.utils.threads import CORES

POSE_MODES = ("replay", "static")
BLINK_MODES = ("natural", "none", "auto")


@dataclass
class DriveConfig:
    """How a fitted head is driven and drawn (``talkgs render`` options)."""

    pose: str = "replay"
    """"replay": the longest cut-free run of training poses, played forward then backward, so it never
    jumps; "static": hold ``static_frame``; or a path to a poses file (.npy [T, 4, 4] world-to-camera, or
    .npz with such a ``w2c`` array), in the subject's canonical head space; it is replayed the same way."""
    static_frame: int | None = None
    """Frame held by ``pose: static``; None: the middle of the replay run."""
    yaw: float = 0.0
    """Free view: degrees about the head's vertical axis (canonical y), turning the head in place."""
    pitch: float = 0.0
    """Free view: degrees about the head's left-right axis (canonical x)."""
    blink: str = "natural"
    """"natural" (the training track, replayed with the pose), "none" (eyes open) or "auto"."""
    blink_per_minute: float = 17.0
    """``blink: auto``: mean blink rate (adults blink about 15-20 times a minute while talking)."""
    blink_duration_s: float = 0.25
    """``blink: auto``: duration of one blink, closing and opening."""
    blink_min_gap_s: float = 1.0
    """``blink: auto``: the shortest time between two blinks."""
    background: str = "original"
    """"original" (the subject's background plate), a colour ("white", "#00ff00", "0,255,0") or an image."""
    size: int | None = None
    """Output side in pixels; None: the fit's training resolution (what the head was optimised for)."""
    batch: int = 8
    """Frames whose audio embeddings and deformations are computed together (the GPU's batch)."""
    seed: int = 0
    """Seed of the synthetic blinks."""

    def __post_init__(self) -> None:
        if self.blink not in BLINK_MODES:
            raise TalkgsError(f"unknown blink mode {self.blink!r} (choose from {', '.join(BLINK_MODES)})")
        if self.size is not None and not 16 <= self.size <= 4096:
            raise TalkgsError(f"size must be between 16 and 4096 pixels, got {self.size}")
        if self.batch < 1:
            raise TalkgsError(f"batch must be at least 1, got {self.batch}")
        if not self.blink_per_minute > 0 or not self.blink_duration_s > 0 or self.blink_min_gap_s < 0:
            raise TalkgsError("blink_per_minute and blink_duration_s must be positive, blink_min_gap_s >= 0")


@dataclass
class Layers:
    """What is drawn (the viewer's layer switches); everything by default."""

    face: bool = True
    mouth: bool = True
    torso: bool = True
    background: bool = True


_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "green": (0, 255, 0), "blue": (0, 0, 255),
            "grey": (128, 128, 128), "gray": (128, 128, 128)}


def parse_colour(spec: str) -> tuple[int, int, int] | None:
    """The RGB of a colour spec ("white", "#00ff00", "0,255,0"), or None when ``spec`` is not one."""
    spec = spec.strip()
    if spec.lower() in _COLOURS:
        return _COLOURS[spec.lower()]
    try:
        if spec.startswith("#") and len(spec) == 7:
            return tuple(int(spec[i:i + 2], 16) for i in (1, 3, 5))
        if spec.count(",") == 2:
            rgb = tuple(int(v) for v in spec.split(","))
            return rgb if all(0 <= v <= 255 for v in rgb) else None
    except ValueError:
        return None
    return None


def parse_background(spec: str, size: int, plate: np.ndarray) -> np.ndarray:
    """[size, size, 3] uint8 of a ``DriveConfig.background`` value; ``plate`` is the subject's own."""
    spec = spec.strip()
    if spec == "original":
        return cv2.resize(plate, (size, size), interpolation=cv2.INTER_AREA)
    rgb = parse_colour(spec)
    if rgb is not None:
        return np.broadcast_to(np.array(rgb, np.uint8), (size, size, 3)).copy()
    path = Path(spec)
    if not path.is_file():
        raise TalkgsError(f"background {spec!r} is not 'original', a colour (white, #00ff00, 0,255,0) or an image file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TalkgsError(f"background {path} is not an image that OpenCV can read")
    h, w = image.shape[:2]
    side = min(h, w)  # centre square crop, as prepare crops the video
    image = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return cv2.cvtColor(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def ping_pong(i: int, n: int) -> int:
    """Position in 0..n-1 of step i when walking forward and backward over n items."""
    if n == 1:
        return 0
    period = 2 * n - 2
    p = i % period
    return p if p < n else period - p


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return ry @ rx


def load_poses(path: str | Path) -> np.ndarray:
    """[T, 4, 4] world-to-camera matrices of a poses file (.npy, or .npz with ``w2c``)."""
    path = Path(path)
    if not path.is_file():
        raise TalkgsError(f"pose file {path} does not exist (or use --pose replay / static)")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise TalkgsError(f"unknown pose file format {path.suffix or path.name!r}: expected .npy with [T, 4, 4] "
                          "world-to-camera matrices, or .npz with a 'w2c' array")
    try:
        data = np.load(path, allow_pickle=False)
        poses = data["w2c"] if path.suffix.lower() == ".npz" else data
    except (ValueError, KeyError, OSError) as e:
        raise TalkgsError(f"cannot read poses from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                          ) from None
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) == 0 or not np.isfinite(poses).all():
        raise TalkgsError(f"{path}: poses must be a finite [T, 4, 4] array, got shape {poses.shape}")
    return poses


class Track:
    """Per-frame pose, torso source frame and expression for any output frame index (unbounded)."""

    def __init__(self, model: FittedModel, cfg: DriveConfig):
        """Blink modes "none" and "auto" act on the blink channels of ``HeadConfig.expression`` and
        hold the others at their median."""
        self.cfg = cfg
        replay = model.replay
        run = model.torso_frames  # the replay run: the frames whose torso the model keeps
        w2c = replay.w2c
        if cfg.pose == "replay":
            self._poses, self._sources = w2c[run], run
            self._blink_frames = run
        elif cfg.pose == "static":
            frame = int(run[len(run) // 2]) if cfg.static_frame is None else int(cfg.static_frame)
            if not 0 <= frame < replay.num_frames:
                raise TalkgsError(f"static frame {frame} is outside the subject's 0..{replay.num_frames - 1}")
            self._poses = w2c[frame:frame + 1]
            # A frame outside the replay run takes the torso of the run frame whose pose is closest.
            self._sources = np.array([frame]) if frame in set(run.tolist()) else \
                self._nearest_frames(self._poses, w2c[run], run)
            self._blink_frames = np.array([frame])
        else:
            poses = load_poses(cfg.pose)
            self._poses = poses
            self._sources = self._nearest_frames(poses, w2c[run], run)
            self._blink_frames = self._sources
        pivot = replay.pivot
        r = _rotation(cfg.yaw, cfg.pitch)
        turn = np.eye(4)
        turn[:3, :3] = r
        turn[:3, 3] = pivot - r @ pivot  # rotate about the head centre, not the canonical origin
        self._turn = turn
        self._expression = replay.expression  # [F, E]
        self._open = replay.expression_open  # [E]
        self._closed = replay.expression_closed  # [E]
        channels = model.head.cfg.expression
        self._blink_mask = np.array([c.startswith("blink") for c in channels], np.float64) if channels else 1.0
        self._fps = model.fps
        self._blinks: list[float] = []  # synthetic blink start times (s), extended on demand
        self._rng = np.random.default_rng(cfg.seed)

    @staticmethod
    def _nearest_frames(poses: np.ndarray, train_poses: np.ndarray, run: np.ndarray) -> np.ndarray:
        """For each pose, the training frame whose pose is closest (its torso goes with it)."""
        scale = np.median(np.linalg.norm(train_poses[:, :3, 3], axis=-1))
        a = np.concatenate([poses[:, :3, :3].reshape(len(poses), -1), poses[:, :3, 3] / scale], 1)
        b = np.concatenate([train_poses[:, :3, :3].reshape(len(train_poses), -1), train_poses[:, :3, 3] / scale], 1)
        d = ((a[:, None] - b[None]) ** 2).sum(-1)
        return run[d.argmin(1)]

    def pose(self, i: int) -> tuple[np.ndarray, int]:
        """(world-to-camera [4, 4] with the free-view turn, torso source frame) of output frame i."""
        k = ping_pong(i, len(self._poses))
        return self._poses[k] @ self._turn, int(self._sources[k])

    def expression(self, i: int) -> np.ndarray:
        """[E] expression channels of output frame i for the blink mode."""
        mode = self.cfg.blink
        if mode == "natural":
            return self._expression[self._blink_frames[ping_pong(i, len(self._poses))]]
        if mode == "none":
            return self._open
        return self._open + (self._closed - self._open) * self._blink_mask * self._blink_amount(i / self._fps)

    def _blink_amount(self, t: float) -> float:
        """0 (open) .. 1 (closed) of the synthetic blinks at time t."""
        cfg = self.cfg
        mean_gap = 60.0 / cfg.blink_per_minute
        while not self._blinks or self._blinks[-1] < t + cfg.blink_duration_s:
            last = self._blinks[-1] if self._blinks else -self._rng.uniform(0, mean_gap)
            gap = cfg.blink_min_gap_s + self._rng.exponential(max(mean_gap - cfg.blink_min_gap_s, 1e-3))
            self._blinks.append(last + max(gap, cfg.blink_duration_s))
        for start in reversed(self._blinks):
            if start <= t:
                u = (t - start) / cfg.blink_duration_s
                return 0.5 - 0.5 * math.cos(2 * math.pi * u) if u < 1 else 0.0
        return 0.0


class TalkingRenderer:
    """A fitted model ready to speak any audio (``talkgs render``, the viewer, the streaming API).

    Args:
        source: a fitted subject folder, a fitted model file (fit/model.safetensors, alone anywhere), or a
            loaded ``FittedModel``.
        cfg: driving and drawing options.
        device: "cpu", "cuda" or None for the fit's own choice.
    """

    def __init__(self, source: str | Path | FittedModel, cfg: DriveConfig | None = None, device: str | None = None):
        from talkgs.utils.config import from_dict

        self.cfg = cfg if cfg is not None else DriveConfig()
        model = source if isinstance(source, FittedModel) else load_model(source)
        self.model = model
        self.device = pick_device(device or model.header["device"])
        self.head = model.head.to(self.device).eval()
        self.fps = model.fps
        self.backend = model.backend
        self.size = int(self.cfg.size or model.resolution)
        self.track = Track(model, self.cfg)
        #: [3, 3] intrinsics at ``size``
        self.K = torch.tensor(scale_intrinsics(model.K, self.size / model.layer_size), dtype=torch.float32,
                              device=self.device)
        background = parse_background(self.cfg.background, self.size, model.background())
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device) / 255.0  # [S, S, 3]
        self.encoders = model.encoders
        self.audio_cfg = from_dict(AudioConfig, model.audio_settings)
        #: Frames of audio after frame i that frame i's embedding reads (0 for a causal audio net).
        self.lookahead = self.head.right_context
        self._decoders: ThreadPoolExecutor | None = None  # decodes a batch's torso layers (``_under``)

    # -- audio ---------------------------------------------------------------------------------------
    def num_frames(self, samples: np.ndarray | int, sample_rate: int = media.SAMPLE_RATE) -> int:
        """Frames for ``samples`` (or that many samples): the audio's duration at the subject's fps,
        rounded to whole frames."""
        count = samples if isinstance(samples, int) else len(samples)
        return max(1, round(count / sample_rate * self.fps))

    def codes_from_video(self, video: str | Path, num_frames: int) -> torch.Tensor:
        """The mouth of another person's talking ``video`` as this subject's code track [num_frames, C]
        (``MouthBasis.transfer``); the last frame repeats if the video is shorter than its audio."""
        from talkgs.prepare.pipeline import track_face

        if self.head.cfg.drive != "code":
            raise TalkgsError("--drive needs a model fitted on the mouth-code path (head.drive: code); this one "
                              "was fitted on the direct audio path: drive it with --audio")
        canonical = track_face(video, self.fps)  # [T, 478, 3]
        codes = self.head.mouth_code.transfer(canonical)  # [T, C]
        idx = torch.arange(num_frames).clamp_max(len(codes) - 1)
        return codes[idx].to(self.device)

    def encode(self, samples: np.ndarray, num_frames: int | None = None) -> torch.Tensor:
        """Audio features [F, 2, D] of float32 16 kHz mono ``samples`` for the head's encoders."""
        from talkgs.audio.features import encode_audio

        n = num_frames or self.num_frames(samples)
        feats = [encode_audio(name, samples, n, self.fps, self.audio_cfg) for name in self.encoders]
        return torch.tensor(np.concatenate(feats, axis=-1), device=self.device)

    # -- frames --------------------------------------------------------------------------------------
    @torch.no_grad()
    def frames(self, features: torch.Tensor, start: int = 0, stop: int | None = None, layers: Layers | None = None):
        """Yield uint8 [S, S, 3] frames start..stop-1 for features [F, 2, D] (all of it by default)."""
        stop = features.shape[0] if stop is None else stop
        for a in range(start, stop, self.cfg.batch):
            yield from self.render_batch(features, np.arange(a, min(a + self.cfg.batch, stop)), layers)

    @torch.no_grad()
    def render_batch(self, features: torch.Tensor, indices: np.ndarray, layers: Layers | None = None,
                     viewmats: torch.Tensor | None = None, size: int | None = None,
                     feature_offset: int = 0) -> list[np.ndarray]:
        """Frames ``indices`` [B] (output frame numbers) as uint8 [S, S, 3].

        ``features`` [W, 2, D] hold the audio features of frames ``feature_offset`` .. + W - 1 (a
        stream keeps only a window). The B frames go through the forward pass together; ``viewmats``
        [B, 4, 4] (world-to-camera) replace the track's poses, e.g. for the viewer's orbiting camera,
        and ``size`` the output side.
        """
        return self.draw(self.deform(features, indices, feature_offset), indices, layers, viewmats, size)

    @torch.no_grad()
    def deform(self, features: torch.Tensor, indices: np.ndarray, feature_offset: int = 0,
               track: Track | None = None) -> Deformation:
        """Output frames ``indices`` [B]: ``TalkingHead.deform`` with the expression (blinks) of ``track``
        (default: the renderer's own, from ``cfg``).

        The audio- and blink-driven half of a frame: it does not depend on the camera, so a viewer
        can keep it while the camera moves.
        """
        if self.device.type == "cpu":
            CORES.update()  # a batch's threads: the cores other jobs leave free (talkgs.utils.threads)
        track = track or self.track
        idx = torch.as_tensor(np.asarray(indices) - feature_offset, device=self.device)
        expr = torch.tensor(np.stack([track.expression(int(i)) for i in indices]), dtype=torch.float32,
                            device=self.device)  # [B, E]
        draws = self.model.draws
        return self.head.deform(features, idx, expr, face_motion=draws["face_motion"],
                                mouth_motion=draws["mouth_motion"])

    @torch.no_grad()
    def draw(self, deformation: Deformation, indices: np.ndarray, layers: Layers | None = None,
             viewmats: torch.Tensor | None = None, size: int | None = None,
             track: Track | None = None) -> list[np.ndarray]:
        """uint8 [S, S, 3] frames of ``deformation`` (output frames ``indices`` [B]), through the poses of
        ``track`` (default: the renderer's own) or ``viewmats`` [B, 4, 4], over the torso of the training
        frame each pose comes from."""
        layers = layers or Layers()
        size = size or self.size
        poses = [(track or self.track).pose(int(i)) for i in indices]
        if viewmats is None:
            viewmats = torch.tensor(np.stack([w2c for w2c, _ in poses]), dtype=torch.float32, device=self.device)
        under = self._under([source for _, source in poses], layers, size)  # [B, S, S, 3]
        K = scale_intrinsics(self.K, size / self.size)
        out = draw(deformation, viewmats, K, under, face=layers.face, mouth=layers.mouth and self.model.draws["mouth"],
                   backend=self.backend)
        return [media.to_uint8(image) for image in out.image]

    def _under(self, sources: list[int], layers: Layers, size: int) -> torch.Tensor:
        """[B, S, S, 3] what lies under the head in each frame: its source frame's torso over the background."""
        background = self.background if layers.background else torch.zeros_like(self.background)
        if size != self.size:
            background = torch.nn.functional.interpolate(background.permute(2, 0, 1)[None], (size, size),
                                                         mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        if not layers.torso:
            return background.expand(len(sources), -1, -1, -1)

        def torso(source: int) -> np.ndarray:
            rgba = self.model.torso(source)  # premultiplied RGB, binary alpha, at the model's layer size
            if rgba.shape[0] != size:
                shrink = size < rgba.shape[0]
                rgba = cv2.resize(rgba, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            return rgba

        # The layers are PNGs: decoding one is CPU work (about 5 ms at 512 px) against a draw of 9 ms per
        # frame on an H200 (docs/gpu.md). OpenCV releases the GIL, so a batch decodes on threads.
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(max_workers=max(1, min(self.cfg.batch, os.cpu_count() or 1)),
                                                thread_name_prefix="talkgs-layers")
        rgba = np.stack(list(self._decoders.map(torso, sources)))  # [B, S, S, 4] uint8
        layer = torch.from_numpy(rgba).to(self.device).float() / 255.0
        # Premultiplied over: exactly the frame's pixels where the alpha is 1, the background where 0.
        return layer[..., :3] + (1 - layer[..., 3:]) * background

    def close(self) -> None:
        """Stop the layer decoders' threads (a server makes a renderer per session); the renderer stays usable."""
        if self._decoders is not None:
            self._decoders.shutdown(wait=False)
            self._decoders = None

    # -- streaming -----------------------------------------------------------------------------------
    def stream(self, layers: Layers | None = None, lookahead_s: float | None = None) -> AudioStream:
        """A stream that takes audio chunks and returns the frames they complete (see ``AudioStream``).
        ``lookahead_s``: audio the encoders wait for past a frame (``FeatureStream``; None: their own)."""
        return AudioStream(self, layers, lookahead_s)


class FeatureStream:
    """Audio chunks in, audio-feature frames out: the encoders' half of a stream (``AudioStream``).

    Feature frames are computed in blocks of ``BLOCK_FRAMES`` once the audio has reached ``lookahead_s``
    past a block. By default that is the encoders' own need (their ``CONTEXT_S``): 0.05 s for mel and cepstra,
    ``AudioConfig.whisper_stream_lookahead_s`` for Whisper, 1 s for the phone decoders, which decide a phone better
    the more of what follows they hear. Each block is computed from the same stretch of audio (``context_s``
    before it to ``lookahead_s`` after it) however the audio was chunked, so a stream's frames do not depend on
    how its audio arrived. A smaller ``lookahead_s`` is the low-latency mode of the encoders that
    decide over a stretch (``STRETCH_ENCODERS``): their features near the end of each stretch are decided with less
    of the following speech (what that costs: docs/lip_sync.md, Streaming). Audio older than the encoders' context
    (``CONTEXT_S``) before the first frame still to be computed is dropped, so memory stays flat however long the
    stream.
    """

    #: Sample rate of the audio fed to ``push`` (what ``media.read_audio`` gives).
    SAMPLE_RATE = media.SAMPLE_RATE
    #: Audio kept before the first feature frame still to be computed: context for the encoders (mel and cepstra
    #: need 12.5 ms, the phone decoders about a second; Whisper's is ``AudioConfig.whisper_stream_context_s``).
    CONTEXT_S = {"mel": 0.05, "cepstra": 0.05, "phonemes": 1.0, "visemes": 1.0}
    MODEL_CONTEXT_S = 1.5
    #: Encoders that decide over a stretch: any look-ahead works, less is less exact.
    STRETCH_ENCODERS = ("phonemes", "visemes", "whisper")
    #: Feature frames computed together: each encoder call costs a decode of the context.
    BLOCK_FRAMES = 4

    def __init__(self, encoders: tuple[str, ...], fps: float, audio_cfg: AudioConfig,
                 lookahead_s: float | None = None):
        from talkgs.audio.features import MEL_HOP_S, stream_state

        self.encoders, self.fps, self.audio_cfg = tuple(encoders), float(fps), audio_cfg
        self._hop = round(MEL_HOP_S * self.SAMPLE_RATE)
        context = {e: self.CONTEXT_S.get(e, self.MODEL_CONTEXT_S) for e in self.encoders}
        ahead = dict(context)  # the default look-ahead: the context, but for Whisper's
        if "whisper" in self.encoders:
            context["whisper"] = audio_cfg.whisper_stream_context_s
            ahead["whisper"] = audio_cfg.whisper_stream_lookahead_s
        self.context_s = max(context.values())
        #: The least look-ahead: what the encoders that do not decide over a stretch need to equal the offline
        #: features, and for stretch encoders alone one analysis window past the block (mel's need).
        others = [ahead[e] for e in self.encoders if e not in self.STRETCH_ENCODERS]
        self.min_lookahead_s = max(others, default=self.CONTEXT_S["mel"])
        if lookahead_s is not None and not self.min_lookahead_s <= lookahead_s <= self.context_s:
            raise TalkgsError(f"a stream's look-ahead must be between {self.min_lookahead_s:g} and "
                              f"{self.context_s:g} s for the encoders {', '.join(self.encoders)}; got {lookahead_s:g}")
        self.lookahead_s = max(ahead.values()) if lookahead_s is None else float(lookahead_s)
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0  # absolute sample of buffer[0], a multiple of the mel hop
        self.received = 0  # samples pushed so far
        self.features: list[np.ndarray] = []  # [2, D] per frame, frames start..
        self.start = 0
        self._keep_from = 0  # the first feature frame still needed (``drop_before``)
        self._states = {e: stream_state(e) for e in self.encoders}  # running normalisation (cepstra)

    @property
    def end(self) -> int:
        """One past the last feature frame computed."""
        return self.start + len(self.features)

    def push(self, samples: np.ndarray) -> None:
        """Add float32 16 kHz mono samples; compute the blocks of feature frames they complete."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        ready = int(math.floor((self.received / self.SAMPLE_RATE - self.lookahead_s) * self.fps))
        while ready - self.end >= self.BLOCK_FRAMES:
            self._compute(self.end, self.end + self.BLOCK_FRAMES)

    def finish(self, total: int) -> None:
        """End of audio: cut or zero-pad it to ``total`` frames' duration (as offline) and compute the rest."""
        length = round(total / self.fps * self.SAMPLE_RATE)
        pad = length - self.received
        if pad > 0:
            self.buffer = np.concatenate([self.buffer, np.zeros(pad, np.float32)])
        elif pad < 0:
            self.buffer = self.buffer[:len(self.buffer) + pad]
        while self.end < total:
            self._compute(self.end, min(self.end + self.BLOCK_FRAMES, total))

    def drop_before(self, frame: int) -> None:
        """Forget the feature frames before ``frame`` (and, from now on, the audio no later frame needs)."""
        self._keep_from = max(self._keep_from, frame)
        self._trim()

    def _trim(self) -> None:
        drop = max(0, self._keep_from - self.start)
        if drop:
            del self.features[:drop]
            self.start += drop
        first_needed = self.end / self.fps - self.context_s
        cut = int(first_needed * self.SAMPLE_RATE) // self._hop * self._hop - self.buffer_start
        if cut > 0:
            self.buffer = self.buffer[cut:]
            self.buffer_start += cut

    def _compute(self, lo: int, hi: int) -> None:
        """Feature frames lo..hi-1 (one block) from the audio ``context_s`` before lo to ``lookahead_s`` past hi:
        the same stretch however the audio was chunked, so a stream's features (and frames) do not depend on
        how its audio arrived."""
        from talkgs.audio.features import encode_span, feature_times

        times = feature_times(hi, self.fps)[lo:hi].reshape(-1)  # [2 (hi - lo)]
        hop = self._hop
        first = max(self.buffer_start, int((lo / self.fps - self.context_s) * self.SAMPLE_RATE) // hop * hop)
        last = math.ceil((hi / self.fps + self.lookahead_s) * self.SAMPLE_RATE)
        stretch = self.buffer[first - self.buffer_start:last - self.buffer_start]
        parts = [encode_span(e, stretch, first / self.SAMPLE_RATE, times, self.audio_cfg,
                             state=self._states[e]) for e in self.encoders]
        self.features.extend(np.concatenate(parts, -1).reshape(hi - lo, 2, -1))
        self._trim()


class AudioStream:
    """Audio chunks in, finished frames out, with bounded latency (``TalkingRenderer.stream``).

    Frame i is rendered once the audio has reached ``latency_frames`` frames past it: the audio net's
    right context (``TalkingHead.right_context``: 0 for a causal audio net, the speech model's window on
    the code path), the encoders' look-ahead (``FeatureStream``), and the block in which features are
    computed. Memory stays flat however long the stream.

    With the ``mel`` encoder the frames equal the offline render (``TalkingRenderer.frames``) of the
    same audio: features are computed on a hop-aligned stretch with enough context on both sides, and
    the audio net sees the same feature frames. ``phonemes`` and the model encoders decode a sliding
    stretch, so their phones near its ends, and the frames, can differ slightly. ``visemes`` offline
    come from word recognition and forced alignment over the whole clip, which a stream cannot wait
    for: a stream decodes phones alone (all-phone), so its mouth follows the same speech less exactly.
    """

    SAMPLE_RATE = FeatureStream.SAMPLE_RATE

    def __init__(self, renderer: TalkingRenderer, layers: Layers | None = None, lookahead_s: float | None = None):
        self.r = renderer
        self.layers = layers
        self.features = FeatureStream(renderer.encoders, renderer.fps, renderer.audio_cfg, lookahead_s)
        self._next_frame = 0
        self.skipped = 0  # frames passed over (``push``'s ``skip_before``)
        self._closed = False
        right = math.ceil(round(self.features.lookahead_s * renderer.fps, 6))
        #: Frames between a frame's own audio arriving and the frame being returned (worst case).
        self.latency_frames = renderer.lookahead + right + FeatureStream.BLOCK_FRAMES
        self.latency_ms = 1000.0 * self.latency_frames / renderer.fps

    @property
    def next_frame(self) -> int:
        """The index of the next frame ``push`` or ``close`` will return (frames are returned in order)."""
        return self._next_frame

    def push(self, samples: np.ndarray, skip_before: int = 0) -> list[np.ndarray]:
        """Add float32 16 kHz mono samples; return the frames (uint8 [S, S, 3]) that are now final.

        ``skip_before``: frames before it are not rendered (a live server skips frames already too late to show;
        ``skipped`` counts them), so the frames returned are the ``len(frames)`` just before ``next_frame``.
        """
        if self._closed:
            raise RuntimeError("push after close")
        self.features.push(samples)
        return self._render(have_until=self.features.end - self.r.lookahead, final_count=None, skip_before=skip_before)

    def close(self, skip_before: int = 0) -> list[np.ndarray]:
        """End of audio: the remaining frames, so that the stream has the offline render's frame count."""
        if self._closed:
            return []
        self._closed = True
        total = self.r.num_frames(self.features.received, self.SAMPLE_RATE)
        self.features.finish(total)
        return self._render(have_until=total, final_count=total, skip_before=skip_before)

    def _render(self, have_until: int, final_count: int | None, skip_before: int = 0) -> list[np.ndarray]:
        stop = have_until if final_count is None else final_count
        fs = self.features
        if stop <= self._next_frame or not fs.features:
            return []
        skip = min(max(0, skip_before - self._next_frame), stop - self._next_frame)
        self.skipped += skip
        self._next_frame += skip
        feats = torch.tensor(np.stack(fs.features), device=self.r.device)  # [W, 2, D]
        frames = []
        for a in range(self._next_frame, stop, self.r.cfg.batch):
            idx = np.arange(a, min(a + self.r.cfg.batch, stop))
            # The net clamps window indices to the features it is given: at the start of the stream
            # (start = 0) and at its end (close) this is the offline clamping; elsewhere the kept
            # features cover every frame the windows read.
            frames += self.r.render_batch(feats, idx, self.layers, feature_offset=fs.start)
        self._next_frame = stop
        fs.drop_before(self._next_frame - self.r.head.left_context)
        return frames


#: Audio whose RMS stays below this (about -60 dBFS) is treated as silent.
SILENCE_RMS = 1e-3


def read_speech(path: str | Path) -> np.ndarray:
    """Float32 16 kHz mono samples of any audio (or video with audio) ffmpeg reads, checked."""
    path = Path(path)
    if not path.is_file():
        raise TalkgsError(f"audio file {path} does not exist")
    samples = media.read_audio(path, AudioStream.SAMPLE_RATE)
    if samples is None:
        raise TalkgsError(f"{path} has no audio stream")
    if len(samples) < AudioStream.SAMPLE_RATE // 25:
        raise TalkgsError(f"{path} is empty: its audio is shorter than one video frame")
    if float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise TalkgsError(f"{path} is silent (its level stays below -60 dBFS): there is no speech to follow")
    return samples


def _guarded(frames, guard):
    """The items of generator ``frames``, each produced with ``guard`` held (a batch renders on the first of its
    frames; the others come from the batch already made)."""
    while True:
        with guard:
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def render_speech(source: str | Path | FittedModel, audio_path: str | Path, out: str | Path,
                  cfg: DriveConfig | None = None, device: str | None = None, force: bool = False,
                  drive_video: bool = False, progress: bool = True, guard=None,
                  max_audio_s: float | None = None) -> dict:
    """Render ``source`` (a fitted subject folder, model file or loaded model) speaking ``audio_path`` to ``out``
    (H.264 + AAC); returns a summary. ``drive_video``: ``audio_path`` is another person's talking video, whose
    tracked mouth drives the head (``TalkingRenderer.codes_from_video``) and whose soundtrack is muxed.
    ``progress``: a progress bar on stderr (a server has none). ``guard``: a context manager held while each batch
    of frames renders (a server's render turns, so that its live sessions go on during a job). ``max_audio_s``:
    longer speech is refused (one line) before anything renders.

    The frame count is the audio's duration at the subject's fps (rounded to whole frames), and frame
    i shows the mouth for the audio of [i / fps, (i + 1) / fps), so the muxed audio is in sync from the
    first frame to the last. Frames stream to the encoder; an existing ``out`` is kept unless ``force``,
    and nothing is left behind if rendering fails.
    """
    from talkgs.utils import log
    from talkgs.utils.fs import check_output_file

    out = Path(out)
    check_output_file(out, force)
    samples = read_speech(audio_path)
    if max_audio_s is not None and len(samples) > max_audio_s * AudioStream.SAMPLE_RATE:
        raise TalkgsError(f"the speech is {len(samples) / AudioStream.SAMPLE_RATE:.0f} s long; at most "
                          f"{max_audio_s:g} s is rendered here")
    renderer = TalkingRenderer(source, cfg, device)
    n = renderer.num_frames(samples)
    features = renderer.codes_from_video(audio_path, n) if drive_video else renderer.encode(samples, n)
    tmp = out.with_name(f".{out.name}.tmp.mp4")
    tmp_out = out.with_name(f".{out.name}.mux.mp4")
    try:
        with media.VideoWriter(tmp, (renderer.size, renderer.size), renderer.fps, crf=16, preset="veryfast",
                               pix_fmt="yuv420p") as writer:
            frames = renderer.frames(features) if guard is None else _guarded(renderer.frames(features), guard)
            for frame in log.progress(frames, total=n, desc="render", unit="frame", disable=not progress):
                writer.write(frame)
        media.mux_audio(tmp, audio_path, tmp_out)
        tmp_out.replace(out)
    finally:
        renderer.close()
        tmp.unlink(missing_ok=True)
        tmp_out.unlink(missing_ok=True)
    return {"frames": n, "fps": renderer.fps, "duration_s": n / renderer.fps,
            "audio_s": len(samples) / AudioStream.SAMPLE_RATE, "size": renderer.size, "output": str(out)}
