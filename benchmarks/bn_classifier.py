"""ASSL on a BatchNorm ResNet classifier: scikit-learn's handwritten digits, against the baselines.

A small ResNet (``benchmarks.networks.digits_resnet``) is trained on the 8x8 digit scans of
``sklearn.datasets.load_digits`` (``benchmarks.tasks.digits``), then pruned at each ratio by every
method at an equal number of optimizer steps (``benchmarks.methods``): ``assl``,
``assl_noalign``, one-shot ``l1`` + fine-tuning, Torch-Pruning's GroupNormPruner (optional), and
the slim architecture trained from scratch. Every method trains with Adam at ``--lr`` on all
parameters; each method's last phase anneals it to zero on a cosine. Reports test accuracy right
after slimming and after fine-tuning, params, MACs per image and, for ASSL, the liveness of the
chosen channels before slimming (RMS of the chosen over the kept channels where they are read).

Needs scikit-learn (``pip install -e ".[bench]"``), and torch-pruning for ``tp_groupnorm``.

    python -m benchmarks.bn_classifier                 # 2 ratios x 3 seeds: ~6 min of one CPU thread
    python -m benchmarks.bn_classifier --quick         # 1 seed: ~2 min
"""

from __future__ import annotations

from . import compare

NAME = "bn_classifier"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every method for every ratio and seed; append the rows to ``--out`` and print the report."""
    return compare.main(NAME, "digits", __doc__, argv)


if __name__ == "__main__":
    main()
