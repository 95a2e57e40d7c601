"""Pinhole intrinsics: the one place where they are rescaled to another image size."""

from __future__ import annotations

import numpy as np
import torch


def scale_intrinsics(K, scale: float):
    """``K`` [3, 3] (numpy or torch) for an image ``scale`` times as wide and high.

    Pixel coordinates are continuous with 0 at the image's top-left edge (talkgs' convention), so
    focal lengths and the principal point scale alike and nothing is shifted by half a pixel.
    """
    out = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
    out[:2] = out[:2] * scale
    return out
