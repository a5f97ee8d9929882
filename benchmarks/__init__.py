"""Benchmarks of ``assl``: speed of the tool and of its result, and quality against baselines.

Every benchmark runs from the repository root as a module, and appends its measurements to a
JSON Lines file (``--out``, by default under ``benchmarks/results/``; see :mod:`benchmarks.results`)::

    python -m benchmarks.trace_slim          # tracing and slimming cost
    python -m benchmarks.trace_cost          # tracing and set-up cost against a base revision
    python -m benchmarks.step_overhead       # what the Pruner adds to a training step
    python -m benchmarks.inference_speed     # realized speedup of slimmed LEDSR
    python -m benchmarks.latency_budget      # pruning to a latency: does the model meet it?
    python -m benchmarks.quality --quick     # SR quality at equal budget against the baselines
    python -m benchmarks.bn_classifier       # the same on BatchNorm networks
    python -m benchmarks.report              # the docs' tables from the committed results

``--smoke`` runs any of them in seconds (the test suite does), writing under
``benchmarks/results/smoke/`` unless ``--out`` says otherwise.
"""
