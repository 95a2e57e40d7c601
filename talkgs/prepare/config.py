"""Configuration of ``talkgs prepare``: every threshold it uses, with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from talkgs.audio.config import AudioConfig
from talkgs.utils.media import SAMPLE_RATE


@dataclass
class VideoConfig:
    fps: float = 25.0
    """Output frame rate. 25 fps gives exactly two 50 Hz audio-feature steps per frame."""
    size: int = 512
    """Side of the square output frames in pixels."""
    allow_upscale: bool = False
    """When the chosen crop is smaller than ``size``, keep the crop's own size instead of inventing
    pixels, unless this is set."""
    crf: int = 12
    """x264 constant rate factor of frames.mp4 (<= 12 keeps it visually lossless)."""
    x264_preset: str = "faster"
    """x264 speed preset of frames.mp4. At CRF 12 the quality is set by the CRF; "faster" encodes
    the 71 s 512 px test clip in 10 s instead of 17 s ("medium") at the same file size."""
    min_duration_s: float = 3.0
    """Shorter videos are refused: below about 3 s there are too few frames for a held-out split
    and for the audio-video offset estimate."""
    sample_rate: int = SAMPLE_RATE
    """Sample rate of audio.wav, as every supported audio encoder expects."""
    detect_max_side: int = 1280
    """Frames are downscaled to at most this side for landmark detection; MediaPipe looks at the
    face at 192-256 px anyway, so larger frames only cost decoding time."""


@dataclass
class FaceConfig:
    max_faces: int = 4
    """Faces MediaPipe looks for in each frame; the subject is chosen among them."""
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    selection_frames: int = 15
    """The subject is the largest, most central face over this many first frames with a face."""
    max_jump: float = 0.5
    """A face more than this many face heights away from the subject's last position is someone
    else, and the frame counts as having no face."""
    max_missing_fraction: float = 0.05
    """More frames than this without the subject's face stop prepare, naming the time ranges."""
    crop_scale: float = 2.4
    """Side of the square crop in face heights (forehead to chin): leaves room for hair above
    and for the neck and shoulders below."""
    crop_offset_y: float = 0.12
    """The crop centre sits this fraction of the crop side below the face centre, so the
    shoulders get more room than the space above the hair."""
    crop_motion_margin: float = 0.15
    """Extra room, in face heights, around the union of all face boxes of the video."""


@dataclass
class TrackingConfig:
    iterations: int = 40
    """Levenberg-Marquardt iterations of the bundle adjustment."""
    huber_px: float = 2.0
    """Residuals above this many pixels count linearly (robust to landmark outliers)."""
    template_prior_m: float = 0.004
    """Standard deviation in metres of the template around its MediaPipe initialisation; fixes the
    gauge (scale, rotation, origin) and keeps the template plausible."""
    focal_prior_fov_deg: float = 24.0
    """Prior horizontal field of view of the source camera. Landmarks alone determine the focal
    length poorly (MediaPipe's depth is nearly weak-perspective), so a plausible-FOV prior
    regularises it."""
    focal_prior_sigma: float = 0.35
    """Standard deviation of the focal-length prior, in log units (0.35 is a factor of 1.4)."""
    eye_width_m: float = 0.09
    """Outer-eye-corner distance that sets the metric scale of the head template (adult mean)."""
    flow_weight: float = 25.0
    """Trust in KLT optical flow between consecutive frames relative to MediaPipe's positions
    (the ratio of their noise variances). Landmark tracks are fused from both before the bundle
    adjustment: MediaPipe fixes where the points are, KLT how they move from frame to frame."""
    flow_fb_max_px: float = 0.5
    """A KLT track that does not come back within this many pixels (detection resolution) when
    tracked backwards is not trusted."""
    smooth_rotation: float = 8.0
    """Whittaker smoothing weight on the second difference of the head rotation, per frame. It is
    a penalised least-squares smoother, so it is zero-phase and adds no lag. Landmarks on a nearly
    flat face barely separate small rotations from translations: without it the rotation wobbles
    by up to 3 degrees between frames while the image motion stays explained. On real clips, 8 halves
    that wobble and costs 0.04 px of image-motion agreement (docs/prepare.md)."""
    smooth_translation: float = 0.0
    """The same for the translation. Off: with optical flow fused in, the translation follows the
    measured image motion, and smoothing it pulls the head off the image (docs/prepare.md)."""
    cut_sigma: float = 8.0
    """A frame-to-frame pose change this many robust standard deviations above the typical one
    (and above ``cut_min_px``) is a cut in the video; smoothing never crosses a cut."""
    cut_min_px: float = 6.0
    """Minimum mean landmark displacement in output pixels for a cut."""
    camera_moving_px: float = 0.3
    """The camera counts as moving (``prepare_report.json: camera_motion``) when the background shifts by more than
    this many pixels per 256 px of frame side between consecutive frames, at the 95th percentile. A tripod shot's
    background moves by compression noise alone (the demo clip: 0.02 px); a phone held in the hand by a pixel or
    more."""


@dataclass
class MaskConfig:
    person_threshold: float = 0.5
    """Selfie-segmentation probability above which a pixel belongs to the person."""
    neck_half_width: float = 0.42
    """Half width of the neck band below the jaw, in face widths."""
    neck_length: float = 0.55
    """Length of the neck band below the chin, in face heights."""


@dataclass
class OcclusionConfig:
    """What covers the face (``talkgs.prepare.occlusion``): found in prepare, painted ``Label.OCCLUDED``, left out of
    the fit's loss."""

    enabled: bool = True
    texture_px: int = 64
    """Side of the face texture the appearance check compares frames in (about one texel per pixel of a face
    64 px wide; larger faces are compared at this detail, which is enough for a hand or a microphone)."""
    reference_frames: int = 200
    """Frames (evenly spaced) whose per-texel median is the face as it usually looks."""
    min_difference: float = 0.12
    """A texel counts as covered when its colour (0-1, mean over RGB, exposure normalised) differs from the
    usual face by more than this and by more than ``spread_factor`` times its own usual variation. On the demo
    clip, whose face nothing covers, 0.12 flags no frame; a skin-toned hand pasted over it is found in every frame
    it covers (tests/test_occlusion.py)."""
    spread_factor: float = 4.0
    """Texels that vary anyway (eyelids, lips, moving shadows) need this many robust standard deviations."""
    triangle_fraction: float = 0.5
    """A face-mesh triangle is painted covered when this share of its texels is."""
    min_face_fraction: float = 0.01
    """A frame with less of its face covered than this is left as it is (compression noise, a stray highlight)."""
    hands: bool = False
    """Also look for hands with MediaPipe Hands. Off by default: it costs about 14 ms a frame (the 71-s anchor at
    512 px: 25 s more, and prepare fell below real time), and the appearance check finds a hand in front of the face
    without it; turn it on for footage with hands over the hair or ears."""
    hand_confidence: float = 0.5
    """MediaPipe Hands' detection and tracking confidence."""
    hand_margin: float = 0.15
    """A found hand is painted as its landmarks' hull widened by this fraction of its size (the fingers' width)."""
    max_face_fraction: float = 0.25
    """A face covered beyond this share is treated as not found: its landmarks (MediaPipe's guess under the hand,
    which pulls the tracked head pose with it) are interpolated from the frames around it, and the whole head is
    labelled covered. On the synthetic hand of ``tools/hard_cases.py`` the tracked yaw and pitch jump by several
    degrees while the hand covers more than about a quarter of the face."""
    mouth_fraction: float = 0.2
    """A frame whose lips are covered beyond this share has no usable mouth: its tracked mouth (the landmarks
    MediaPipe guesses under the hand) trains neither the landmark loss nor the speech model
    (``signals.npz: mouth_occluded``)."""


@dataclass
class BackgroundConfig:
    samples: int = 48
    """Frames, evenly spread, whose background pixels make the plate."""
    person_margin_px: int = 6
    """Pixels this close to the person are not trusted as background (segmentation halo)."""
    inpaint_radius_px: int = 5
    """Radius of OpenCV's inpainting for plate pixels never seen as background."""


@dataclass
class SignalConfig:
    open_percentile: float = 90.0
    """An eye as open as this percentile of the video counts as fully open (openness 1)."""
    closed_percentile: float = 1.0
    """An eye this closed counts as shut (openness 0) ..."""
    closed_ratio_max: float = 0.35
    """... but never above this fraction of the open value, so a video without blinks does not
    stretch noise to the full range."""


@dataclass
class PrepareConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    signals: SignalConfig = field(default_factory=SignalConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    test_fraction: float = 1.0 / 11.0
    """The last this fraction of frames is held out for testing (the standard protocol)."""
    preview: bool = False
    """Also write preview/overlay.mp4 and preview/contact_sheet.png."""
