"""Does the alignment phase align a BatchNorm ResNet's streams, and does aligning help? Controls on digits.

The alignment study (``benchmarks.align_study``) on ``bn_classifier``'s network, data, flags and
protocol. The classifier has two aligned groups, both carried by BatchNorm weights: ``stem.0``,
the 16-channel stream, and ``layer2.0.downsample.0``, the 32-channel stream; the single-layer
groups are not aligned and are left out. Scores are on the classifier's held-out split (it has no
separate validation split).

Needs scikit-learn (``pip install -e ".[bench]"``).

    python -m benchmarks.bn_alignment_study       # 2 ratios x 3 seeds: ~2 min, one thread
"""

from __future__ import annotations

from . import align_study

NAME = "bn_alignment_study"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every setting for every ratio and seed; append the rows to ``--out`` and print the tables."""
    return align_study.main(NAME, "digits", __doc__, argv, eval_every=0)


if __name__ == "__main__":
    main()
