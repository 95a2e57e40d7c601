"""Audio- and expression-driven deformation of the static head's Gaussians (TalkingGaussian's two branches).

The face branch moves, rotates and rescales every face Gaussian; the mouth branch only translates the
mouth-interior Gaussians, driven by audio alone (the inside of the mouth has no blink or brow to follow).
Both query a tri-plane hash grid at the canonical means, so neighbouring Gaussians share features and move
coherently, and both weight the driving signals per Gaussian with channel attention: a Gaussian on the eyelid
learns to attend to the blink channels, one on the lip to the audio. The last layer of each field starts at
zero, so an untrained field leaves the static head exactly as it is and training starts from the fitted head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkgs.model.gaussians import GaussianModel
from talkgs.model.hashgrid import HashGridConfig, TriPlaneHashEncoding
from talkgs.utils.cpu_ext import load_cpu_ext


@dataclass
class MotionFieldConfig:
    """Sizes of a deformation field; the defaults follow TalkingGaussian at CPU-friendly widths."""

    hashgrid: HashGridConfig = field(default_factory=HashGridConfig)
    """The tri-plane hash-grid encoding of the canonical means."""
    hidden: int = 64
    """Width of every hidden layer, and the size of the per-Gaussian feature."""
    layers: int = 2
    """Hidden layers of each MLP (the one after the encoding and the one producing the offsets), >= 1."""
    audio_dim: int = 32
    """A, the size of the per-frame audio embedding (``AudioNetConfig.out_dim``)."""
    expr_dim: int = 2
    """E, the expression channels (``HeadConfig.expression``, set from it); the face field only."""
    offset_scale: float = 1e-2
    """Factor on the raw network output (TalkingGaussian's ``* 1e-2``): keeps early offsets small next to the
    head's size, so the deformation grows from the static head instead of scattering it."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "audio_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.expr_dim < 0:
            raise ValueError(f"expr_dim must be >= 0, got {self.expr_dim}")
        if not self.offset_scale > 0:
            raise ValueError(f"offset_scale must be > 0, got {self.offset_scale}")


@dataclass
class MotionDeltas:
    """Per-Gaussian offsets from a motion field; a leading [B] on the offsets when the frames were batched."""

    d_means: Tensor  # [N, 3] or [B, N, 3], added to the means
    d_quats: Tensor | None  # [N, 4] or [B, N, 4], added to the raw quaternions; None: rotations unchanged
    d_scales: Tensor | None  # [N, 3] or [B, N, 3], added to the log-scales; None: scales unchanged
    attention_audio: Tensor  # [N, A] per-Gaussian weights in (0, 1) on the audio channels
    attention_expr: Tensor | None  # [N, E] weights on the expression channels; None for the mouth field
    carried: Tensor | None = None
    """[N, 3] or [B, N, 3]: the part of ``d_means`` that the mouth code prescribes instead of the field learning
    it (``HeadConfig.jaw_carry_m``), so that the offset regulariser leaves it alone; None: all learned."""


def _mlp(dim_in: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` Linear + ReLU blocks, ``dim_in`` -> ``hidden``."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        # In place: the Linear before it does not need its own output for the backward, and the activations of
        # a batched field (B frames x N Gaussians x hidden) are the largest tensors of a render.
        blocks += [nn.Linear(dim_in if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks)


def _zero_linear(dim_in: int, dim_out: int) -> nn.Linear:
    """A linear layer that outputs exactly zero until trained: the untrained field is the identity deformation."""
    layer = nn.Linear(dim_in, dim_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def head_first_layer(layer: nn.Linear, shared: Tensor, attention: Tensor, signal: Tensor) -> Tensor:
    """``layer(cat([h, attention * signal[b]]))`` for every frame b, without building that [B, N, hidden + S]
    input: the per-Gaussian part, ``shared = head_shared_term(layer, h)``, goes through the layer once, the
    per-frame part as one [N, S] x [S, B * out] product. Same result up to round-off, without the copy of the
    per-Gaussian feature into every frame's input or its product with the layer's weights.

    shared: [N, out]; attention: [N, S] per-Gaussian weights; signal: [B, S] per frame.
    Returns the layer's output (before its activation) as [N, B, out], the layout the product gives: the rest of
    the MLP works on the last dimension, so only its small final output needs transposing to [B, N, ...].
    """
    n, out = shared.shape
    b, s = signal.shape
    w_s = layer.weight[:, layer.in_features - s:]  # [out, S]
    per_frame = (signal[:, :, None] * w_s.T[None]).transpose(0, 1).reshape(s, b * out)  # [S, B * out]
    return (attention @ per_frame).view(n, b, out).add_(shared[:, None])


def head_shared_term(layer: nn.Linear, h: Tensor) -> Tensor:  # [N, hidden] -> [N, out]
    """The part of the head's first layer that sees only the per-Gaussian feature ``h`` (and the bias)."""
    return F.linear(h, layer.weight[:, :h.shape[1]], layer.bias)


def _check_signal(name: str, value: Tensor, dim: int, like: Tensor) -> Tensor:  # [D] or [B, D] -> [B, D]
    if not isinstance(value, Tensor) or value.ndim not in (1, 2) or value.shape[-1] != dim:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape [{dim}] or [B, {dim}], got {shape}")
    if value.dtype != like.dtype or value.device != like.device:
        raise ValueError(f"{name} must be {like.dtype} on {like.device} like the means, got {value.dtype} on "
                         f"{value.device}")
    return value if value.ndim == 2 else value[None]


class _FieldBase(nn.Module):
    """The shared trunk: hash-grid encoding -> MLP -> per-Gaussian feature, and the channel attention.

    Everything that depends on the Gaussians but not on the frame (``_per_gaussian``) is computed once per call,
    whatever the number of frames, and kept between calls while gradients are off and neither the means nor
    any parameter has changed: a render or the viewer then pays only the per-frame part (measured on the CPU at
    16k Gaussians, one thread: the trunk took 46 ms per call, the rest of the face field 9 ms per frame).
    """

    def __init__(self, config: MotionFieldConfig, impl: str) -> None:
        super().__init__()
        self.config = config
        self.impl = impl
        self.encoding = TriPlaneHashEncoding(config.hashgrid, impl=impl)
        self.spatial = _mlp(self.encoding.out_dim, config.hidden, config.layers)
        self.audio_attention = nn.Linear(config.hidden, config.audio_dim)
        self._cached: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    def _attention(self, h: Tensor) -> Tensor:  # [N, hidden] -> [N, S], S the channels the head weighs
        return torch.sigmoid(self.audio_attention(h))

    def _per_gaussian(self, means: Tensor) -> tuple[Tensor, Tensor]:
        """(the head's first-layer term of the per-Gaussian feature [N, hidden], the attention [N, S])."""
        if not isinstance(means, Tensor) or means.ndim != 2 or means.shape[1] != 3:
            shape = tuple(means.shape) if isinstance(means, Tensor) else type(means).__name__
            raise ValueError(f"means must have shape [N, 3], got {shape}")
        # In-place updates (optimiser steps, load_state_dict) bump a tensor's version, so this key goes stale with
        # any change to what the result depends on.
        key = tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in (means, *self.parameters()))
        if not torch.is_grad_enabled() and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        h = self.spatial(self.encoding(means))  # [N, hidden]
        result = (head_shared_term(self.head[0], h), self._attention(h))
        self._cached = (key, tuple(t.detach() for t in result)) if not torch.is_grad_enabled() else None
        return result

    def _head(self, shared: Tensor, attention: Tensor, signal: Tensor) -> Tensor:  # -> [B, N, out]
        """The head over every frame of ``signal`` [B, S] and Gaussian: the compiled kernel
        (``talkgs/csrc/fields.cpp``) when gradients are off on the CPU, else its PyTorch twin."""
        ext = None
        if not torch.is_grad_enabled() and self.impl != "torch" and shared.device.type == "cpu" \
                and shared.dtype == torch.float32:
            ext = load_cpu_ext("fields")
        if ext is None:
            x = head_first_layer(self.head[0], shared, attention, signal)  # [N, B, hidden]
            return self.out(self.head[1:](x)).transpose(0, 1)
        hidden = [m for m in self.head[1:] if isinstance(m, nn.Linear)]
        return ext.head_forward(shared.contiguous(), attention.contiguous(), signal.contiguous(),
                                self.head[0].weight.contiguous(), [m.weight.contiguous() for m in hidden],
                                [m.bias.contiguous() for m in hidden], self.out.weight.contiguous(),
                                self.out.bias.contiguous())


class FaceMotionField(_FieldBase):
    """Deformation of the face branch from audio and expression: offsets of means, raw quats and log-scales.

    ``impl``: "torch" runs the PyTorch code throughout; otherwise the hash grid follows ``TriPlaneHashEncoding`` and
    the per-frame head runs compiled on the CPU when gradients are off.
    """

    def __init__(self, config: MotionFieldConfig | None = None, impl: str = "auto") -> None:
        config = config if config is not None else MotionFieldConfig()
        super().__init__(config, impl)
        c = config
        self.expr_attention = nn.Linear(c.hidden, c.expr_dim)
        self.head = _mlp(c.hidden + c.audio_dim + c.expr_dim, c.hidden, c.layers)
        self.out = _zero_linear(c.hidden, 3 + 4 + 3)

    def forward(
        self,
        means: Tensor,  # [N, 3] canonical means, detached by the caller
        audio: Tensor,  # [A] or [B, A]
        expression: Tensor,  # [E] or [B, E]
    ) -> MotionDeltas:
        """Offsets for one frame ([A], [E]: offsets [N, ...]) or B frames ([B, A], [B, E]: offsets [B, N, ...]).

        Raises:
            ValueError: bad shapes, or signals whose dtype or device differ from the means'.
        """
        c = self.config
        audio_b = _check_signal("audio", audio, c.audio_dim, means)  # [B, A]
        expr_b = _check_signal("expression", expression, c.expr_dim, means)  # [B, E]
        if audio_b.shape[0] != expr_b.shape[0] or audio.ndim != expression.ndim:
            raise ValueError(f"audio and expression must both be one frame or the same B frames, got "
                             f"{tuple(audio.shape)} and {tuple(expression.shape)}")
        shared, attention = self._per_gaussian(means)  # [N, hidden], [N, A + E]
        # The head sees [h, att_audio * audio, att_expr * expression] per frame and Gaussian.
        raw = self._head(shared, attention, torch.cat([audio_b, expr_b], 1)) * c.offset_scale  # [B, N, 10]
        if audio.ndim == 1:
            raw = raw[0]
        d_means, d_quats, d_scales = raw.split((3, 4, 3), dim=-1)
        att_audio, att_expr = attention.split((c.audio_dim, c.expr_dim), dim=1)
        return MotionDeltas(d_means, d_quats, d_scales, att_audio, att_expr)

    def _attention(self, h: Tensor) -> Tensor:  # [N, hidden] -> [N, A + E]
        return torch.sigmoid(torch.cat([self.audio_attention(h), self.expr_attention(h)], dim=1))


class MouthMotionField(_FieldBase):
    """Deformation of the mouth-interior Gaussians from audio alone: position offsets only.

    The forward takes no expression, so blinks and brows cannot move the teeth; ``d_quats``, ``d_scales`` and
    ``attention_expr`` of its result are None (rotations and scales stay those of the static head).
    """

    def __init__(self, config: MotionFieldConfig | None = None, impl: str = "auto") -> None:
        config = config if config is not None else MotionFieldConfig()
        super().__init__(config, impl)
        c = config
        self.head = _mlp(c.hidden + c.audio_dim, c.hidden, c.layers)
        self.out = _zero_linear(c.hidden, 3)

    def forward(
        self,
        means: Tensor,  # [N, 3] canonical means, detached by the caller
        audio: Tensor,  # [A] or [B, A]
    ) -> MotionDeltas:
        """Offsets for one frame ([A]: d_means [N, 3]) or B frames ([B, A]: d_means [B, N, 3]).

        Raises:
            ValueError: bad shapes, or audio whose dtype or device differ from the means'.
        """
        c = self.config
        audio_b = _check_signal("audio", audio, c.audio_dim, means)  # [B, A]
        shared, att_audio = self._per_gaussian(means)  # [N, hidden], [N, A]
        d_means = self._head(shared, att_audio, audio_b) * c.offset_scale  # [B, N, 3]; it sees [h, att_audio * audio]
        if audio.ndim == 1:
            d_means = d_means[0]
        return MotionDeltas(d_means, None, None, att_audio, None)


def apply_deltas(model: GaussianModel, deltas: MotionDeltas) -> dict[str, Tensor]:
    """The activated Gaussians of ``model`` deformed by ``deltas``, differentiable w.r.t. both.

    means + d_means, normalise(raw quats + d_quats), exp(log-scales + d_scales); opacities and colours are
    unchanged. With one frame the result has ``GaussianModel.activated()``'s shapes and keys, ready for
    ``rasterize``; with B frames every entry gains a leading [B] (opacities and colours as expanded views),
    and frame b is ``{k: v[b] for k, v in result.items()}``.

    Raises:
        ValueError: offsets whose shape does not match the model's N Gaussians.
    """
    p = model.params
    n = model.num_gaussians
    batch = deltas.d_means.shape[:-2] if deltas.d_means.ndim == 3 else ()
    for name, width in (("d_means", 3), ("d_quats", 4), ("d_scales", 3)):
        value = getattr(deltas, name)
        if value is not None and tuple(value.shape) != (*batch, n, width):
            expected = "[B, " if batch else "["
            raise ValueError(f"{name} must have shape {expected}{n}, {width}] for this model and d_means "
                             f"{tuple(deltas.d_means.shape)}, got {tuple(value.shape)}")
    quats, scales = p["quats"], p["scales"]
    quats = F.normalize(quats if deltas.d_quats is None else quats + deltas.d_quats, dim=-1)
    scales = torch.exp(scales if deltas.d_scales is None else scales + deltas.d_scales)
    colors = torch.cat([p["sh0"], p["shN"]], dim=1)  # [N, K, 3]
    return {
        "means": p["means"] + deltas.d_means,
        # Expanded views, so that a mouth field's batched positions come with matching rotations and scales.
        "quats": quats.expand(*batch, n, 4),
        "scales": scales.expand(*batch, n, 3),
        "opacities": torch.sigmoid(p["opacities"]).expand(*batch, n),
        "colors": colors.expand(*batch, *colors.shape),
    }
