"""Layers that compute in a forward of their own, and per-channel code written by hand, traced exactly.

timm's fused norm-act layers (``BatchNormAct2d``), torchvision's ``FrozenBatchNorm2d``, weight
standardization with a gain (NF-ResNets), layer scales, hand-written affines, shifts and
standardizations: the tracer follows what they compute from their tensors, cuts those tensors
with the channels, and pins only where a parameter goes through something it cannot follow,
naming the layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from models import (
    BatchNormAct2d,
    Conv2dSame,
    FrozenBatchNorm2d,
    FrozenBNResNet,
    NormActNet,
    OwnForwardNet,
    PerChannelNet,
    ScaledStdConv2d,
    WSConv2d,
)
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from util import assert_same, max_rel_err, random_plan, snapshot

import assl

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
OTHER = torch.randn(1, 3, 11, 7, generator=torch.Generator().manual_seed(1))  # another size
TINY = assl.Schedule(align_iters=0, reg_interval=2, reg_step=0.2, reg_limit=0.3, stabilize_iters=2)


def _exact(model, plan, inputs=(X, OTHER)):
    graph = assl.trace(model, X)
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    for x in inputs:
        assert max_rel_err(masked, model, x) < 1e-5
    return model


def test_fused_norm_act_is_traced_and_carries_its_channels_like_a_batchnorm():
    torch.manual_seed(0)
    model = NormActNet().eval()
    graph = assl.trace(model, X)
    assert not graph.opaque_layers and graph.group("stem.0").num_prunable == 8
    normalized = {"stem.0": ("stem.1",), "block.0": ("block.1",), "block.2": ("block.3",), "block.4": ("block.5",)}
    assert graph.normalized == normalized
    pruner = assl.Pruner(NormActNet(), X, ratio=0.5, schedule=TINY)
    # its norms carry it; the depthwise filters between them are penalized with the group
    assert pruner.carriers("block.0") == [("block.1", "norm"), ("block.3", "norm"), ("block.2.weight", "param")]
    _exact(model, {"stem.0": [1, 2, 6], "block.0": [0, 3, 4, 9, 15]})
    assert model.stem[1].num_features == 5 and model.block[3].weight.shape == (11,)
    assert model.block[2].groups == 11  # the depthwise conv between them followed


def test_fused_norm_act_in_train_mode_updates_the_same_statistics():
    torch.manual_seed(0)
    model = NormActNet().train()
    graph = assl.trace(model, X)
    plan = random_plan(graph, 0.5, seed=2)
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    torch.manual_seed(0)
    assert max_rel_err(masked, model, X) < 1e-5
    model.eval(), masked.eval()
    assert max_rel_err(masked, model, X) < 1e-5


def test_frozen_batchnorm_buffers_are_cut_with_the_channels():
    torch.manual_seed(0)
    model = FrozenBNResNet().eval()
    graph = assl.trace(model, X)
    assert graph.group("conv1").num_prunable == 8 and graph.group("a").num_prunable == 8
    _exact(model, {"conv1": [0, 7], "a": [1, 2, 3]})
    assert model.bn1.running_var.shape == (6,) and model.bn_a.weight.shape == (5,) and model.fc.in_features == 6


def test_frozen_batchnorm_without_eps_divides_by_a_zero_variance_so_it_is_only_cut():
    class NoEps(FrozenBatchNorm2d):
        def forward(self, x):  # rsqrt(0) = inf once running_var is zeroed: the variance must be kept
            return x * (self.weight.view(1, -1, 1, 1) * self.running_var.view(1, -1, 1, 1).rsqrt())

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), NoEps(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    graph = assl.trace(model, X)
    assert graph.group("0").num_prunable == 8
    roles = {(e.module, e.tensor): e.role for e in graph._entries}
    assert roles[("1", "running_var")] == "slice" and roles[("1", "weight")] == "zero"
    _exact(model, {"0": [2, 5]})


def test_weight_standardized_convs_lose_filters_not_the_inputs_they_read():
    torch.manual_seed(0)
    model = OwnForwardNet().eval()
    graph = assl.trace(model, torch.randn(2, 3, 9, 9))
    assert not graph.opaque_layers
    assert graph.group("ws").num_prunable == 8 and graph.group("std").num_prunable == 16
    assert "`std.weight` (dim 1) is normalized over by `batch_norm`" in graph.group("mid").reasons[0]
    plan = {"ws": [0, 1], "std": [3, 4, 8], "pw": [2], "up": [5, 6], "fc1": [0, 11]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert model.std.gain.shape == (13, 1, 1, 1) and model.std.out_channels == 13
    assert model.dw.groups == model.dw.in_channels == 13 and model.fc1.gain.shape == (10,)
    for x in (torch.randn(2, 3, 9, 9), torch.randn(1, 3, 12, 14)):
        assert max_rel_err(masked, model, x) < 1e-5


def test_a_standardized_weight_reshaped_to_a_constant_size_stays():
    class Constant(ScaledStdConv2d):
        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, 8, -1), None, None, training=True, eps=self.eps)
            return F.conv2d(x, w.reshape_as(self.weight), self.bias, padding=1)

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Constant(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = assl.trace(model, X)
    assert graph.group("1").num_prunable == 0
    assert "size written in the forward code (8)" in graph.group("1").reasons[0]


def test_a_depthwise_conv_with_groups_written_in_the_code_stays_whole():
    class Fixed(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias, padding=1, groups=8)

    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), Fixed(8, 8, 3, groups=8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = assl.trace(model, X)
    assert "groups (8) are written in the code" in graph.opaque_layers["2"]
    assert graph.group("0").num_prunable == 0 and graph.group("4").num_prunable == 0


def test_per_channel_code_by_hand_cuts_its_parameters_and_buffers():
    torch.manual_seed(0)
    model = PerChannelNet().eval()
    graph = assl.trace(model, X)
    assert {g.name: g.num_prunable for g in graph.groups} == {"stem": 8, "pw1": 16, "a": 8, "c": 8, "d": 8, "head": 0}
    _exact(model, {"stem": [0], "pw1": [1, 2], "a": [3, 4], "c": [5, 6, 7], "d": [0, 1]})
    assert model.gamma.shape == (7,) and model.w.shape == model.b.shape == model.shift.shape == (6,)
    assert model.mean.shape == model.std.shape == (5,)


def test_a_parameter_used_as_a_number_or_condition_pins_the_channels_it_runs_along():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            self.gamma = nn.Parameter(torch.rand(8) + 0.5)

        def forward(self, x):
            h = self.a(x) * self.gamma.view(1, -1, 1, 1)
            if self.gamma.mean() > 0:  # slimming changes the mean: the branch could change
                h = h.relu()
            return self.b(h)

    graph = assl.trace(Branchy(), X)
    why = graph.group("a").reasons[0]
    assert graph.group("a").num_prunable == 0 and "`gamma` (dim 0) is reduced over by `mean`" in why


def test_a_parametrized_weight_of_a_traced_through_conv_is_that_weight():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), weight_norm(Conv2dSame(8, 8, 3)), nn.ReLU(), nn.Conv2d(8, 2, 1)
    ).eval()
    graph = assl.trace(model, X)
    assert not graph.opaque_layers and graph.group("2").num_prunable == 8
    _exact(model, {"0": [1, 2], "2": [0, 7]})
    assert model[2].weight.shape == (6, 6, 3, 3)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_the_pruner_slims_traced_through_layers_and_checks_them(ratio):
    torch.manual_seed(0)
    model = NormActNet()
    dense = assl.trace(model, X).count_params()
    small = assl.Pruner(model, X, ratio=ratio, schedule=TINY).prune_now()  # checked against the masked model
    assert sum(p.numel() for p in small.parameters()) < dense
    assert isinstance(small.stem[1], BatchNormAct2d) and small.stem[1].num_features < 8


def test_ws_conv_with_a_gain_is_the_issues_layer_and_prunes_with_the_pruner():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.head, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), WSConv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(torch.relu(self.head(x)))))

    model = Block()
    small = assl.Pruner(model, X, ratio=0.5, schedule=TINY).prune_now()
    assert small.a.out_channels == 4 and small.a.in_channels == 8 and small.a.gain.shape == (4, 1, 1, 1)
    assert small.head.out_channels == 8  # read through the standardization: kept
    with torch.no_grad():
        assert small(X).shape == model(X).shape


def test_a_weight_that_cannot_be_followed_is_opaque_and_the_rest_still_prunes():
    class Permuted(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x, self.weight[torch.arange(self.out_channels - 1, -1, -1)], self.bias)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), Permuted(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )
    before = snapshot(model)
    graph = assl.trace(model, X)
    assert "`2.weight` go(es) through `__getitem__`" in graph.opaque_layers["2"]
    assert graph.group("0").num_prunable == 0 and graph.group("4").num_prunable == 8
    assert_same(before, snapshot(model))
    small = _exact(copy.deepcopy(model), {"4": [1, 2]})
    assert small[4].out_channels == 6


class _PerChannel(nn.Module):
    """conv ``a`` -> ``fn(self, y)`` -> conv ``b``, with per-channel Parameters and a buffer to use."""

    def __init__(self, fn):
        super().__init__()
        torch.manual_seed(0)
        self.fn = fn
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
        self.g, self.h = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.g3 = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.register_buffer("buf", torch.rand(8) + 0.5)
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.b(self.fn(self, self.a(x)))


FORMS = {  # form -> (forward code between a and b, whether a's channels can go exactly)
    "param_c11": (lambda s, y: y * s.g3, True),
    "channels_last": (lambda s, y: (y.permute(0, 2, 3, 1) * s.g + s.h).permute(0, 3, 1, 2), True),
    "none_index": (lambda s, y: y + s.h[None, :, None, None], True),
    "exp": (lambda s, y: y * s.h.exp().view(1, -1, 1, 1), True),
    "sigmoid_gate": (lambda s, y: y * torch.sigmoid(s.h).view(1, -1, 1, 1), True),
    "abs_and_square": (lambda s, y: y * s.g.abs().view(1, -1, 1, 1) + (s.h**2).view(1, -1, 1, 1), True),
    "divide_by_buffer": (lambda s, y: y / s.buf.view(1, -1, 1, 1), True),
    "divide_by_param_expression": (lambda s, y: y / (s.g**2 + 1).view(1, -1, 1, 1), True),
    "rsqrt_of_param": (lambda s, y: y * s.g.rsqrt().view(1, -1, 1, 1), True),
    "shift_then_relu": (lambda s, y: (y - s.h.view(1, -1, 1, 1)).relu(), True),
    "unsqueezed": (lambda s, y: y * s.g.unsqueeze(-1).unsqueeze(-1), True),
    "expand_as": (lambda s, y: y + s.h.view(1, -1, 1, 1).expand_as(y), True),
    "to_and_type_as": (lambda s, y: y * s.g.to(y).view(1, -1, 1, 1) + s.h.type_as(y).view(1, -1, 1, 1), True),
    "linear_channels_last": (lambda s, y: s.lin(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), True),
    "instance_statistics": (
        lambda s, y: (y - y.mean((2, 3), True)) / (y.var((2, 3), keepdim=True) + 1e-5).sqrt(),
        True,
    ),
    "batch_norm_by_hand": (lambda s, y: F.batch_norm(y, s.h, s.buf, s.g, s.h, False), True),
    "softplus": (lambda s, y: y * F.softplus(s.h).view(1, -1, 1, 1), True),
    "param_mean_as_a_scalar": (lambda s, y: y * s.g.mean(), True),  # mixes g, but g is cut nowhere
    "param_repeated": (lambda s, y: y * s.g.repeat(1).view(1, -1, 1, 1), False),
    "param_chunked": (lambda s, y: y * torch.cat(s.g.chunk(2)).view(1, -1, 1, 1), False),
    "clamp_by_param": (lambda s, y: y.clamp(min=s.h.view(1, -1, 1, 1)), False),
    "layer_norm_channels_last": (
        lambda s, y: F.layer_norm(y.permute(0, 2, 3, 1), (8,), s.g, s.h).permute(0, 3, 1, 2),
        False,
    ),
    "group_norm_with_constant_groups": (lambda s, y: F.group_norm(y, 2, s.g, s.h), False),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_per_channel_forms_are_exact_or_stay(form):
    fn, exact = FORMS[form]
    model = _PerChannel(fn).eval()
    graph = assl.trace(model, X)
    g = graph.group("a")
    assert (g.num_prunable == 8) == exact, g.reasons.get(0)
    if not exact:
        assert g.reasons[0]
        return
    plan = random_plan(graph, 0.5, seed=1)
    masked = assl.masked_copy(model, graph, plan)
    small = assl.apply_plan(copy.deepcopy(model), graph, plan)
    for x in (X, OTHER):
        assert max_rel_err(masked, small, x) < 1e-5
    assert max_rel_err(model, masked, X) > 1e-4  # the plan matters
