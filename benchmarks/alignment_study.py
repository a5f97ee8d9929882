"""Does the alignment phase align LEDSR's residual stream, and does aligning help? Controls on the validation photo.

The alignment study (``benchmarks.align_study``) on the quality benchmark's LEDSR, with its flags,
dense models and batches, scored on the **validation** photo by default: settings are chosen
here, and only the chosen one goes to the test photos. It also measures how much of the scales'
gradient the alignment term is (``--no-grad_ratio`` leaves that out).

    python -m benchmarks.alignment_study --quick --ratio 0.5 --dense_cache runs/dense_cache
    python -m benchmarks.alignment_study --smoke
"""

from __future__ import annotations

from . import align_study

NAME = "alignment_study"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every setting for every ratio and seed; append the rows to ``--out`` and print the tables."""
    return align_study.main(NAME, "sr", __doc__, argv, eval_split="val", grad_ratio=True)


if __name__ == "__main__":
    main()
