"""Configuration of ``talkgs fit``: the run, the data, the initial Gaussians and each stage.

A stage is a value (``StageConfig``) run by the one generic trainer; the order of stages is the order
of ``FitConfig.stages``. A run saves its full config to SUBJECT_DIR/fit/config.yaml (``--resume`` checks
it), and ends by writing the fitted model (SUBJECT_DIR/fit/model.safetensors), a self-contained file that
evaluation, rendering and the viewer rebuild everything from (``talkgs.model.fitted``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from talkgs.model.init_head import InitConfig
from talkgs.model.local_check import LOCAL_EXCESS_MAX
from talkgs.model.talking_head import HeadConfig


@dataclass
class DensifyConfig:
    """Adaptive density control through ``gsplat.strategy.DefaultStrategy`` (its own field names)."""

    enabled: bool = True
    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    refine_start_iter: int = 100
    refine_stop_iter: int = 1500
    refine_every: int = 100
    reset_every: int = 1000
    max_gaussians: int = 30000
    """Growth stops at this many Gaussians (bounds CPU time and memory)."""


@dataclass
class LossConfig:
    l1: float = 0.8
    dssim: float = 0.2
    """D-SSIM weight (kornia's SSIM, 11x11 Gaussian window); L1 + D-SSIM as in 3DGS."""
    alpha: float = 0.1
    """L1 between the rendered alpha and the head mask, which keeps Gaussians inside the head."""
    offsets: float = 0.01
    """Mean absolute motion offset (metres, log-scale, quaternion units) times this: motion stays
    small unless the images ask for it."""
    landmarks: float = 0.05
    """Stages with face motion: the weight of the landmark loss, the mean distance in pixels (at the
    training resolution) between the tracked lip, jaw and eyelid landmarks and the template landmarks
    moved by the face Gaussians around them. The photometric loss sees lips a few pixels tall at CPU
    resolutions; the landmarks tell the audio net directly how far the mouth opens in every frame."""
    landmark_neighbours: int = 8
    """Face Gaussians (nearest in canonical space) whose offsets move each landmark, inverse-distance
    weighted."""
    landmark_frames: int = 8
    """Frames in each step's landmark loss: the rendered frame and this many - 1 more training frames,
    for which only the face Gaussians around the landmarks are deformed (no rendering, so they cost
    little). With the rendered frame alone the audio net sees one frame per step and does not even fit
    the lip motion of the training frames."""
    ssim_window: int = 11


@dataclass
class LRConfig:
    """Adam learning rates per parameter group (3DGS defaults, means scaled by the scene size)."""

    means: float = 1.6e-4
    means_final: float = 1.6e-6
    """The means' learning rate decays exponentially to this over the stage."""
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20
    network: float = 2e-3
    """Adam learning rate of the audio encoders and motion fields (hash grids included)."""


SAMPLERS = ("uniform", "incremental", "open")


@dataclass
class StageConfig:
    name: str = "static"
    """Stage id; the trainer runs the stage kind of the same name."""
    iterations: int = 2000
    lr: LRConfig = field(default_factory=LRConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    sh_degree_every: int = 500
    """One more SH band every this many iterations, up to the model's degree."""
    sampler: str = "uniform"
    """"uniform" over the training frames; "incremental" (TalkingGaussian): a window over the frames
    sorted by mouth opening moves from closed to open, then one over eye openness; "open": frames drawn
    in proportion to their tracked mouth opening, so a stage that sees only the mouth interior looks at
    frames where it shows."""
    sample_window: float = 0.25
    """Incremental sampling: the window holds this fraction of the training frames."""
    incremental_fraction: float = 0.6
    """Incremental sampling: this fraction of the stage uses the moving windows, the rest is uniform."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"StageConfig.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")


@dataclass
class SelfCheckConfig:
    enabled: bool = True
    threshold: float = LOCAL_EXCESS_MAX
    """A held-out frame fails when a patch outside the lips is worse than the static head's by more than this
    (the mean colour error, 0-1; ``talkgs eval``'s local check uses the same number)."""
    share: float = 0.9
    """The Gaussians mended for a blotch: the fewest whose contributions to its pixels add up to this share."""
    hidden_opacity: float = 1e-3
    """Opacity given to a Gaussian the static head hardly shows when giving it back its static colour did not
    remove the blotch it paints."""
    static_share: float = 0.25
    """A Gaussian counts as hardly shown by the static head when its contribution to the blotch's pixels there is
    below this fraction of its contribution in the stage's render."""
    rounds: int = 3
    """Mending rounds (find, mend, check again) before the check is reported failed."""


@dataclass
class FitConfig:
    resolution: int = 256
    """Training image side in pixels; frames are downscaled from the subject's own size, never enlarged (a smaller
    subject trains at its own size). 256 px is the CPU default since the compiled CPU kernels (a 2-core fit of the
    demo clip: 10.7 min, docs/cpu.md); at 128 px the lips are 3-4 pixels tall. 512 px on the CPU fits the 71-s
    anchor clip in 2.4 times the time and follows its held-out mouth better, other speakers' not measurably
    (docs/lip_sync.md, eighth round)."""
    sh_degree: int = 2
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    backend: str = "auto"
    """Rasterizer: "auto" (gsplat on CUDA, the compiled kernels on the CPU, else torch), "torch", "cpu" or "gsplat"."""
    init: InitConfig = field(default_factory=InitConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [
        StageConfig(name="static"),
        # The mouth interior shows in a minority of frames: drawn by opening and for 2000 steps (about 2 min at
        # 256 px on 2 cores) the teeth take shape; 600 uniform steps left a blurred average (docs/lip_sync.md).
        StageConfig(name="mouth", iterations=2000, sampler="open",
                    densify=DensifyConfig(refine_stop_iter=1500, max_gaussians=5000)),
        StageConfig(name="face", iterations=1500, sampler="incremental", densify=DensifyConfig(enabled=False)),
        StageConfig(name="fuse", iterations=400, lr=LRConfig(network=5e-4), densify=DensifyConfig(enabled=False)),
    ])
    max_occluded: float = 0.2
    """Training frames with more of the head covered than this (``talkgs prepare``'s occlusions: a hand, a
    microphone) are left out of the fit altogether: under a hand that large, MediaPipe's landmarks and so the head
    pose follow the hand. Less covered frames train on their uncovered pixels; frames whose lips are covered train
    neither the landmark loss nor the mouth code and its speech model."""
    self_check: SelfCheckConfig = field(default_factory=SelfCheckConfig)
    """After every stage with motion, the local error check on the held-out frames against the static head, and
    the mending of what fails (``talkgs.train.selfcheck``)."""
    checkpoint_every: int = 250
    """Steps between resumable checkpoints (Ctrl-C also saves one)."""
    val_every: int = 500
    """Steps between validation renders of held-out frames."""
    val_frames: int = 6
    """Held-out frames rendered for validation (evenly spaced over the test split)."""
    replay_frames: int = 750
    """Frames of the replay run (the longest cut-free stretch of training frames) whose torso layers the
    fitted model keeps, for ``talkgs render --pose replay``: 30 s at 25 fps; a longer run keeps its middle.
    Each costs a lossless PNG in fit/model.safetensors (about 10 kB at 128 px)."""
    neck_extension: float = 0.06
    """The fitted model's torso layers continue the neck up under the head for this fraction of their side
    (``data.subject.torso_layer``): a jaw that new speech closes higher than in the replayed frame uncovers neck
    skin rather than the background. 0.06 is 15 px at 256, about the chin's travel from a closed to a wide-open
    mouth."""
    replay_background: str = "auto"
    """Whether the layers under the head (training's and the fitted model's replayed frames) hold each frame's own
    background, not only its torso: "auto" when ``talkgs prepare`` found the camera moving (prepare_report.json:
    camera_motion), "always" or "never". A still camera's background is the one plate (clean, and a smaller model);
    a handheld camera's background moves, and the plate, its median, matches no frame (the demo clip shaken by
    ``tools/hard_cases.py``: held-out PSNR of the frame 29.67 dB with the plate; docs/footage.md)."""
    model_layer_size: int | None = None
    """Side in pixels of the background plate and torso layers stored in the fitted model; None: the
    training resolution. Larger keeps them sharp when rendering larger than the fit (``--size``)."""
    model_float16: bool = True
    """Store the head's large tensors in the fitted model as float16 (hash grids, Gaussian colours, shapes and
    opacities; positions stay float32): about half the file, rendered frames within 1 level of 255 of the
    float32 model's (docs/model.md, tests/test_fitted_model.py). The checkpoint keeps float32 either way."""

    def __post_init__(self) -> None:
        if self.replay_background not in ("auto", "always", "never"):
            raise ValueError("FitConfig.replay_background must be auto, always or never, got "
                             f"{self.replay_background!r}")
