"""``assl.count``: parameters and MACs per sample, the numbers ``Budget(params=)`` and ``Budget(macs=)`` count.

MACs are checked against PyTorch's own ``FlopCounterMode`` (a multiply-accumulate is two floating
point operations in its convolution and matrix-product formulas) on every kind of layer the
library prunes, at batch sizes above one.
"""

from __future__ import annotations

import pytest
import torch
from models import EDSR
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import assl


def torch_macs_per_sample(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / x.shape[0]


class _Tokens(nn.Module):
    """Linear layers on a (batch, tokens, features) input: every token is a position."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 20), nn.Linear(20, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


SHAPES = {
    "conv": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3)), (4, 3, 17, 13)),
    "strided conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 8, 5, stride=2), nn.Conv1d(8, 4, 1)), (3, 3, 40)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.Conv3d(6, 2, 1)), (2, 2, 5, 6, 7)),
    "transposed conv": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), nn.Conv2d(6, 3, 1)
        ),
        (3, 3, 9, 11),
    ),
    "grouped transposed conv": (
        lambda: nn.Sequential(nn.Conv2d(4, 8, 1), nn.ConvTranspose2d(8, 12, 3, stride=2, output_padding=1, groups=4)),
        (2, 4, 7, 7),
    ),
    "grouped conv": (
        lambda: nn.Sequential(nn.Conv2d(4, 12, 3, groups=2), nn.Conv2d(12, 8, 3, groups=4)),
        (5, 4, 12, 12),
    ),
    "depthwise conv": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 16, 1), nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.ReLU(), nn.Conv2d(32, 4, 1)
        ),
        (2, 3, 10, 10),
    ),
    "linear": (lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 7)), (6, 10)),
    "linear on tokens": (_Tokens, (3, 9, 12)),
    "conv, flatten, linear": (
        lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)),
        (8, 1, 8, 8),
    ),
    "EDSR": (lambda: EDSR(n_resblocks=2, n_feats=8), (2, 3, 12, 12)),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_macs_per_sample_are_what_torchs_flop_counter_counts_over_two(name):
    make, shape = SHAPES[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    assert x.shape[0] > 1
    counts = assl.count(model, x)
    assert counts.macs == pytest.approx(torch_macs_per_sample(model, x), abs=0.5)
    assert counts.macs == assl.count(model, x[:1]).macs  # per sample: the batch size changes nothing
    assert counts.params == sum(p.numel() for p in model.parameters())


def test_count_is_a_small_record_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = assl.count(model, torch.randn(4, 3, 16, 16))
    assert counts == assl.Counts(params=8 * 27 + 8 + 16 + 3 * 8 + 3, macs=16 * 16 * (8 * 27 + 3 * 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    with pytest.raises(assl.TraceError, match="has no prunable layer"):
        assl.count(nn.ReLU(), torch.randn(2, 3))


def test_a_model_under_a_pruner_counts_as_the_plain_model_it_folds_into():
    torch.manual_seed(0)
    model, x = EDSR(n_resblocks=2, n_feats=8), torch.randn(2, 3, 12, 12)
    dense = assl.count(model, x)
    assl.Pruner(model, x, ratio=0.5)
    assert assl.count(model, x) == dense  # the scales fold into the weights: nothing counted twice


def test_a_mac_budget_is_per_sample_whatever_the_batch_of_the_example_inputs():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 12, 12)
    dense = assl.count(EDSR(n_resblocks=2, n_feats=16), x)
    budget = assl.Budget(macs=dense.macs // 2)
    pruners = [assl.Pruner(EDSR(n_resblocks=2, n_feats=16), x[:n], budget=budget) for n in (1, 4)]
    assert pruners[0].removed == pruners[1].removed and any(pruners[0].removed.values())
    for pruner in pruners:
        small = pruner.prune_now()
        assert assl.count(small, x).macs <= dense.macs // 2 < dense.macs
    assert pruners[1].graph.samples == 4 and pruners[1].graph.count_macs() == dense.macs


def test_extra_inputs_add_no_macs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1))
    x = torch.randn(1, 3, 16, 16)
    alone = assl.trace(model, x).count_macs()
    assert assl.trace(model, x, extra_inputs=[torch.randn(2, 3, 32, 32)]).count_macs() == alone
