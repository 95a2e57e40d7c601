"""The subject folder format: the only place its file names and label ids are defined.

See docs/subject_format.md for the full description. Bump ``FORMAT_VERSION`` on any change that an
older reader would misread.
"""

from __future__ import annotations

from enum import IntEnum

#: 2: ``Label.OCCLUDED`` in labels.mkv, ``occluded`` and ``mouth_occluded`` in signals.npz (format 1 reads as before).
FORMAT_VERSION = 2

MANIFEST = "subject.json"
FRAMES = "frames.mp4"  # RGB, H.264 4:4:4, constant fps; frame i <-> row i of every per-frame array
LABELS_VIDEO = "labels.mkv"  # uint8 label ids per pixel, FFV1 (lossless)
AUDIO = "audio.wav"  # 16 kHz mono PCM, offset-corrected, exactly frames / fps seconds long
LANDMARKS = "landmarks.npz"  # MediaPipe landmarks in output pixels
CAMERAS = "cameras.npz"  # intrinsics, per-frame head pose, rigid template
TRANSFORMS = "transforms.json"  # the same cameras, NeRF-style (OpenGL camera-to-world)
SIGNALS = "signals.npz"  # blink, mouth opening, lip spread, brow raise, lip boxes
BACKGROUND = "background.png"  # clean background plate, RGB
REPORT = "prepare_report.json"
PREVIEW_DIR = "preview"
PREVIEW_VIDEO = "preview/overlay.mp4"
PREVIEW_SHEET = "preview/contact_sheet.png"


def audio_features(encoder: str) -> str:
    """File of one audio encoder's features: float32 [F, 2, D] (two 50 Hz steps per 25 fps frame)."""
    return f"audio_{encoder}.npy"


class Label(IntEnum):
    """Pixel classes of ``labels.mkv``."""

    BACKGROUND = 0
    TORSO = 1
    NECK = 2
    HAIR = 3  # hair, head top and ears: the part of the head outside the face oval
    FACE = 4  # face skin inside the face oval (brows included)
    LIPS = 5
    MOUTH = 6  # mouth interior: teeth, tongue and cavity inside the inner lip contour
    EYES = 7  # eyeball (sclera and iris) inside the eyelid contour
    OCCLUDED = 8  # head pixels something covers in this frame (a hand, a microphone): left out of the fit's loss


LABELS = {label.name.lower(): int(label) for label in Label}

#: Labels that make up the head that the static Gaussians model (mouth interior excluded, as in
#: TalkingGaussian, where a separate branch handles it).
HEAD_LABELS = (Label.HAIR, Label.FACE, Label.LIPS, Label.EYES)
#: Labels of the per-frame torso layer that is composited under the head.
TORSO_LABELS = (Label.TORSO, Label.NECK)

#: Per-frame signals in signals.npz, in the column order of its ``expression`` array.
EXPRESSION_CHANNELS = ("blink_left", "blink_right", "mouth_open", "lip_spread", "brow_raise")

# -- fitting outputs (talkgs fit), inside the subject folder ------------------------------------------
FIT_DIR = "fit"
FIT_CONFIG = "fit/config.yaml"  # the full FitConfig the run used (--resume checks it)
MODEL = "fit/model.safetensors"  # the fitted model: everything render, view and export need (model/fitted.py)
CHECKPOINT = "fit/checkpoint.pt"  # resumable training state (torch.save, loadable with weights_only)
FIT_REPORT = "fit/fit_report.json"
VAL_DIR = "fit/val"  # validation renders of held-out frames, PNG
CACHE_DIR = "fit/cache"  # frames and labels at one resolution, memory-mapped (data/cache.py)
EVAL_REPORT = "eval_report.json"  # talkgs eval: held-out metrics
EVAL_VIDEO = "eval_side_by_side.mp4"  # talkgs eval: truth | render | error, with the held-out audio


def drive_report(video_stem: str) -> str:
    """talkgs eval --drive-ref: the report of the head driven by the real video ``video_stem``."""
    return f"eval_drive_{video_stem}.json"
