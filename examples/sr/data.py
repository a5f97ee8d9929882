"""Super-resolution data: bicubic LR/HR pairs from DIV2K-style folders, any HR folder, or bundled photos.

Every dataset returns ``(lr, hr, name)``: float tensors ``(3, h, w)`` and ``(3, h * scale, w * scale)``
in ``[0, rgb_range]`` and the image's file stem. Images are decoded once and kept in memory as
uint8 (LR made on the fly is rounded to 8-bit levels, as an LR file on disk would be). Training
items are random aligned patches with random flips and 90-degree rotations, drawn from torch's
default generator for an index, or from a generator of their own for an ``(index, seed)`` key
(the pipeline's keys, so that a resumed run draws the patches the uninterrupted one would).

Without a dataset on disk, :class:`EmbeddedSR` trains and tests on real photographs that ship
inside the scikit-image wheel (read straight from the installed files, never downloaded).
"""

from __future__ import annotations

import abc
import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Bundled RGB photographs of scikit-image (file name -> role). The two motorcycle views are a
# stereo pair, so both stay in training; test photos are never used for training or validation.
DEFAULT_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut.png",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "ihc.png",
        "hubble_deep_field.jpg",
        "retina.jpg",
    ),
    "val": ("rocket.jpg",),
    "test": ("chelsea.png", "coffee.png"),
}
# Longest side of the bundled photos after the one-off downsizing. Only hubble_deep_field
# (1000x872) and retina (1411x1411) are larger; every other photo keeps its native size.
DEFAULT_MAX_SIDE = 800

Pair = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- images


def _read_uint8(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 ``(3, H, W)`` RGB tensor (grayscale, palette, RGBA converted)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _to_float(img: torch.Tensor, rgb_range: float) -> torch.Tensor:
    return img.to(torch.float32).mul_(rgb_range / 255.0)


def _to_uint8(img: torch.Tensor, rgb_range: float = 255.0) -> torch.Tensor:
    return img.mul(255.0 / rgb_range).clamp_(0, 255).round_().to(torch.uint8)


def load_image(path: str | Path, rgb_range: float = 255.0) -> torch.Tensor:
    """Read an image file as a float ``(3, H, W)`` RGB tensor in ``[0, rgb_range]``."""
    return _to_float(_read_uint8(path), rgb_range)


def save_image(img: torch.Tensor, path: str | Path, rgb_range: float = 255.0) -> None:
    """Write a float ``(3, H, W)`` tensor in ``[0, rgb_range]`` as an 8-bit RGB image (format from the suffix)."""
    from PIL import Image

    u8 = _to_uint8(img.detach().cpu(), rgb_range).permute(1, 2, 0).contiguous()
    Image.fromarray(u8.numpy()).save(path)


# --------------------------------------------------------------------------- degradation


def mod_crop(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the last two dimensions (H, W) down to multiples of ``scale`` (keeps the top-left corner)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = hr.shape[-2:]
    return hr[..., : h - h % scale, : w - w % scale]


def downscale(hr: torch.Tensor, scale: int, *, rgb_range: float = 255.0) -> torch.Tensor:
    """Bicubic downscaling ``(3, H, W) -> (3, H // scale, W // scale)`` (also ``(N, 3, H, W)``).

    The HR image is mod-cropped to a multiple of ``scale`` first, then resized with PyTorch's
    antialiased bicubic (``align_corners=False``) and clamped to ``[0, rgb_range]``. This
    approximates MATLAB's ``imresize(hr, 1/scale, 'bicubic')`` used to make DIV2K's LR images;
    the outputs are close to, not bit-identical with, MATLAB's.
    """
    if not hr.is_floating_point():
        raise TypeError(f"downscale expects a float tensor, got {hr.dtype}")
    x = mod_crop(hr, scale)
    h, w = x.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"image {tuple(hr.shape[-2:])} is smaller than the scale {scale}")
    batched = x.dim() == 4
    x = x if batched else x.unsqueeze(0)
    lr = F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    lr = lr.clamp_(0, rgb_range)
    return lr if batched else lr.squeeze(0)


def _fit_side(img: torch.Tensor, max_side: int) -> torch.Tensor:
    """Downsize a uint8 image so its longer side is ``max_side`` (antialiased bicubic), else return it."""
    h, w = img.shape[-2:]
    if max_side <= 0 or max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    out = F.interpolate(img.float().unsqueeze(0), size=size, mode="bicubic", antialias=True, align_corners=False)
    return _to_uint8(out.squeeze(0))


def _make_pair(hr: torch.Tensor, lr: torch.Tensor | None, scale: int, what: str) -> Pair:
    """Align a uint8 HR image with its LR file (or make one): LR ``(h, w)``, HR ``(h * scale, w * scale)``."""
    if lr is None:
        hr = mod_crop(hr, scale)
        if hr.shape[-1] == 0 or hr.shape[-2] == 0:
            raise ValueError(f"{what}: image is smaller than the scale {scale}")
        return _to_uint8(downscale(hr.float(), scale)), hr
    H, W = hr.shape[-2:]
    lh, lw = lr.shape[-2:]
    ok_h = lh in (H // scale, -(-H // scale))
    ok_w = lw in (W // scale, -(-W // scale))
    if not (ok_h and ok_w):
        raise ValueError(
            f"{what}: LR image is {lh}x{lw} but an x{scale} HR image of {H}x{W} needs about "
            f"{H // scale}x{W // scale}; wrong scale folder?"
        )
    h, w = min(lh, H // scale), min(lw, W // scale)
    return lr[:, :h, :w], hr[:, : h * scale, : w * scale]


# --------------------------------------------------------------------------- training patches


def random_crop_pair(
    lr: torch.Tensor, hr: torch.Tensor, scale: int, patch_size: int, *, generator: torch.Generator | None = None
) -> Pair:
    """Crop the same region from both: LR ``patch_size // scale`` square at ``(y, x)``, HR at ``(y, x) * scale``.

    ``patch_size`` is the HR patch size and must be a multiple of ``scale``.
    """
    if patch_size % scale:
        raise ValueError(f"patch_size {patch_size} must be a multiple of scale {scale}")
    p = patch_size // scale
    lh, lw = lr.shape[-2:]
    if hr.shape[-2:] != (lh * scale, lw * scale):
        raise ValueError(f"HR {tuple(hr.shape[-2:])} is not LR {(lh, lw)} times {scale}")
    if p < 1 or p > lh or p > lw:
        raise ValueError(f"HR patch {patch_size} does not fit an image of {lh * scale}x{lw * scale}")
    y = int(torch.randint(0, lh - p + 1, (1,), generator=generator))
    x = int(torch.randint(0, lw - p + 1, (1,), generator=generator))
    ps = p * scale
    return lr[..., y : y + p, x : x + p], hr[..., y * scale : y * scale + ps, x * scale : x * scale + ps]


def augment_pair(lr: torch.Tensor, hr: torch.Tensor, *, generator: torch.Generator | None = None) -> Pair:
    """Apply the same random horizontal flip, vertical flip and 90-degree rotation to both (each p = 0.5)."""
    hflip, vflip, rot = (bool(b) for b in torch.randint(0, 2, (3,), generator=generator))

    def op(t: torch.Tensor) -> torch.Tensor:
        if hflip:
            t = t.flip(-1)
        if vflip:
            t = t.flip(-2)
        if rot:
            t = t.rot90(1, (-2, -1))
        return t.contiguous()

    return op(lr), op(hr)


# --------------------------------------------------------------------------- data ranges


def _parse_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"image range {text!r} is not of the form FIRST-LAST, e.g. '1-800'")
    first, last = int(m.group(1)), int(m.group(2))
    if first < 1:
        raise ValueError(f"image range {text!r}: indices start at 1")
    if first > last:
        raise ValueError(f"image range {text!r}: first index {first} is after last index {last}")
    return first, last


def parse_data_range(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``"1-800/801-810"`` -> ``((1, 800), (801, 810))``: inclusive train and test index ranges."""
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError(f"--data_range {text!r} must be TRAIN/TEST ranges, e.g. '1-800/801-810'")
    return _parse_range(parts[0]), _parse_range(parts[1])


# --------------------------------------------------------------------------- datasets


class _PairDataset(Dataset, abc.ABC):
    """Shared caching, patch sampling and float conversion; subclasses provide names and raw pairs."""

    def __init__(
        self, scale: int, *, patch_size: int, train: bool, rgb_range: float, repeat: int, augment: bool
    ) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if train and patch_size % scale:
            raise ValueError(f"patch_size {patch_size} must be a multiple of scale {scale}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.scale = scale
        self.patch_size = patch_size
        self.train = train
        self.rgb_range = rgb_range
        self.repeat = repeat
        self.augment = augment
        self.names: list[str] = []
        self._cache: dict[int, Pair] = {}

    @abc.abstractmethod
    def _load(self, i: int) -> Pair:
        """The uint8 ``(lr, hr)`` pair of image ``i``, already aligned."""

    def pair(self, i: int) -> Pair:
        """The whole uint8 ``(lr, hr)`` pair of image ``i`` (loaded once, then cached)."""
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return self._cache[i]

    def __len__(self) -> int:
        return len(self.names) * (self.repeat if self.train else 1)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Item ``key``: an index, or ``(index, seed)`` to draw a training patch from a generator seeded
        with ``seed`` instead of torch's default one (the same patch for the same key, in any process)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(index)
        i = index % len(self.names)
        lr, hr = self.pair(i)
        if self.train:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            lr, hr = random_crop_pair(lr, hr, self.scale, self.patch_size, generator=generator)
            if self.augment:
                lr, hr = augment_pair(lr, hr, generator=generator)
        return _to_float(lr, self.rgb_range), _to_float(hr, self.rgb_range), self.names[i]


def _as_range(split_range: tuple[int, int] | str) -> tuple[int, int]:
    if isinstance(split_range, str):
        return _parse_range(split_range)
    first, last = (int(v) for v in split_range)
    return _parse_range(f"{first}-{last}")


class SRFolder(_PairDataset):
    """DIV2K-layout images ``first..last``: ``<dir_data>/DIV2K_train_HR/0001.png`` and, if present,
    ``<dir_data>/DIV2K_train_LR_bicubic/X<scale>/0001x<scale>.png``.

    The ``DIV2K_*`` folders may sit in ``dir_data`` or ``dir_data/DIV2K``; ``DF2K_train_HR`` /
    ``DF2K_train_LR_bicubic`` (in ``dir_data`` or ``dir_data/DF2K``) and ``*_valid_HR`` /
    ``*_valid_LR_bicubic`` folders are searched too. Missing LR files are made with
    :func:`downscale`. ``repeat`` multiplies the length in training mode only.
    """

    def __init__(
        self,
        dir_data: str | Path,
        split_range: tuple[int, int] | str,
        scale: int,
        *,
        patch_size: int = 96,
        train: bool = True,
        rgb_range: float = 255.0,
        repeat: int = 1,
        augment: bool = True,
    ) -> None:
        super().__init__(scale, patch_size=patch_size, train=train, rgb_range=rgb_range, repeat=repeat, augment=augment)
        root = Path(dir_data)
        folders = []
        for base in (root, root / "DIV2K", root / "DF2K"):
            for prefix in ("DIV2K", "DF2K"):
                for part in ("train", "valid"):
                    hr_dir = base / f"{prefix}_{part}_HR"
                    if hr_dir.is_dir():
                        folders.append((hr_dir, base / f"{prefix}_{part}_LR_bicubic" / f"X{scale}"))
        if not folders:
            raise FileNotFoundError(f"no DIV2K_train_HR/ or DF2K_train_HR/ folder in {root} or {root}/DIV2K")
        first, last = _as_range(split_range)
        self.hr_paths: list[Path] = []
        self.lr_paths: list[Path | None] = []
        for index in range(first, last + 1):
            name = f"{index:04d}"
            for hr_dir, lr_dir in folders:
                if (hr_dir / f"{name}.png").is_file():
                    lr_path = lr_dir / f"{name}x{scale}.png"
                    self.hr_paths.append(hr_dir / f"{name}.png")
                    self.lr_paths.append(lr_path if lr_path.is_file() else None)
                    self.names.append(name)
                    break
            else:
                searched = ", ".join(str(d) for d, _ in folders)
                raise FileNotFoundError(f"image {name}.png (range {first}-{last}) is in none of: {searched}")

    def _load(self, i: int) -> Pair:
        lr_path = self.lr_paths[i]
        lr = _read_uint8(lr_path) if lr_path is not None else None
        return _make_pair(_read_uint8(self.hr_paths[i]), lr, self.scale, str(self.hr_paths[i]))


class HRFolder(_PairDataset):
    """Whole-image evaluation on a folder of HR images (Set5/Set14/B100/Urban100 style), LR by :func:`downscale`.

    Files with an image suffix (png, jpg, jpeg, bmp, tif, tiff; any case) are taken in sorted order.
    """

    def __init__(self, path: str | Path, scale: int, rgb_range: float = 255.0) -> None:
        super().__init__(scale, patch_size=scale, train=False, rgb_range=rgb_range, repeat=1, augment=False)
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}")
        self.paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.paths:
            raise FileNotFoundError(f"no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images in {folder}")
        self.names = [p.stem for p in self.paths]

    def _load(self, i: int) -> Pair:
        return _make_pair(_read_uint8(self.paths[i]), None, self.scale, str(self.paths[i]))


# --------------------------------------------------------------------------- bundled photographs


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the bundled photos need scikit-image: pip install -e '.[examples]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _resolve_max_side(max_side: int | None) -> int:
    return DEFAULT_MAX_SIDE if max_side is None else max_side


@cache
def _embedded_uint8(file_name: str, max_side: int) -> torch.Tensor:
    path = _skimage_data_dir() / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed scikit-image; reinstall scikit-image>=0.19")
    return _fit_side(_read_uint8(path), max_side)


def _split_files(split: str) -> tuple[str, ...]:
    if split not in DEFAULT_SPLIT:
        raise ValueError(f"split must be one of {sorted(DEFAULT_SPLIT)}, got {split!r}")
    return DEFAULT_SPLIT[split]


def default_images(split: str, *, rgb_range: float = 255.0, max_side: int | None = None) -> list[torch.Tensor]:
    """HR float ``(3, H, W)`` tensors in ``[0, rgb_range]`` of the bundled photos of ``split``.

    ``split`` is ``"train"`` (6 photos), ``"val"`` (1) or ``"test"`` (2); see ``DEFAULT_SPLIT``.
    ``max_side=None`` means ``DEFAULT_MAX_SIDE`` (800): larger photos are downsized once so their
    longer side is 800 px; ``max_side=0`` keeps every photo at its native size.
    """
    side = _resolve_max_side(max_side)
    return [_to_float(_embedded_uint8(f, side), rgb_range) for f in _split_files(split)]


class EmbeddedSR(_PairDataset):
    """Like :class:`SRFolder` over the bundled photos of ``split`` (``"train"``, ``"val"`` or ``"test"``).

    LR images are made with :func:`downscale`; names are the file stems (``"chelsea"``, ...).
    ``max_side`` as in :func:`default_images`.
    """

    def __init__(
        self,
        split: str,
        scale: int,
        *,
        patch_size: int = 96,
        train: bool = True,
        rgb_range: float = 255.0,
        repeat: int = 1,
        augment: bool = True,
        max_side: int | None = None,
    ) -> None:
        super().__init__(scale, patch_size=patch_size, train=train, rgb_range=rgb_range, repeat=repeat, augment=augment)
        self.files = _split_files(split)
        self.max_side = _resolve_max_side(max_side)
        self.names = [Path(f).stem for f in self.files]

    def _load(self, i: int) -> Pair:
        return _make_pair(_embedded_uint8(self.files[i], self.max_side), None, self.scale, self.files[i])


__all__ = [
    "DEFAULT_MAX_SIDE",
    "DEFAULT_SPLIT",
    "IMAGE_EXTENSIONS",
    "EmbeddedSR",
    "HRFolder",
    "SRFolder",
    "augment_pair",
    "default_images",
    "downscale",
    "load_image",
    "mod_crop",
    "parse_data_range",
    "random_crop_pair",
    "save_image",
]
