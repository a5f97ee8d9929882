"""ASSL on a BatchNorm U-Net denoiser: the photos embedded in scikit-image, against the baselines.

A small U-Net (``benchmarks.networks.unet``; stride-2 ConvTranspose up, or with ``--up bilinear``
bilinear resizing + 1x1 conv) learns to remove Gaussian noise of sigma 25/255 from patches of the
six training photos (``benchmarks.tasks.denoise``), scored by PSNR on the two test photos. Every
method prunes it at each ratio at an equal number of optimizer steps (``benchmarks.methods``):
``assl``, ``assl_noalign``, one-shot ``l1`` + fine-tuning, Torch-Pruning's GroupNormPruner
(optional), and the slim architecture trained from scratch.

Needs scikit-image and pillow (``pip install -e ".[bench]"``), and torch-pruning for ``tp_groupnorm``.

    python -m benchmarks.bn_denoiser                   # 2 ratios x 3 seeds: ~7 min of one CPU thread
    python -m benchmarks.bn_denoiser --quick           # 1 seed: ~2 min
    python -m benchmarks.bn_denoiser --up bilinear --out benchmarks/results/bn_denoiser_bilinear.jsonl
"""

from __future__ import annotations

from . import compare

NAME = "bn_denoiser"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every method for every ratio and seed; append the rows to ``--out`` and print the report."""
    return compare.main(NAME, "denoise", __doc__, argv)


if __name__ == "__main__":
    main()
