"""Data pipeline of the super-resolution example: bicubic LR, aligned patches, folders, bundled photos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))

from data import (
    DEFAULT_SPLIT,
    EmbeddedSR,
    HRFolder,
    SRFolder,
    augment_pair,
    default_images,
    downscale,
    load_image,
    mod_crop,
    parse_data_range,
    random_crop_pair,
    save_image,
)


def _rand_u8(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_u8(h: int, w: int, seed: int) -> np.ndarray:
    """A textured but band-limited image: random coarse grid, bilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 6 + 2, w // 6 + 2, generator=g) * 255
    img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return img.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _block_pair(lh: int, lw: int, scale: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random LR image and the HR image whose every scale x scale block is one LR pixel."""
    lr = _rand_u8(lh, lw, seed)
    return lr, lr.repeat(scale, axis=0).repeat(scale, axis=1)


def _upsample_nearest(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return lr.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


# --------------------------------------------------------------------------- downscale


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(48, 60), (49, 61), (50, 67)])
def test_downscale_size_and_range(scale: int, size: tuple[int, int]):
    h, w = size
    hr = torch.from_numpy(_rand_u8(h, w, 0)).permute(2, 0, 1).float()
    assert mod_crop(hr, scale).shape == (3, h - h % scale, w - w % scale)
    lr = downscale(hr, scale)
    assert lr.shape == (3, h // scale, w // scale)
    assert lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 255
    lr1 = downscale(hr / 255, scale, rgb_range=1.0)
    assert lr1.max() <= 1 and torch.allclose(lr1 * 255, lr, atol=1e-3)
    assert downscale(hr.unsqueeze(0).repeat(2, 1, 1, 1), scale).shape == (2, 3, h // scale, w // scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_keeps_constant_image(scale: int):
    hr = torch.empty(3, 37, 41)
    hr[0], hr[1], hr[2] = 0.0, 117.0, 255.0
    lr = downscale(hr, scale)
    assert lr.shape == (3, 37 // scale, 41 // scale)
    assert torch.allclose(lr, hr[:, : 37 // scale, : 41 // scale], atol=1e-4)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_clamps_bicubic_overshoot(scale: int):
    hr = torch.zeros(3, 24, 24)
    hr[:, :, 12:] = 255.0  # a step edge: bicubic rings below 0 and above 255 next to it
    raw = F.interpolate(hr[None], scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    assert raw.min() < 0 and raw.max() > 255
    lr = downscale(hr, scale)
    assert lr.min() == 0 and lr.max() == 255
    assert torch.equal(lr, raw[0].clamp(0, 255))


def test_downscale_rejects_integers_and_tiny_images():
    with pytest.raises(TypeError):
        downscale(torch.zeros(3, 8, 8, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="smaller"):
        downscale(torch.zeros(3, 3, 8), 4)


# --------------------------------------------------------------------------- crop and augmentation


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_crop_and_augment_keep_lr_and_hr_aligned(scale: int):
    # HR pixel values encode their coordinates; LR is the exact block average (a stand-in for bicubic).
    lh, lw = 23, 29
    yy, xx = torch.meshgrid(torch.arange(lh * scale * 1.0), torch.arange(lw * scale * 1.0), indexing="ij")
    hr = torch.stack([yy, xx, yy * 1000 + xx])
    lr = F.avg_pool2d(hr.unsqueeze(0), scale)[0]
    patch = 6 * scale
    ops_seen = set()
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        lr_p, hr_p = random_crop_pair(lr, hr, scale, patch, generator=g)
        assert lr_p.shape == (3, 6, 6) and hr_p.shape == (3, patch, patch)
        # The HR patch is the region at the LR patch's coordinates times scale.
        y0, x0 = int(hr_p[0, 0, 0]), int(hr_p[1, 0, 0])
        assert y0 % scale == 0 and x0 % scale == 0
        assert torch.equal(lr_p, lr[:, y0 // scale : y0 // scale + 6, x0 // scale : x0 // scale + 6])
        assert torch.equal(F.avg_pool2d(hr_p.unsqueeze(0), scale)[0], lr_p)
        lr_a, hr_a = augment_pair(lr_p, hr_p, generator=g)
        assert torch.equal(F.avg_pool2d(hr_a.unsqueeze(0), scale)[0], lr_a)
        # Same pixels, rearranged by one of the 8 flips/rotations.
        assert torch.equal(hr_a[2].flatten().sort().values, hr_p[2].flatten().sort().values)
        ops_seen.add((hr_a[2, 0, 0].item(), hr_a[2, 0, 1].item()))
    assert len(ops_seen) >= 4  # several distinct transforms were drawn


def test_crop_is_deterministic_given_a_generator():
    lr, hr = (torch.from_numpy(a).permute(2, 0, 1) for a in _block_pair(20, 20, 2, 3))
    a = random_crop_pair(lr, hr, 2, 16, generator=torch.Generator().manual_seed(5))
    b = random_crop_pair(lr, hr, 2, 16, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    a = augment_pair(*a, generator=torch.Generator().manual_seed(6))
    b = augment_pair(*b, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_crop_errors():
    lr, hr = torch.zeros(3, 10, 10), torch.zeros(3, 20, 20)
    with pytest.raises(ValueError, match="multiple"):
        random_crop_pair(lr, hr, 2, 15)
    with pytest.raises(ValueError, match="does not fit"):
        random_crop_pair(lr, hr, 2, 24)
    with pytest.raises(ValueError, match="not LR"):
        random_crop_pair(lr, torch.zeros(3, 21, 20), 2, 8)


# --------------------------------------------------------------------------- data ranges


def test_parse_data_range():
    assert parse_data_range("1-800/801-810") == ((1, 800), (801, 810))
    assert parse_data_range(" 1 - 3 / 4-4 ") == ((1, 3), (4, 4))
    for bad, msg in [
        ("1-800", "TRAIN/TEST"),
        ("1-2/3-4/5-6", "TRAIN/TEST"),
        ("1-800/x-810", "FIRST-LAST"),
        ("1:800/801-810", "FIRST-LAST"),
        ("-5-800/801-810", "FIRST-LAST"),
        ("0-800/801-810", "start at 1"),
        ("1-800/810-801", "after last"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_data_range(bad)


# --------------------------------------------------------------------------- folders


def _fake_div2k(root: Path, n: int, size: tuple[int, int] = (50, 62)) -> list[np.ndarray]:
    hrs = [_smooth_u8(*size, seed=i) for i in range(n)]
    for i, hr in enumerate(hrs, start=1):
        _write(root / "DIV2K_train_HR" / f"{i:04d}.png", hr)
    return hrs


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_srfolder_without_lr_files_makes_bicubic_lr(tmp_path: Path, scale: int):
    hrs = _fake_div2k(tmp_path / "DIV2K", 4)
    test = SRFolder(tmp_path, (2, 3), scale, train=False)
    assert len(test) == 2 and test.names == ["0002", "0003"]
    lr, hr, name = test[0]
    h, w = 50 // scale, 62 // scale
    assert name == "0002" and lr.shape == (3, h, w) and hr.shape == (3, h * scale, w * scale)
    expected_hr = torch.from_numpy(hrs[1]).permute(2, 0, 1).float()[:, : h * scale, : w * scale]
    assert torch.equal(hr, expected_hr)
    assert torch.equal(lr, downscale(expected_hr, scale).round())  # LR rounded to 8-bit levels

    # Training patches: the LR patch is the bicubic downscale of the HR patch (away from the
    # patch border, where the kernel reaches outside the patch), with and without augmentation.
    patch = 8 * scale
    train = SRFolder(tmp_path, "1-4", scale, patch_size=patch, train=True, repeat=3)
    assert len(train) == 12
    torch.manual_seed(0)
    for index in range(len(train)):
        lr_p, hr_p, name = train[index]
        assert name == f"{index % 4 + 1:04d}"
        assert lr_p.shape == (3, 8, 8) and hr_p.shape == (3, patch, patch)
        inner = (slice(None), slice(2, -2), slice(2, -2))
        assert (downscale(hr_p, scale)[inner] - lr_p[inner]).abs().max() <= 0.51


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_srfolder_uses_lr_files(tmp_path: Path, scale: int):
    lh, lw = 13, 17
    pairs = [_block_pair(lh, lw, scale, seed) for seed in range(3)]
    for i, (lr, hr) in enumerate(pairs, start=1):
        _write(tmp_path / "DIV2K_train_HR" / f"{i:04d}.png", hr)
        _write(tmp_path / "DIV2K_train_LR_bicubic" / f"X{scale}" / f"{i:04d}x{scale}.png", lr)
    test = SRFolder(tmp_path, (1, 3), scale, train=False)
    for i, (lr, hr, _) in enumerate(test):
        assert torch.equal(lr, torch.from_numpy(pairs[i][0]).permute(2, 0, 1).float())  # the file, not downscale
        assert torch.equal(hr, _upsample_nearest(lr, scale))
    train = SRFolder(tmp_path, (1, 3), scale, patch_size=4 * scale, train=True, repeat=4)
    for seed in range(3):
        torch.manual_seed(seed)
        for lr_p, hr_p, _ in train:
            assert torch.equal(hr_p, _upsample_nearest(lr_p, scale))


def test_srfolder_handles_ceil_sized_lr_files_and_rejects_wrong_ones(tmp_path: Path):
    # MATLAB makes ceil(H / s) x ceil(W / s) LR images; both are cropped to the common aligned area.
    _write(tmp_path / "DIV2K_train_HR" / "0001.png", _rand_u8(31, 26, 0))
    _write(tmp_path / "DIV2K_train_LR_bicubic" / "X3" / "0001x3.png", _rand_u8(11, 9, 1))
    lr, hr, _ = SRFolder(tmp_path, (1, 1), 3, train=False)[0]
    assert lr.shape == (3, 10, 8) and hr.shape == (3, 30, 24)
    _write(tmp_path / "DIV2K_train_LR_bicubic" / "X2" / "0001x2.png", _rand_u8(11, 9, 1))
    with pytest.raises(ValueError, match="wrong scale"):
        SRFolder(tmp_path, (1, 1), 2, train=False)[0]


def test_srfolder_layouts_and_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="DIV2K_train_HR"):
        SRFolder(tmp_path, (1, 2), 2)
    for i in (1, 2):
        _write(tmp_path / "DF2K_train_HR" / f"{i:04d}.png", _rand_u8(24, 24, i))
    _write(tmp_path / "DIV2K" / "DIV2K_valid_HR" / "0003.png", _rand_u8(24, 24, 3))
    ds = SRFolder(tmp_path, (1, 3), 2, patch_size=16)
    assert ds.names == ["0001", "0002", "0003"]
    assert all(lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16) for lr, hr, _ in ds)
    with pytest.raises(FileNotFoundError, match=r"0004\.png"):
        SRFolder(tmp_path, (1, 4), 2)
    with pytest.raises(ValueError, match="multiple of scale"):
        SRFolder(tmp_path, (1, 2), 3, patch_size=16)
    with pytest.raises(ValueError, match="does not fit"):
        SRFolder(tmp_path, (1, 2), 2, patch_size=32)[0]
    with pytest.raises(IndexError):
        SRFolder(tmp_path, (1, 2), 2, train=False)[2]


def test_hrfolder_reads_common_formats(tmp_path: Path):
    rgb = _smooth_u8(40, 45, 0)
    _write(tmp_path / "b_bird.png", rgb)
    Image.fromarray(rgb).save(tmp_path / "a_baby.JPG", format="JPEG", quality=95, subsampling=0)
    _write(tmp_path / "c_comic.bmp", rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "d_gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 45), 7, np.uint8)])).save(tmp_path / "e_alpha.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = HRFolder(tmp_path, 4)
    assert ds.names == ["a_baby", "b_bird", "c_comic", "d_gray", "e_alpha"]
    ref = torch.from_numpy(rgb).permute(2, 0, 1).float()[:, :40, :44]
    for lr, hr, name in ds:
        assert lr.shape == (3, 10, 11) and hr.shape == (3, 40, 44), name
        assert torch.allclose(lr, downscale(hr, 4), atol=0.5 + 1e-4)
    assert torch.equal(ds[1][1], ref)
    assert torch.equal(ds[2][1], ref)  # bmp is lossless
    assert torch.equal(ds[3][1][0], ds[3][1][2])  # gray -> equal RGB channels
    assert torch.equal(ds[4][1], ref)  # alpha dropped
    assert (ds[0][1] - ref).abs().mean() < 3  # jpeg, lossy
    half = HRFolder(tmp_path, 2, rgb_range=1.0)
    assert half[1][1].max() <= 1.0 and torch.allclose(half[1][1] * 255, ref, atol=1e-4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no png"):
        HRFolder(tmp_path / "empty", 2)
    with pytest.raises(FileNotFoundError, match="no folder"):
        HRFolder(tmp_path / "missing", 2)


def test_load_and_save_image_round_trip(tmp_path: Path):
    img = torch.from_numpy(_rand_u8(9, 11, 4)).permute(2, 0, 1).float() / 255
    save_image(img, tmp_path / "x.png", rgb_range=1.0)
    back = load_image(tmp_path / "x.png", rgb_range=1.0)
    assert back.shape == (3, 9, 11) and torch.allclose(back, img, atol=1e-6)


# --------------------------------------------------------------------------- bundled photographs


def test_default_images_are_real_disjoint_photos():
    splits = {s: default_images(s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 1, 2]
    names = [set(DEFAULT_SPLIT[s]) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    fingerprints = []
    for imgs in splits.values():
        for img in imgs:
            assert img.dim() == 3 and img.shape[0] == 3 and min(img.shape[1:]) > 100
            assert max(img.shape[1:]) <= 800  # the default max_side
            assert img.min() >= 0 and img.max() <= 255 and img.std() > 20
            assert not torch.equal(img[0], img[1])  # colour, not grayscale
            assert len(torch.unique(img[:, ::3, ::3])) > 150  # a photograph, not a synthetic chart
            fingerprints.append(img[:, ::37, ::37].sum().item())
    assert len(set(fingerprints)) == len(fingerprints)
    small = default_images("val", max_side=320, rgb_range=1.0)[0]
    assert max(small.shape[1:]) == 320 and small.max() <= 1.0


def test_embedded_dataset_train_and_eval():
    train = EmbeddedSR("train", 4, patch_size=48, train=True, repeat=2)
    assert len(train) == 12 and train.names[0] == "astronaut"
    torch.manual_seed(1)
    first = [train[i] for i in (0, 5)]
    torch.manual_seed(1)
    again = [train[i] for i in (0, 5)]
    for (lr_a, hr_a, n_a), (lr_b, hr_b, n_b) in zip(first, again):
        assert n_a == n_b and torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
        assert lr_a.shape == (3, 12, 12) and hr_a.shape == (3, 48, 48)
        inner = (slice(None), slice(2, -2), slice(2, -2))
        assert (downscale(hr_a, 4)[inner] - lr_a[inner]).abs().max() <= 0.51
    test = EmbeddedSR("test", 3, train=False, repeat=5)
    assert len(test) == 2 and test.names == ["chelsea", "coffee"]
    lr, hr, name = test[0]
    assert name == "chelsea" and lr.shape == (3, 100, 150) and hr.shape == (3, 300, 450)
    with pytest.raises(ValueError, match="split"):
        EmbeddedSR("holdout", 2)
