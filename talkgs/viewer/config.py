"""Options of ``talkgs view`` (``ViewerConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from talkgs.errors import TalkgsError

BLINK_MODES = ("natural", "none", "auto")  # the same as talkgs.render.driver, without importing torch


@dataclass
class ViewerConfig:
    """How the viewer serves and renders a fitted subject."""

    host: str = "127.0.0.1"
    """Address to bind. The default serves this machine only: the page shows a real person's face and
    accepts uploads, so exposing it to the network (0.0.0.0) must be a deliberate choice."""
    port: int = 8765
    """TCP port; 0 picks a free one (the printed URL says which)."""
    device: str = "auto"
    """"auto" (CUDA when PyTorch sees a GPU, else CPU), "cpu" or "cuda"."""
    size: int | None = None
    """Full viewer resolution in pixels; None: the fit's training resolution on CPU (what renders at an
    interactive rate there), the subject's frame size on a GPU (512 px for a default prepare)."""
    blink: str = "natural"
    """Blink mode a new tab starts with: "natural", "none" or "auto" (each tab can switch)."""
    moving_scale: float = 0.5
    """Resolution factor while the camera moves, so dragging stays fluid; the full resolution is
    rendered once the camera is still."""
    deform_ahead: int = 8
    """Frames deformed together when a frame's deformation is not cached yet: that frame and the next ones,
    which a playing tab asks for next. Batched, the audio nets and motion fields cost less per frame
    (measured at 256 px on 2 CPU cores: 8.7 ms for one frame alone, 5.2 ms per frame in batches of 8)."""
    jpeg_quality: int = 90
    """Quality of the JPEG frames (1-100): JPEG keeps a 512 px frame near 40 kB, PNG is 5-10x bigger."""
    max_upload_mb: float = 50.0
    """Largest audio upload; bigger files are refused before decoding."""
    max_audio_s: float = 600.0
    """Longest uploaded audio: its features stay in memory while the viewer runs."""
    max_clips: int = 8
    """Uploaded clips kept; the oldest is dropped when another arrives (the subject's own is kept)."""

    def __post_init__(self) -> None:
        if self.blink not in BLINK_MODES:
            raise TalkgsError(f"unknown blink mode {self.blink!r} (choose from {', '.join(BLINK_MODES)})")
        if not 0 <= self.port <= 65535:
            raise TalkgsError(f"port must be between 0 and 65535, got {self.port}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TalkgsError(f"unknown device {self.device!r} (choose from auto, cpu, cuda)")
        if self.size is not None and not 16 <= self.size <= 2048:
            raise TalkgsError(f"size must be between 16 and 2048 pixels, got {self.size}")
        if not 0.1 <= self.moving_scale <= 1.0:
            raise TalkgsError(f"moving_scale must be between 0.1 and 1, got {self.moving_scale}")
        if not 1 <= self.deform_ahead <= 64:
            raise TalkgsError(f"deform_ahead must be between 1 and 64 frames, got {self.deform_ahead}")
        if not 1 <= self.jpeg_quality <= 100:
            raise TalkgsError(f"jpeg_quality must be between 1 and 100, got {self.jpeg_quality}")
        if self.max_upload_mb <= 0 or self.max_audio_s <= 0 or self.max_clips < 1:
            raise TalkgsError("max_upload_mb and max_audio_s must be positive, max_clips at least 1")
