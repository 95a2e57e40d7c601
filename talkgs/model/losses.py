"""Stateless image losses. Weights live in the stage config, never here."""

from __future__ import annotations

import torch


def _nchw(img: torch.Tensor) -> torch.Tensor:
    return img.permute(2, 0, 1)[None]  # [H, W, C] -> [1, C, H, W]


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over pixels with weight > 0; pred, target [H, W, C]; weight [H, W, 1]."""
    return ((pred - target).abs() * weight).sum() / (weight.sum() * pred.shape[-1]).clamp_min(1.0)


def dssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11) -> torch.Tensor:
    """(1 - SSIM) / 2 of [H, W, 3] images in [0, 1], with kornia's SSIM (Gaussian window)."""
    from kornia.losses import ssim_loss

    return ssim_loss(_nchw(pred), _nchw(target), window_size=window, reduction="mean")


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11) -> torch.Tensor:
    """SSIM of [H, W, 3] images in [0, 1]."""
    from kornia.metrics import ssim as kornia_ssim

    return kornia_ssim(_nchw(pred), _nchw(target), window_size=window).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB of [H, W, C] images in [0, 1], over the pixels where mask [H, W, 1] is set."""
    err = (pred - target) ** 2
    if mask is None:
        mse = err.mean()
    else:
        mse = (err * mask).sum() / (mask.sum() * pred.shape[-1]).clamp_min(1.0)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
