"""Quality at equal budget: ASSL against the baselines on the SR example's LEDSR, same data, same steps.

From one dense LEDSR per seed, every method prunes to the same kept width and then fine-tunes,
with pruning + fine-tuning steps equal across methods (``benchmarks.methods``): ``assl``,
``assl_noalign``, ``l1``, ``l1_authors``, ``random``, ``scratch``, and when asked for
``assl_learned`` (learned widths at the same parameter count) and Torch-Pruning's
``tp_groupnorm``, ``tp_growingreg`` and ``tp_global``. ASSL runs with the library's defaults
(``Schedule.for_steps(--prune_iters)``, the shrink penalty, the same learning rate as every other
method) unless ``--schedule flags --penalty_form gradient`` and the ``--reg_*`` flags ask for the
paper's penalty with numbers of one's own.

Reports PSNR/SSIM (Y, border = scale) on the held-out test photos (or, with ``--eval_split val``,
on the validation photo that settings are chosen on), right after slimming and after fine-tuning,
params, MACs (1280x720 output), the liveness of ASSL's chosen channels before slimming, and
``assl`` minus every other method per seed.

    python -m benchmarks.quality --quick --ratio 0.5 --threads 1 --dense_cache runs/dense_cache
    python -m benchmarks.quality --dir_data DIV2K --device cuda     # the full settings
    python -m benchmarks.quality --smoke
"""

from __future__ import annotations

from . import compare

NAME = "quality"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every method for every seed and ratio; append the rows to ``--out`` and print the report."""
    return compare.main(NAME, "sr", __doc__, argv)


if __name__ == "__main__":
    main()
