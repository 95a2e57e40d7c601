"""Per-frame audio embeddings for the audio-driven deformation: a windowed conv encoder and temporal attention.

Input is the ``audio_<encoder>.npy`` of ``talkgs prepare``: float32 [F, 2, D], two 50 Hz feature steps
per 25 fps frame (see ``talkgs.audio.features`` for the timing convention). Output is one embedding
[out_dim] per video frame, in two stages after AD-NeRF / ER-NeRF:

0. Standardisation of every feature dimension with statistics of the training sequence
   (``AudioNet.set_feature_stats``): the encoders' scales differ wildly (log-mel about -23..3, one-hots
   0/1, HuBERT about unit scale), and unscaled log-mel would drive the first layers far from their
   initialised operating range.
1. ``AudioEncoder`` ("AudioNet"): the 2 * (2 * window + 1) steps of the frames around frame i go through
   strided 1D convolutions over time + LeakyReLU and a small MLP -> [out_dim].
2. ``TemporalAttention`` ("AudioAttNet"): the encoder embeddings of ``attention_frames`` consecutive frames
   around frame i are averaged with softmax weights predicted by a 1D conv net, which smooths the signal
   across neighbouring frames without distorting a steady one (the weights sum to 1).

Frame windows (both stages) of frame i:

- non-causal: frames i - window .. i + window for the encoder; i - A // 2 .. i - A // 2 + A - 1 for the
  attention (A = attention_frames; for even A one more frame before i than after, as AD-NeRF).
- causal (streaming): frames i - 2 * window .. i and i - A + 1 .. i, so only past and current frames
  are read and a frame's embedding is final as soon as its audio has arrived.

Both encoder windows hold 2 * window + 1 frames, so one set of weights serves either mode. Frames
beyond the ends of the sequence repeat the edge frame (index clamping): an edge frame's own audio is
the most plausible stand-in for audio that does not exist, whereas zeros would be a feature value the
encoders never produce (log-mel of silence is strongly negative, not zero) and a signal to the net
that it would have to learn to ignore.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AudioNetConfig:
    window: int = 4
    """Frames of context either side of the current frame for the conv encoder: the encoder sees
    2 * window + 1 frames, i.e. 2 * (2 * window + 1) feature steps (4 -> 9 frames / 18 steps, 360 ms).
    Causal: the 2 * window + 1 frames ending at the current one. ER-NeRF's 16-frame window overfits a
    clip of a minute or less: on the demo subject, mouth opening predicted from mel has a held-out
    correlation of 0.45 with window 8 and 0.58 with window 4 (tools/research/probe_audio.py,
    docs/talking_head.md)."""
    hidden: int = 64
    """Channels of the encoder's conv layers and width of its MLP."""
    out_dim: int = 32
    """Size of the per-frame audio embedding."""
    attention_frames: int = 4
    """A, the consecutive frames whose embeddings the temporal attention averages (1 disables the
    smoothing in effect: the single weight is 1). Four frames (160 ms) smooth without blurring a
    syllable."""
    causal: bool = False
    """Streaming mode: use only past and current frames (see the module docstring)."""
    leaky_slope: float = 0.02
    """Negative slope of the LeakyReLUs (AD-NeRF / ER-NeRF's value)."""

    def __post_init__(self) -> None:
        for name in ("window", "hidden", "out_dim", "attention_frames"):
            value = getattr(self, name)
            low = 0 if name == "window" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"AudioNetConfig.{name} must be an integer >= {low}, got {value!r}")

    @property
    def window_frames(self) -> int:
        """Frames in the encoder window: 2 * window + 1."""
        return 2 * self.window + 1

    @property
    def window_steps(self) -> int:
        """S, feature steps in the encoder window: two per frame."""
        return 2 * self.window_frames


def _check_features(features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.ndim != 3 or features.shape[1] != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be a [F, 2, D] tensor with F >= 1, got {_describe(features)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")


def _check_index(index: Tensor, num_frames: int) -> None:
    if not isinstance(index, Tensor) or index.ndim != 1:
        raise ValueError(f"index must be a [B] tensor of frame indices, got {_describe(index)}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"index must be an integer tensor, got {index.dtype}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_frames):
        raise ValueError(f"index must lie in [0, {num_frames}), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")


def _describe(x) -> str:
    return f"{tuple(x.shape)} tensor" if isinstance(x, Tensor) else type(x).__name__


def _frame_offsets(before: int, count: int, causal: bool, device: torch.device) -> Tensor:
    """Offsets [count] of a window of ``count`` frames relative to its frame: ending at it if causal,
    else starting ``before`` frames before it."""
    start = -(count - 1) if causal else -before
    return torch.arange(start, start + count, device=device)


def feature_windows(features: Tensor, index: Tensor, window: int, causal: bool) -> Tensor:
    """The encoder windows of frames ``index``: [B, 2 * window + 1, 2, D].

    Args:
        features: [F, 2, D] per-frame audio features.
        index: [B] integer frame indices in [0, F).
        window: frames of context either side (non-causal) or 2 * window frames before (causal).
        causal: windows end at the frame instead of being centred on it.

    Frames beyond the ends repeat the edge frame.
    """
    _check_features(features)
    _check_index(index, features.shape[0])
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    index = index.to(device=features.device, dtype=torch.int64)
    offsets = _frame_offsets(window, 2 * window + 1, causal, features.device)  # [W]
    frames = (index[:, None] + offsets).clamp(0, features.shape[0] - 1)  # [B, W]
    return features[frames]  # [B, W, 2, D]


def _strided_length(length: int) -> int:
    """Output length of a kernel-3, stride-2, padding-1 convolution."""
    return (length + 1) // 2


def _init_variance_preserving(module: nn.Module, leaky_slope: float) -> None:
    """He-normal weights and zero biases for every conv / linear layer of ``module``.

    PyTorch's default init shrinks the signal about threefold per layer, so through the encoder's ~8
    layers an untrained net maps every frame to nearly the same embedding (its biases); preserving the
    variance keeps the embedding audio-dependent from the first step, and with it the gradients.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=leaky_slope, nonlinearity="leaky_relu")
            nn.init.zeros_(m.bias)


class AudioEncoder(nn.Module):
    """Window of feature steps [B, S, D] -> embedding [B, out_dim] (AD-NeRF / ER-NeRF "AudioNet").

    Kernel-3 stride-2 convolutions halve the time axis until one step is left, so the receptive field
    covers the whole window; an MLP maps the resulting [hidden] vector to the embedding.
    """

    def __init__(self, dim_in: int, cfg: AudioNetConfig) -> None:
        super().__init__()
        if not isinstance(dim_in, int) or isinstance(dim_in, bool) or dim_in < 1:
            raise ValueError(f"dim_in must be a positive integer, got {dim_in!r}")
        self.dim_in = dim_in
        self.steps = cfg.window_steps
        layers: list[nn.Module] = []
        channels, length = dim_in, self.steps
        while length > 1:
            layers += [nn.Conv1d(channels, cfg.hidden, 3, stride=2, padding=1), nn.LeakyReLU(cfg.leaky_slope)]
            channels, length = cfg.hidden, _strided_length(length)
        self.conv = nn.Sequential(*layers)
        self.mlp = nn.Sequential(
            nn.Linear(channels, cfg.hidden), nn.LeakyReLU(cfg.leaky_slope), nn.Linear(cfg.hidden, cfg.out_dim)
        )
        _init_variance_preserving(self, cfg.leaky_slope)

    def forward(self, steps: Tensor) -> Tensor:
        """[B, S, D] feature steps of each frame's window (S = cfg.window_steps) -> [B, out_dim]."""
        if not isinstance(steps, Tensor) or steps.ndim != 3 or steps.shape[1:] != (self.steps, self.dim_in):
            raise ValueError(f"steps must be [B, {self.steps}, {self.dim_in}], got {_describe(steps)}")
        x = self.conv(steps.transpose(1, 2))  # [B, hidden, 1]
        return self.mlp(x.flatten(1))  # [B, out_dim]


class TemporalAttention(nn.Module):
    """Softmax-weighted average of the embeddings of A consecutive frames (AD-NeRF's "AudioAttNet").

    A 1D conv net over the A frames scores each frame from it and its neighbours, a linear layer mixes
    the scores across the window (so the weighting can depend on position, e.g. favour the centre), and
    a softmax turns them into weights that sum to 1.
    """

    def __init__(self, dim: int, frames: int, leaky_slope: float = 0.02) -> None:
        super().__init__()
        self.dim, self.frames = dim, frames
        widths = [dim, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv1d(c_in, c_out, 3, padding=1), nn.LeakyReLU(leaky_slope)]
        self.conv = nn.Sequential(*layers)
        self.mix = nn.Linear(frames, frames)
        _init_variance_preserving(self.conv, leaky_slope)

    def weights(self, embeddings: Tensor) -> Tensor:
        """[B, A, dim] embeddings -> [B, A] attention weights, each row summing to 1."""
        expected = (self.frames, self.dim)
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 3 or embeddings.shape[1:] != expected:
            raise ValueError(f"embeddings must be [B, {self.frames}, {self.dim}], got {_describe(embeddings)}")
        scores = self.conv(embeddings.transpose(1, 2)).squeeze(1)  # [B, A]
        return F.softmax(self.mix(scores), dim=1)  # [B, A]

    def forward(self, embeddings: Tensor) -> Tensor:
        """[B, A, dim] embeddings of each frame's A attention frames -> [B, dim]."""
        w = self.weights(embeddings)  # [B, A]
        return torch.einsum("ba,bad->bd", w, embeddings)  # [B, dim]


class AudioNet(nn.Module):
    """Per-frame audio embedding: standardised features -> ``AudioEncoder`` on every attention frame ->
    ``TemporalAttention``. Call ``set_feature_stats`` with the training features before training."""

    def __init__(self, dim_in: int, cfg: AudioNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else AudioNetConfig()
        self.encoder = AudioEncoder(dim_in, cfg)
        self.attention = TemporalAttention(cfg.out_dim, cfg.attention_frames, cfg.leaky_slope)
        # Identity until set_feature_stats; buffers so that they are saved with the weights.
        self.register_buffer("feature_mean", torch.zeros(dim_in))  # [D]
        self.register_buffer("feature_std", torch.ones(dim_in))  # [D]

    @torch.no_grad()
    def set_feature_stats(self, features: Tensor, min_std: float = 1e-3) -> None:
        """Standardise inputs with the per-dimension mean and std of ``features`` [F, 2, D] (the training
        sequence). ``min_std`` keeps dimensions that are constant there (an unused phone) from blowing up."""
        _check_features(features)
        if features.shape[2] != self.encoder.dim_in:
            raise ValueError(f"features have D={features.shape[2]}, this net was built for D={self.encoder.dim_in}")
        flat = features.reshape(-1, features.shape[2]).to(self.feature_mean)  # [2F, D]
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(flat.std(0, unbiased=False).clamp_min(min_std))

    @property
    def right_context(self) -> int:
        """Frames after frame i whose features its embedding reads (0 when causal): a stream must wait
        this many frames of audio before frame i is final."""
        c = self.cfg
        return 0 if c.causal else c.window + (c.attention_frames - 1 - c.attention_frames // 2)

    @property
    def left_context(self) -> int:
        """Frames before frame i whose features its embedding reads."""
        c = self.cfg
        return 2 * c.window + c.attention_frames - 1 if c.causal else c.window + c.attention_frames // 2

    def attention_index(self, index: Tensor, num_frames: int) -> Tensor:
        """[B] frame indices -> [B, A] indices of their attention frames, clamped to [0, num_frames)."""
        a = self.cfg.attention_frames
        offsets = _frame_offsets(a // 2, a, self.cfg.causal, index.device)  # [A]
        return (index[:, None] + offsets).clamp(0, num_frames - 1)  # [B, A]

    def forward(self, features: Tensor, index: Tensor) -> Tensor:
        """Embeddings [B, out_dim] of frames ``index`` [B] of the [F, 2, D] ``features``.

        Each distinct frame among the attention frames is encoded once, so embedding a whole sequence
        costs one encoder pass per frame rather than A.
        """
        _check_features(features)
        if features.shape[2] != self.encoder.dim_in:
            raise ValueError(f"features have D={features.shape[2]}, this net was built for D={self.encoder.dim_in}")
        dtype = self.attention.mix.weight.dtype
        if features.dtype != dtype:
            raise ValueError(f"features are {features.dtype}, the net's parameters are {dtype}")
        _check_index(index, features.shape[0])
        index = index.to(device=features.device, dtype=torch.int64)
        att = self.attention_index(index, features.shape[0])  # [B, A]
        frames, inverse = torch.unique(att, return_inverse=True)  # [U], [B, A]
        windows = feature_windows(features, frames, self.cfg.window, self.cfg.causal)  # [U, W, 2, D]
        steps = (windows.flatten(1, 2) - self.feature_mean) / self.feature_std  # [U, S, D]
        emb = self.encoder(steps)  # [U, out_dim]
        return self.attention(emb[inverse])  # [B, out_dim]
