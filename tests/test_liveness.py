"""Liveness is measured where the chosen channels are read, and what keeps them alive there is penalized.

The issue's cases reported the chosen channels as silent (~1e-4 at the carrier) while slimming
changed the output by 125-273%: a hand-written per-channel affine after the conv, a hand-written
standardization, a channels-last LayerNorm under ``approximate_norms=True``. Measured at the
input of the layers that read them, those channels are alive until every per-channel Parameter
on the way is driven to zero with the carrier; a buffer no penalty reaches makes the group keep
its channels, with the reason.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from models import CASES, FrozenBNResNet
from torch import nn
from util import max_rel_err

import assl
from assl._slim import slimmed_copy
from assl.pruning._liveness import ALIVE
from assl.pruning._penalty import apply_penalty

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
TINY = assl.Schedule(align_iters=0, reg_interval=2, reg_step=0.2, reg_limit=0.3, stabilize_iters=2)
COLLAPSE_CASES = ("edsr_x2", "rcan", "mobilenetv2", "densenet", "unet", "vgg", "group_norm", "norm_act")


class _Between(nn.Module):
    """stem -> a -> ``between`` -> relu -> reader: per-channel code between a's carrier and its reader."""

    def __init__(self, between: str):
        super().__init__()
        torch.manual_seed(0)
        self.between = between
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.reader = nn.Conv2d(8, 3, 3, padding=1)
        self.w = nn.Parameter(torch.rand(8) + 0.5)
        self.b = nn.Parameter(torch.rand(8) + 0.5)
        self.register_buffer("mean", -torch.rand(8) - 0.5)  # (0 - mean) / std > 0: alive after ReLU
        self.register_buffer("std", torch.rand(8) + 0.5)
        self.ln = nn.LayerNorm(8)
        with torch.no_grad():
            self.ln.bias.uniform_(0.5, 1.0)

    def forward(self, x):
        h = self.a(torch.relu(self.stem(x)))
        if self.between == "affine":
            h = h * self.w.view(1, -1, 1, 1) + self.b.view(1, -1, 1, 1)
        elif self.between == "standardize_by_buffers":
            h = (h - self.mean.view(1, -1, 1, 1)) / (self.std.view(1, -1, 1, 1) + 1e-5)
        elif self.between == "standardize_by_statistics":
            h = (h - h.mean((2, 3), keepdim=True)) / (h.std((2, 3), keepdim=True) + 1e-5)
        elif self.between == "layer_norm_channels_last":
            h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.reader(torch.relu(h))


def _fade(pruner, factor, kinds=("g",)):
    """Multiply the chosen entries of the carriers of ``kinds`` by ``factor`` (what a penalty leaves)."""
    carriers = [c for c in pruner._selection.all_layers() if c.kind in kinds]
    apply_penalty(carriers, 1 - factor, "shrink")


@pytest.mark.parametrize(
    "between", ["affine", "standardize_by_statistics", "layer_norm_channels_last"], ids=lambda b: b
)
def test_chosen_channels_are_alive_where_read_until_every_parameter_on_the_way_is_silenced(between):
    approximate = between == "layer_norm_channels_last"
    model = _Between(between).eval()
    pruner = assl.Pruner(model, X, ratio={"a": 0.5}, schedule=TINY, approximate_norms=approximate)
    kinds = {kind for _, kind in pruner.carriers("a")}
    if between in ("affine", "layer_norm_channels_last"):  # the affine's w and b, the norm's weight and bias
        assert kinds == {"g", "param"} and len(pruner.carriers("a")) == 3
    _fade(pruner, 1e-4)  # only the scale g: the carrier's output is silent, not what the reader reads
    assert pruner.liveness()["a"] > ALIVE * 10
    small = slimmed_copy(model, pruner.graph, pruner.plan(), X, check=not approximate)
    assert max_rel_err(model, small, X) > 0.01  # slimming would change the output: liveness says so
    _fade(pruner, 0.0, kinds=("g", "param"))  # everything on the way driven to zero
    assert pruner.liveness()["a"] == 0.0
    small = slimmed_copy(model, pruner.graph, pruner.plan(), X, check=not approximate)
    if not approximate:
        assert max_rel_err(model, small, X) < 1e-5


def test_a_buffer_on_the_way_keeps_its_group_whole_with_the_reason():
    model = _Between("standardize_by_buffers")
    with pytest.warns(UserWarning, match=r"group a keeps all its channels: `mean` .*buffer.* where `reader` read"):
        with pytest.raises(ValueError, match="no penalty can silence"):
            assl.Pruner(model, X, ratio={"a": 0.5}, schedule=TINY)
    pruner = assl.Pruner(_Between("standardize_by_buffers"), X, ratio=0.5, schedule=TINY)
    assert pruner.removed["a"] == 0 and pruner.removed["stem"] > 0


def test_frozen_batchnorm_nets_are_refused_with_the_buffers_named():
    with pytest.warns(
        UserWarning, match=r"group conv1 keeps all its channels: `bn1.running_var`, `bn1.weight`, `bn1.bias`"
    ):
        with pytest.raises(ValueError, match="no penalty can silence"):
            assl.Pruner(FrozenBNResNet(), X, ratio=0.5, schedule=TINY)


def test_a_depthwise_bias_between_carrier_and_reader_is_penalized():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 3, 1)
    ).eval()
    pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    assert ("1.bias", "param") in pruner.carriers("0")
    _fade(pruner, 0.0)
    assert pruner.liveness()["0"] > ALIVE  # the depthwise bias: alive where `3` reads
    _fade(pruner, 0.0, kinds=("g", "param"))
    assert pruner.liveness()["0"] == 0.0


def _collapse_warnings(case, silence_kept: bool) -> tuple[str, list[str], str]:
    """Slim ``case`` after a schedule that silenced the chosen channels of every group, and, with
    ``silence_kept``, all the channels of its first group too; the group, the collapse warnings,
    and the group's row of the summary before slimming."""
    model = case.build()
    pruner = assl.Pruner(model, case.inputs(0), ratio=0.5, schedule=TINY)
    pruner._step = TINY.bounds(False)[2]  # the schedule is over
    group = next(g for g, chosen in pruner._selection.chosen.items() if chosen)
    with torch.no_grad():
        for layer in pruner._selection.all_layers():  # what a penalty that did its job leaves
            layer.scale[layer.scale_idx] = 0
            if layer.bias is not None:
                layer.bias[layer.bias_idx] = 0
        if silence_kept:  # what a collapse leaves: the kept channels of one group silent as well
            for layer in pruner._selection.layers[group]:
                layer.scale[layer.scale_pos] = 0
                if layer.bias is not None and layer.bias.shape == layer.scale.shape:
                    layer.bias[layer.scale_pos] = 0
    row = next(line for line in pruner.summary().splitlines() if line.split()[0] == group)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.slim()
    return group, [str(w.message) for w in caught if "fell silent" in str(w.message)], row


@pytest.mark.parametrize("case", [c for c in CASES if c.name in COLLAPSE_CASES], ids=lambda c: c.name)
def test_slim_warns_when_the_kept_channels_fell_silent_too(case):
    group, said, row = _collapse_warnings(case, silence_kept=False)
    assert not said and "kept silent" not in row  # the chosen channels alone silent: pruning as it should end
    group, said, row = _collapse_warnings(case, silence_kept=True)
    assert len(said) == 1 and f"{group} (" in said[0] and "learning rate" in said[0]
    assert "kept silent" in row  # the summary does not read the dead kept channels as a huge liveness


def test_the_collapse_warning_points_to_the_kept_guard_only_when_it_was_off():
    from assl.pruning._report import report_collapse

    with pytest.warns(assl.ASSLWarning, match="fell silent") as off:
        report_collapse({"layer1.conv1": 0.0}, guarded=False)
    with pytest.warns(assl.ASSLWarning, match="fell silent") as on:
        report_collapse({"layer1.conv1": 0.0}, guarded=True)
    assert "Schedule(guard_kept=True)" in str(off[0].message) and "guard_kept" not in str(on[0].message)
