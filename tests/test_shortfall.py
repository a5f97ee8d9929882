"""A ratio that removes much less than asked because the trace pins channels is said, with the reasons."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import assl

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
TINY = assl.Schedule(align_iters=0, reg_interval=2, reg_step=0.2, reg_limit=0.3, stabilize_iters=2)


def _mostly_group_norm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.GroupNorm(1, 32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.GroupNorm(1, 32),
        nn.ReLU(),
        nn.Conv2d(32, 4, 1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 1),
    )


def test_a_ratio_that_the_trace_mostly_pins_warns_with_the_main_reasons():
    with pytest.warns(UserWarning, match=r"ratio 0.5 removes (\d\.\d)% of the parameters; with nothing pinned it") as w:
        pruner = assl.Pruner(_mostly_group_norm(), X, ratio=0.5, schedule=TINY)
    message = str(w[0].message)
    assert "64 units in 2 group(s), e.g. `1` (GroupNorm) normalizes across channels" in message  # GroupNorm(1, C)
    graph = pruner.graph
    removed = graph.count_params() - sum(p.numel() for p in pruner.prune_now().parameters())
    assert f"removes {removed / graph.count_params():.1%}" in message  # what the Pruner then removes


def test_a_ratio_met_by_the_trace_or_kept_by_skips_does_not_warn():
    def model():
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 3, 1))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assl.Pruner(model(), X, ratio=0.5, schedule=TINY)
        assl.Pruner(model(), X, ratio=0.5, skip=["0"], schedule=TINY)  # the user's choice
    assert not [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
