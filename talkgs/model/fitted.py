"""The fitted model: one self-contained file that ``talkgs render``, ``view`` and ``export`` need, and nothing else.

``talkgs fit`` ends by writing SUBJECT_DIR/fit/model.safetensors. It holds

- the talking head: both branches' Gaussians, the audio nets (with their feature normalisation) and
  the motion fields (``TalkingHead.tensors``, under ``head.``);
- a JSON header (safetensors metadata ``talkgs``): the head config, the audio encoders and their
  settings, the fps, the intrinsics at the layers' size, the rasterizer backend;
- the replay data (``replay.``): every frame's head pose and expression channels, the training frames,
  the camera cuts, the head centre, and the open/closed expression statistics of the blink modes;
  which branches and motion fields the fit trained (``draws``);
- the layers under the head (``layers.``): the background plate, and the torso-and-neck layer of every
  frame of the replay run, each a lossless WebP (premultiplied RGB with a binary alpha; format 1: PNG), so a
  long run costs megabytes, not hundreds.

The head's large tensors (hash grids, Gaussian colours, shapes, opacities, the speech model's basis) are stored
as float16 unless ``FitConfig.model_float16`` is off; the Gaussians' positions stay float32 (a float16 step near
the head is a third of a pixel at 512 px). Reading restores float32. docs/model.md has the sizes and what the
rendered frames change by.

Copy that one file anywhere and render it: it needs neither the frames, nor the audio features, nor
the config of the run that made it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from talkgs.errors import TalkgsError
from talkgs.model.gaussians import read_safetensors, staged_file
from talkgs.model.talking_head import HeadConfig, TalkingHead
from talkgs.utils.config import from_dict, to_dict

MODEL_FORMAT = "talkgs-model"
#: Bump on any change an older reader would misread.
MODEL_FORMAT_VERSION = 2  # 2: layers in WebP (the reader clears colour under a zero alpha), float16 tensors
#: Tensors of the head with at least this many elements are stored as float16 (``FittedModel.save``): the tables,
#: the Gaussians and the speech model's basis; the small MLPs stay float32 (they weigh nothing).
FLOAT16_MIN_ELEMENTS = 4096


@dataclass
class Replay:
    """What drives a fitted head besides audio, recorded from its own video (F frames, E channels)."""

    w2c: np.ndarray  # [F, 4, 4] head-to-camera of every frame (OpenCV)
    expression: np.ndarray  # [F, E] the head's expression channels of every frame
    train: np.ndarray  # [T] the training frames
    cuts: np.ndarray  # [C] frames c with a camera cut between c - 1 and c
    pivot: np.ndarray  # [3] the head centre in canonical space (free-view rotations turn about it)
    expression_open: np.ndarray  # [E] median over the training frames: eyes open
    expression_closed: np.ndarray  # [E] 1st percentile over the training frames: eyes closed

    @property
    def num_frames(self) -> int:
        return int(self.w2c.shape[0])


def longest_run(indices: np.ndarray, cuts) -> np.ndarray:
    """The longest stretch of consecutive ``indices`` with no cut inside (a cut c lies between c-1 and c)."""
    cut_set = {int(c) for c in cuts}
    runs, start = [], 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1 or int(indices[k]) in cut_set:
            runs.append(indices[start:k])
            start = k
    return max(runs, key=len)


def encode_layer(image: np.ndarray) -> bytes:
    """Lossless bytes of a uint8 [S, S, 3] RGB plate or [S, S, 4] layer (RGB premultiplied by a binary alpha).

    WebP lossless: on the demo's 261 torso layers 40 % smaller than PNG (3.1 against 5.2 MB) and decoded 3x
    faster (0.86 against 2.83 ms at 512 px). It may change the colour under a zero alpha, which ``decode`` clears.
    PNG where this OpenCV cannot write WebP.
    """
    code = cv2.COLOR_RGBA2BGRA if image.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    bgr = cv2.cvtColor(image, code)
    ok, data = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # above 100: lossless
    if not ok:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError("OpenCV could not encode a layer")
    return data.tobytes()


def decode_layer(data: bytes) -> np.ndarray:
    """The uint8 [S, S, 3] RGB or [S, S, 4] RGBA image of ``encode_layer``'s bytes (WebP or PNG)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise TalkgsError("the fitted model is damaged: a stored layer is not a valid image")
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    rgba = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    rgba[rgba[..., 3] == 0] = 0  # premultiplied: nothing under a zero alpha
    return rgba


def _stored(name: str, tensor: torch.Tensor, float16: bool) -> torch.Tensor:
    """``tensor`` as the model file stores it (module docstring)."""
    tensor = tensor.detach().cpu().contiguous()
    if (float16 and tensor.dtype == torch.float32 and tensor.numel() >= FLOAT16_MIN_ELEMENTS
            and not name.endswith(".means")):
        return tensor.half()
    return tensor


class FittedModel:
    """A fitted talking head with everything needed to drive and draw it.

    Args:
        head: the talking head.
        header: the JSON header (see ``header_for``).
        replay: the replay data.
        background: ``encode_layer`` bytes of the [S, S, 3] background plate.
        torso: {frame: ``encode_layer`` bytes of its [S, S, 4] torso layer} for the frames of the replay run.
    """

    def __init__(self, head: TalkingHead, header: dict, replay: Replay, background: bytes, torso: dict[int, bytes]):
        self.head = head
        self.header = header
        self.replay = replay
        self._background = background
        self._torso = torso

    # -- what the header says -----------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return float(self.header["fps"])

    @property
    def resolution(self) -> int:
        """The fit's training resolution: the default output size."""
        return int(self.header["resolution"])

    @property
    def layer_size(self) -> int:
        """Side of the stored background and torso layers, and the size ``K`` is for."""
        return int(self.header["layer_size"])

    @property
    def neck_extension(self) -> float:
        """How far the torso layers continue the neck under the head (``FitConfig.neck_extension``); 0 for
        models written before it existed."""
        return float(self.header.get("neck_extension", 0.0))

    @property
    def layer_background(self) -> bool:
        """Whether the torso layers hold their frames' background too (``FitConfig.replay_background``); False for
        models from before it existed."""
        return bool(self.header.get("layer_background", False))

    @property
    def K(self) -> np.ndarray:
        """[3, 3] intrinsics at ``layer_size``."""
        return np.array(self.header["K"], np.float64)

    @property
    def encoders(self) -> tuple[str, ...]:
        return tuple(self.head.cfg.audio_encoders)

    @property
    def audio_settings(self) -> dict:
        """The ``prepare`` audio settings of the features the audio nets were trained on."""
        return dict(self.header["audio"])

    @property
    def backend(self) -> str:
        return str(self.header["backend"])

    @property
    def draws(self) -> dict[str, bool]:
        """What the fit trained, so what is drawn: ``mouth`` (the mouth branch's layer), ``face_motion``
        and ``mouth_motion`` (their motion fields); a static-only fit draws the still face alone."""
        return {k: bool(v) for k, v in self.header["draws"].items()}

    @property
    def torso_frames(self) -> np.ndarray:
        """[R] frames whose torso layer is stored, ascending."""
        return np.array(sorted(self._torso), np.int64)

    # -- layers --------------------------------------------------------------------------------------
    def background(self) -> np.ndarray:
        """uint8 [S, S, 3] RGB background plate at ``layer_size``."""
        return decode_layer(self._background)[..., :3]

    def torso(self, frame: int) -> np.ndarray:
        """uint8 [S, S, 4] torso layer of ``frame`` (one of ``torso_frames``): RGB premultiplied by a
        binary alpha (255 on the frame's torso and neck pixels, 0 elsewhere)."""
        data = self._torso.get(int(frame))
        if data is None:
            raise KeyError(f"frame {frame} has no stored torso layer")
        return decode_layer(data)

    # -- file ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, float16: bool = True) -> None:
        """Write the one-file model, atomically (an interrupted save leaves the old file); ``float16``: the head's
        large tensors in half precision (module docstring)."""
        from safetensors.torch import save_file

        frames = self.torso_frames
        blobs = [self._torso[int(f)] for f in frames]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        r = self.replay
        tensors = {f"head.{k}": _stored(k, v, float16) for k, v in self.head.tensors().items()}
        arrays = {
            "replay.w2c": r.w2c.astype(np.float64), "replay.expression": r.expression.astype(np.float64),
            "replay.train": r.train.astype(np.int64), "replay.cuts": r.cuts.astype(np.int64),
            "replay.pivot": r.pivot.astype(np.float64), "replay.expression_open": r.expression_open.astype(np.float64),
            "replay.expression_closed": r.expression_closed.astype(np.float64),
            "layers.background": np.frombuffer(self._background, np.uint8),
            "layers.torso": np.frombuffer(b"".join(blobs), np.uint8),
            "layers.torso_offsets": offsets, "layers.torso_frames": frames,
        }
        tensors.update({k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in arrays.items()})
        with staged_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT, "talkgs": json.dumps(self.header)})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> FittedModel:
        """Read a model written by ``save``; one readable line (``TalkgsError``) for anything wrong."""
        path = Path(path)
        metadata, tensors = read_safetensors(path, "fitted model")
        if metadata.get("format") != MODEL_FORMAT:
            raise TalkgsError(f"{path} is not a fitted talkgs model (format {metadata.get('format')!r})")
        try:
            header = json.loads(metadata["talkgs"])
            version = int(header["format_version"])
        except (KeyError, ValueError, TypeError):
            raise TalkgsError(f"{path} is damaged: its header is not readable") from None
        if version > MODEL_FORMAT_VERSION:
            raise TalkgsError(f"{path} has model format {version}, this talkgs reads up to {MODEL_FORMAT_VERSION}; "
                              "update talkgs")
        try:
            # Fits from before the jaw carry trained their mouth field without it: drawn with it, their teeth
            # would move twice.
            cfg = from_dict(HeadConfig, {"jaw_carry_m": 0.0, **header["head"]}, "head")
            head = TalkingHead.from_tensors({k[5:]: v.float() if v.dtype == torch.float16 else v
                                             for k, v in tensors.items() if k.startswith("head.")},
                                            int(header["audio_dim"]), cfg)
            np_ = lambda k: tensors[k].numpy()  # noqa: E731
            replay = Replay(w2c=np_("replay.w2c"), expression=np_("replay.expression"), train=np_("replay.train"),
                            cuts=np_("replay.cuts"), pivot=np_("replay.pivot"),
                            expression_open=np_("replay.expression_open"),
                            expression_closed=np_("replay.expression_closed"))
            blob, offsets = np_("layers.torso").tobytes(), np_("layers.torso_offsets")
            torso = {int(f): blob[offsets[i]:offsets[i + 1]] for i, f in enumerate(np_("layers.torso_frames"))}
            background = np_("layers.background").tobytes()
        except (KeyError, RuntimeError, ValueError, IndexError) as e:
            raise TalkgsError(f"{path} is damaged: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None
        return cls(head.to(device).eval(), header, replay, background, torso)


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> FittedModel:
    """The fitted model of ``source``: a fitted subject folder (its fit/model.safetensors) or a model file."""
    from talkgs.data import schema

    source = Path(source)
    if source.is_dir():
        path = source / schema.MODEL
        if not path.is_file():
            if (source / schema.CHECKPOINT).is_file():
                raise TalkgsError(f"{source} has no {schema.MODEL} (an interrupted fit, or one by an older talkgs); "
                                  f"talkgs fit {source} --resume (with the fit's --config) finishes it")
            if (source / schema.MANIFEST).is_file():
                raise TalkgsError(f"{source} is not fitted yet (no {schema.MODEL}); run talkgs fit {source} first")
            raise TalkgsError(f"{source} is neither a fitted subject folder nor a fitted model file")
        return FittedModel.load(path, device)
    return FittedModel.load(source, device)


def header_for(head: TalkingHead, *, audio_dim: int, fps: float, resolution: int, layer_size: int, K: np.ndarray,
               audio: dict, backend: str, device: str, source: str, draws: dict[str, bool],
               neck_extension: float = 0.0, layer_background: bool = False) -> dict:
    """The JSON header of a fitted model (every field the forward pass and the driver read)."""
    from talkgs import __version__

    return {
        "format_version": MODEL_FORMAT_VERSION, "talkgs_version": __version__, "source": source,
        "head": to_dict(head.cfg), "audio_dim": int(audio_dim), "audio": audio, "fps": float(fps),
        "resolution": int(resolution), "layer_size": int(layer_size), "K": np.asarray(K, np.float64).tolist(),
        "backend": backend, "device": device, "draws": dict(draws), "neck_extension": float(neck_extension),
        "layer_background": bool(layer_background),
        "gaussians": head.face.num_gaussians, "mouth_gaussians": head.mouth.num_gaussians,
    }
