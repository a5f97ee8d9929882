"""PSNR and SSIM on the luma channel, the way super-resolution papers report them.

Images are float tensors in ``[0, rgb_range]`` of shape ``(3, H, W)`` or ``(N, 3, H, W)``.
Both metrics crop ``scale`` pixels from every border first and work in float64. SR outputs
should be quantized to 8-bit levels (:func:`quantize`) before scoring, as the field does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma for RGB in [0, 1], giving Y on the [0, 255] scale (16..235).
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def _as_batch(img: torch.Tensor, what: str) -> torch.Tensor:
    if img.dim() == 3:
        img = img.unsqueeze(0)
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"{what} must have shape (3, H, W) or (N, 3, H, W), got {tuple(img.shape)}")
    return img


def quantize(img: torch.Tensor, rgb_range: float = 255.0) -> torch.Tensor:
    """Round to the 256 levels of an 8-bit image and clamp to ``[0, rgb_range]``."""
    step = rgb_range / 255.0
    return img.div(step).clamp(0, 255).round().mul(step)


def rgb_to_y(img: torch.Tensor, rgb_range: float = 255.0) -> torch.Tensor:
    """BT.601 luma ``16 + 65.481 R + 128.553 G + 24.966 B`` (RGB in [0, 1]) on the [0, 255] scale.

    ``(3, H, W)`` gives ``(1, H, W)``; ``(N, 3, H, W)`` gives ``(N, 1, H, W)``.
    """
    batched = img.dim() == 4
    x = _as_batch(img, "img")
    coeffs = torch.tensor(_Y_COEFFS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    y = (x / rgb_range * coeffs).sum(dim=1, keepdim=True) + _Y_OFFSET
    return y if batched else y.squeeze(0)


def _prepare(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float, y_only: bool) -> torch.Tensor:
    """Both images as one float64 (2, N, C, H', W') tensor on the 255 scale, borders cropped."""
    sr, hr = _as_batch(sr, "sr"), _as_batch(hr, "hr")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    h, w = sr.shape[-2:]
    if h <= 2 * scale or w <= 2 * scale:
        raise ValueError(f"image {h}x{w} is too small to crop {scale} pixels from each border")
    pair = torch.stack([sr, hr]).to(torch.float64)
    if y_only:
        pair = torch.stack([rgb_to_y(pair[0], rgb_range), rgb_to_y(pair[1], rgb_range)])
    else:
        pair = pair * (255.0 / rgb_range)
    return pair[..., scale : h - scale, scale : w - scale]


def psnr(sr: torch.Tensor, hr: torch.Tensor, *, scale: int, rgb_range: float = 255.0, y_only: bool = True) -> float:
    """PSNR in dB with peak 255, after cropping ``scale`` border pixels; ``math.inf`` when equal.

    On Y by default, on all three RGB channels with ``y_only=False``. For a batch it is the mean
    of the per-image PSNRs (an infinite one makes the mean infinite).
    """
    pair = _prepare(sr, hr, scale, rgb_range, y_only)
    mse = (pair[0] - pair[1]).pow(2).flatten(1).mean(dim=1)
    values = [math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m) for m in mse.tolist()]
    return sum(values) / len(values)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(sr: torch.Tensor, hr: torch.Tensor, *, scale: int, rgb_range: float = 255.0) -> float:
    """SSIM (Wang et al. 2004) on Y after cropping ``scale`` border pixels; 1.0 when equal.

    Gaussian window 11 with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering (no
    padding), population (not sample) variances, mean over the SSIM map; for a batch, the mean
    over all maps. Matches scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255)`` on the same Y images.
    """
    pair = _prepare(sr, hr, scale, rgb_range, y_only=True)
    x, y = pair[0], pair[1]
    size = 11
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs at least {size}x{size} pixels after the border crop, got {tuple(x.shape[-2:])}")
    g = _gaussian_window(size).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, size))
        return F.conv2d(t, g.view(1, 1, size, 1))

    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mu_x, mu_y = blur(x), blur(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = blur(x * x) - mu_xx
    var_y = blur(y * y) - mu_yy
    cov = blur(x * y) - mu_xy
    num = (2 * mu_xy + c1) * (2 * cov + c2)
    den = (mu_xx + mu_yy + c1) * (var_x + var_y + c2)
    return float((num / den).mean())
