"""PSNR / SSIM of the super-resolution example against hand computations and scikit-image."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))

from metrics import psnr, quantize, rgb_to_y, ssim


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).double()


def _noisy(hr: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (hr + sigma * torch.randn(hr.shape, generator=g, dtype=hr.dtype)).clamp(0, 255).round()


def test_rgb_to_y_bt601_values_and_shapes():
    white = torch.full((3, 2, 2), 255.0)
    black = torch.zeros(3, 2, 2)
    red = torch.zeros(3, 1, 1)
    red[0] = 255.0
    assert torch.allclose(rgb_to_y(white), torch.full((1, 2, 2), 235.0))
    assert torch.allclose(rgb_to_y(black), torch.full((1, 2, 2), 16.0))
    assert rgb_to_y(red).item() == pytest.approx(16 + 65.481)
    assert rgb_to_y(torch.full((3, 2, 2), 1.0), rgb_range=1.0).allclose(torch.full((1, 2, 2), 235.0))
    assert rgb_to_y(torch.zeros(5, 3, 4, 6)).shape == (5, 1, 4, 6)


def test_identical_images():
    hr = _rand(3, 40, 40)
    assert psnr(hr, hr.clone(), scale=2) == math.inf
    assert psnr(hr, hr.clone(), scale=2, y_only=False) == math.inf
    assert ssim(hr, hr.clone(), scale=2) == 1.0


@pytest.mark.parametrize("c", [0.5, 1.0, 3.0, 10.0])
def test_constant_luma_offset_gives_closed_form_psnr(c: float):
    hr = 20.0 + 200.0 * torch.rand(3, 30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # Equal R=G=B increments d move Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255.
    sr = hr + c * 255.0 / 219.0
    assert torch.allclose(rgb_to_y(sr) - rgb_to_y(hr), torch.full((1, 30, 30), c, dtype=torch.float64))
    assert psnr(sr, hr, scale=3) == pytest.approx(10 * math.log10(255.0**2 / c**2), abs=1e-9)
    # Same for the scaled range [0, 1].
    assert psnr(sr / 255, hr / 255, scale=3, rgb_range=1.0) == pytest.approx(10 * math.log10(255.0**2 / c**2))


def test_psnr_matches_hand_computed_mse():
    hr, sr = _rand(3, 12, 14, seed=4), _rand(3, 12, 14, seed=5)
    s = 2
    r, g, b = (sr - hr)[:, s:-s, s:-s]
    dy = (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    mse_y = float((dy**2).mean())
    assert psnr(sr, hr, scale=s) == pytest.approx(10 * math.log10(255.0**2 / mse_y), rel=1e-12)
    mse_rgb = float(((sr - hr)[:, s:-s, s:-s] ** 2).mean())
    assert psnr(sr, hr, scale=s, y_only=False) == pytest.approx(10 * math.log10(255.0**2 / mse_rgb), rel=1e-12)
    # Float32 input and rgb_range=1 give the same number.
    got = psnr((sr / 255).float(), (hr / 255).float(), scale=s, rgb_range=1.0)
    assert got == pytest.approx(10 * math.log10(255.0**2 / mse_y), abs=1e-4)


def test_batch_psnr_is_mean_of_per_image():
    hr = _rand(2, 3, 16, 16, seed=6)
    sr = _noisy(hr, 5.0)
    each = [psnr(sr[i], hr[i], scale=2) for i in range(2)]
    assert psnr(sr, hr, scale=2) == pytest.approx(sum(each) / 2)
    assert ssim(sr, hr, scale=2) == pytest.approx(sum(ssim(sr[i], hr[i], scale=2) for i in range(2)) / 2)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_border_crop_really_crops(scale: int):
    hr = _rand(3, 32, 32, seed=7)
    sr = hr.clone()
    sr[:, :scale, :] = 0
    sr[:, -scale:, :] = 255
    sr[:, :, :scale] = 17
    sr[:, :, -scale:] = 99
    assert psnr(sr, hr, scale=scale) == math.inf
    assert psnr(sr, hr, scale=scale, y_only=False) == math.inf
    assert ssim(sr, hr, scale=scale) == 1.0
    assert psnr(sr, hr, scale=scale - 1) < math.inf  # one pixel less of crop sees the error


def test_ssim_below_one_and_symmetric():
    hr = _rand(3, 48, 40, seed=8)
    noisy = _noisy(hr, 10.0)
    neg = 255.0 - hr
    for other in (noisy, neg):
        a, b = ssim(other, hr, scale=2), ssim(hr, other, scale=2)
        assert a < 1.0
        assert a == pytest.approx(b, abs=1e-12)
    assert ssim(neg, hr, scale=2) < ssim(noisy, hr, scale=2)


@pytest.mark.parametrize("scale", [2, 4])
def test_ssim_matches_scikit_image(scale: int):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(9)
    # A smooth image plus noise, so the SSIM map varies and is far from both 0 and 1.
    yy, xx = torch.meshgrid(torch.arange(60.0), torch.arange(70.0), indexing="ij")
    base = 128 + 60 * torch.sin(xx / 7)[None] * torch.cos(yy / 5)[None] + torch.tensor([[[-20.0]], [[0.0]], [[25.0]]])
    hr = (base + 8 * torch.randn(3, 60, 70, generator=g)).clamp(0, 255).round().double()
    sr = _noisy(hr, 12.0, seed=10)
    y_sr = rgb_to_y(sr)[0, scale:-scale, scale:-scale].numpy()
    y_hr = rgb_to_y(hr)[0, scale:-scale, scale:-scale].numpy()
    ref = structural_similarity(
        y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    got = ssim(sr, hr, scale=scale)
    assert 0.2 < ref < 0.99
    assert got == pytest.approx(ref, abs=1e-4)
    # float32 input on the [0, 1] range agrees as well.
    assert ssim((sr / 255).float(), (hr / 255).float(), scale=scale, rgb_range=1.0) == pytest.approx(ref, abs=1e-4)


def test_quantize_rounds_to_8bit_levels():
    x = torch.tensor([-3.0, 0.4, 0.6, 127.4, 254.7, 300.0])
    assert quantize(x).tolist() == [0.0, 0.0, 1.0, 127.0, 255.0, 255.0]
    assert torch.allclose(quantize(x / 255, rgb_range=1.0), quantize(x) / 255)


def test_bad_inputs():
    a = torch.zeros(3, 20, 20)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, torch.zeros(3, 20, 21), scale=2)
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.zeros(1, 20, 20), torch.zeros(1, 20, 20), scale=2)
    with pytest.raises(ValueError, match="too small"):
        psnr(a, a, scale=10)
    with pytest.raises(ValueError, match="SSIM needs"):
        ssim(a, a, scale=5)


def test_metrics_keep_work_on_the_input_device():
    # On the meta device every op runs but reading the number fails: no CPU tensor was mixed in.
    x = torch.zeros(3, 30, 30, device="meta")
    for fn in (psnr, ssim):
        with pytest.raises(RuntimeError, match="meta"):
            fn(x, x, scale=2)
