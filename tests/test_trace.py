"""What the tracer finds: groups, unit maps and the reasons channels must stay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import EDSR, VGG, MobileNetV2, ResNet, groupnorm_model
from torch import nn
from util import max_rel_err, random_plan

import assl


def _units_by_layer(graph):
    return {layer: g.name for g in graph.groups for layer in g.layers}


def test_edsr_residual_stream_is_one_group_and_inplace_relu_keeps_first_convs():
    torch.manual_seed(0)
    model = EDSR(n_resblocks=3, n_feats=8, scale=2)
    graph = assl.trace(model, torch.randn(1, 3, 8, 8))
    group_of = _units_by_layer(graph)
    stream = {"head.0", "body.0.body.2", "body.1.body.2", "body.2.body.2", "body.3"}
    assert {group_of[name] for name in stream} == {"head.0"}
    assert set(graph.group("head.0").layers) == stream
    # each block's first conv (followed by ReLU(inplace=True)) is a group of its own
    for i in range(3):
        g = graph.group(f"body.{i}.body.0")
        assert g.layers == (f"body.{i}.body.0",) and g.num_prunable == 8
    # the model's last conv reaches the output: it must keep every channel
    last = graph.group("add_mean")
    assert last.num_prunable == 0
    assert "output" in last.reasons[0]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pixel_shuffle_removes_whole_blocks(scale):
    torch.manual_seed(0)
    model = EDSR(n_resblocks=1, n_feats=4, scale=scale)
    graph = assl.trace(model, torch.randn(1, 3, 6, 6))
    r2 = 9 if scale == 3 else 4
    up = graph.group("tail.0.0")
    assert up.size == 4  # 4 * r^2 channels before the shuffle, 4 units after
    np.testing.assert_array_equal(up.channels("tail.0.0"), np.repeat(np.arange(4), r2))
    plan = {"tail.0.0": [1, 3]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert model.tail[0][0].out_channels == 2 * r2
    next_conv = model.tail[0][2] if scale == 4 else model.tail[1]
    assert next_conv.in_channels == 2
    assert max_rel_err(masked, model, torch.randn(2, 3, 5, 7)) <= 1e-5


def test_light_tail_shuffles_into_rgb_units():
    torch.manual_seed(0)
    model = EDSR(n_resblocks=1, n_feats=4, scale=2, light_tail=True)
    graph = assl.trace(model, torch.randn(1, 3, 6, 6))
    tail = graph.group("tail.0")  # 3 * 4 channels shuffled into the 3 RGB channels add_mean takes
    np.testing.assert_array_equal(tail.channels("tail.0"), np.repeat(np.arange(3), 4))
    assert graph.group("add_mean").num_prunable == 0


def test_channel_attention_ties_excite_conv_to_the_features():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc1 = nn.Conv2d(8, 2, 1)
            self.fc2 = nn.Conv2d(2, 8, 1)
            self.out = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
            return self.out(y * s)

    model = SE()
    graph = assl.trace(model, torch.randn(2, 3, 8, 8))
    assert set(graph.group("conv").layers) == {"conv", "fc2"}
    assert graph.group("conv").num_prunable == 8
    plan = {"conv": [0, 2, 5]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert (model.fc1.in_channels, model.fc2.out_channels, model.out.in_channels) == (5, 5, 5)
    assert max_rel_err(masked, model, torch.randn(2, 3, 9, 9)) <= 1e-5


def test_concat_remaps_consumer_channels():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 6, 3, padding=1)
            self.c = nn.Conv2d(10, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    model = Cat()
    graph = assl.trace(model, torch.randn(1, 3, 5, 5))
    assert graph.group("a").layers == ("a",) and graph.group("b").layers == ("b",)
    before = model.c.weight.detach().clone()
    assl.apply_plan(model, graph, {"a": [1], "b": [0, 5]})
    keep = [0, 2, 3, 4 + 1, 4 + 2, 4 + 3, 4 + 4]
    torch.testing.assert_close(model.c.weight, before[:, keep])


def test_concat_then_add_ties_across_pieces():
    class CatAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 2, 1)
            self.b = nn.Conv2d(3, 3, 1)
            self.c = nn.Conv2d(3, 5, 1)
            self.out = nn.Conv2d(5, 1, 1)

        def forward(self, x):
            return self.out(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))

    graph = assl.trace(CatAdd(), torch.randn(1, 3, 4, 4))
    g = graph.group("c")
    assert set(g.layers) == {"a", "b", "c"} and g.size == 5
    np.testing.assert_array_equal(g.channels("a"), [0, 1])
    np.testing.assert_array_equal(g.channels("b"), [2, 3, 4])
    np.testing.assert_array_equal(g.channels("c"), [0, 1, 2, 3, 4])


def test_depthwise_follows_its_input_and_grouped_conv_keeps_groups():
    torch.manual_seed(0)
    model = MobileNetV2().eval()
    graph = assl.trace(model, torch.randn(2, 3, 16, 16))
    producers = set(graph.layers)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise and not producers & set(depthwise)
    plan = random_plan(graph, 0.5, seed=3)
    assl.apply_plan(model, graph, plan)
    for name in depthwise:
        m = model.get_submodule(name)
        assert m.groups == m.in_channels and m.weight.shape[0] == m.out_channels
    grouped = model.features[4][0]
    assert grouped.groups == 2 and grouped.out_channels % 2 == 0 and grouped.in_channels % 2 == 0


def test_flatten_into_linear_cuts_whole_feature_blocks():
    torch.manual_seed(0)
    model = VGG().eval()
    graph = assl.trace(model, torch.randn(2, 3, 8, 8))
    lin = next(m for m in model.modules() if isinstance(m, nn.Linear))
    last_conv_name = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
    conv = model.get_submodule(last_conv_name)
    hw = lin.in_features // conv.out_channels
    before = lin.weight.detach().clone()
    assl.apply_plan(model, graph, {last_conv_name: [1]})
    keep = [i for i in range(before.shape[1]) if i // hw != 1]
    torch.testing.assert_close(lin.weight, before[:, keep])


def test_resnet_downsample_shortcut_joins_the_block_output_group():
    torch.manual_seed(0)
    model = ResNet().eval()
    graph = assl.trace(model, torch.randn(2, 3, 16, 16))
    downsample = [n for n, m in model.named_modules() if n.endswith("downsample.0")]
    assert downsample
    for name in downsample:
        assert len(graph.group(name).layers) > 1


def _single(module_fn):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1)
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.b(module_fn(self.a(x)))

    return Net()


@pytest.mark.parametrize(
    "fn, why",
    [
        (torch.sigmoid, "not zero once removed"),
        (lambda y: y + 1.0, "not zero once removed"),
        (lambda y: y[:, torch.tensor([1, 0, 2, 3, 4, 5])], "not modeled"),
        (lambda y: y / y.norm(dim=1, keepdim=True), "not modeled"),
        (lambda y: torch.einsum("nchw,dc->ndhw", y, torch.ones(6, 6)), "not modeled"),
        (lambda y: torch.split(y, [2, 4], dim=1)[0].repeat(1, 3, 1, 1), "constant size"),
        (lambda y: y[:, :3].repeat(1, 2, 1, 1), "constant size"),
    ],
    ids=["sigmoid", "add_constant", "gather", "normalize", "einsum", "split_sizes", "slice"],
)
def test_unsafe_ops_pin_their_channels(fn, why, caplog):
    graph = assl.trace(_single(fn), torch.randn(1, 3, 5, 5))
    g = graph.group("a")
    assert g.num_prunable == 0
    assert why in g.reasons[0]


class _Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class _ThroughNumpy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.tanh(x.detach().cpu().numpy()))

    @staticmethod
    def backward(ctx, g):
        return g


def test_custom_autograd_function_is_traced_through_its_torch_ops():
    model = _single(_Twice.apply)
    graph = assl.trace(model, torch.randn(1, 3, 5, 5))
    assert graph.group("a").num_prunable == 6
    masked = assl.masked_copy(model, graph, {"a": [2]})
    assl.apply_plan(model, graph, {"a": [2]})
    assert max_rel_err(masked, model, torch.randn(1, 3, 6, 6)) <= 1e-5


def test_data_leaving_torch_pins_channels():
    graph = assl.trace(_single(_ThroughNumpy.apply), torch.randn(1, 3, 5, 5))
    g = graph.group("a")
    assert g.num_prunable == 0 and "numpy" in g.reasons[0]


@pytest.mark.parametrize(
    "fn",
    [
        lambda y: F.relu(y, inplace=True),
        lambda y: F.max_pool2d(y, 2),
        lambda y: F.interpolate(y, scale_factor=2.0, mode="bilinear"),
        lambda y: F.pad(y, (1, 1, 1, 1), mode="reflect"),
        lambda y: y * torch.sigmoid(y),
        lambda y: y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        lambda y: torch.cat(torch.chunk(y, 2, dim=1)[::-1], dim=1),
        lambda y: y.flip(-1) - y,
        lambda y: torch.stack([y, y], 0).sum(0),
    ],
    ids=["relu_", "maxpool", "interpolate", "pad_reflect", "silu", "permute", "chunk", "flip_sub", "stack"],
)
def test_modeled_ops_stay_prunable_and_exact(fn):
    torch.manual_seed(0)
    model = _single(fn)
    graph = assl.trace(model, torch.randn(2, 3, 6, 6))
    g = graph.group("a")
    assert g.num_prunable == g.size >= 3
    plan = {"a": [0, 4]} if g.size == 6 else {"a": [0]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert max_rel_err(masked, model, torch.randn(2, 3, 8, 8)) <= 1e-5


def test_chunk_ties_equal_pieces():
    graph = assl.trace(_single(lambda y: torch.cat(torch.chunk(y, 2, dim=1)[::-1], dim=1)), torch.randn(1, 3, 4, 4))
    g = graph.group("a")
    np.testing.assert_array_equal(g.channels("a"), [0, 1, 2, 0, 1, 2])


def test_groupnorm_loses_whole_groups_exactly_and_num_groups_follows():
    model, x = groupnorm_model()  # conv(3, 8) -> GroupNorm(2, 8) -> ReLU -> conv(8, 4)
    model.eval()
    graph = assl.trace(model, x)
    g = graph.group("0")
    assert g.size == 2 and g.num_prunable == 2  # a unit is a whole norm group of 4 channels
    np.testing.assert_array_equal(g.channels("0"), [0, 0, 0, 0, 1, 1, 1, 1])
    masked = assl.masked_copy(model, graph, {"0": [0]})
    assl.apply_plan(model, graph, {"0": [0]})
    assert model[1].num_groups == 1 and model[1].num_channels == 4 and model[3].in_channels == 4
    for shape in ((2, 3, 8, 8), (1, 3, 5, 9)):
        assert max_rel_err(masked, model, torch.randn(shape)) <= 1e-5


def test_groupnorm_across_all_channels_is_refused_by_default_and_approximate_on_request():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(1, 8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(2, 3, 8, 8)
    graph = assl.trace(model, x)
    assert graph.group("0").num_prunable == 0 and "GroupNorm) normalizes across" in graph.group("0").reasons[0]
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8, affine=False), nn.ReLU(), nn.Conv2d(8, 4, 3))
    assert assl.trace(plain, x).group("0").num_prunable == 0  # no tensors for slimming to follow
    approx = assl.trace(model, x, approximate_norms=True)
    assert approx.group("0").num_prunable == 8
    assl.apply_plan(model, approx, {"0": [1, 2, 5]})
    assert model[1].num_groups == 1 and model[1].num_channels == 5 and model(x).shape == (2, 4, 4, 4)


def test_non_affine_batchnorm_and_per_channel_parameter_in_forward():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6, affine=False)
            self.shift = nn.Parameter(torch.randn(6))
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.b(F.relu(self.bn(self.a(x)) + self.shift.view(1, -1, 1, 1)))

    torch.manual_seed(0)
    model = Net()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    graph = assl.trace(model, torch.randn(2, 3, 5, 5))
    assert graph.group("a").num_prunable == 6
    plan = {"a": [1, 2]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert model.shift.shape == (4,) and model.bn.running_mean.shape == (4,)
    assert max_rel_err(masked, model, torch.randn(2, 3, 7, 7)) <= 1e-5


def test_inputs_are_used_exactly_as_given():
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 2, 1)

        def forward(self, x, *, gain=1.0):
            seen.append((tuple(x.shape), gain))
            return self.b(self.a(x)) * gain

    model = Net()
    assl.trace(model, torch.randn(3, 5, 5))  # unbatched: one positional argument, no batch added
    assl.trace(model, (torch.randn(2, 3, 5, 5),))
    assl.trace(model, {"x": torch.randn(1, 3, 4, 4), "gain": 2.0})
    assert seen == [((3, 5, 5), 1.0), ((2, 3, 5, 5), 1.0), ((1, 3, 4, 4), 2.0)]


def test_untraced_branch_is_reported():
    from models import ShapeBranchNet

    model = ShapeBranchNet()
    with pytest.warns(assl.ASSLWarning, match="extra_inputs") as caught:
        graph = assl.trace(model, torch.randn(1, 3, 16, 16))
    assert set(graph.untraced) == {"small.0", "small.2"}
    assert "small.0" in str(caught[0].message) and caught[0].filename == __file__
    both = assl.trace(model, torch.randn(1, 3, 16, 16), extra_inputs=[torch.randn(1, 3, 8, 8)])
    assert both.untraced == ()


def test_shared_module_called_twice_unions_its_inputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.shared = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.shared(self.a(x)) + self.shared(self.b(x))

    graph = assl.trace(Net(), torch.randn(1, 3, 4, 4))
    assert set(graph.group("a").layers) == {"a", "b"}


def test_summary_lists_every_group():
    torch.manual_seed(0)
    graph = assl.trace(EDSR(n_resblocks=1, n_feats=4), torch.randn(1, 3, 6, 6))
    text = graph.summary()
    for g in graph.groups:
        assert g.name in text
    assert "reaches the model's output" in text


def test_pixel_unshuffle_repeats_labels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.b(F.pixel_unshuffle(F.relu(self.a(x)), 2))

    torch.manual_seed(0)
    model = Net()
    graph = assl.trace(model, torch.randn(1, 3, 4, 4))
    before = model.b.weight.detach().clone()
    masked = assl.masked_copy(model, graph, {"a": [2]})
    assl.apply_plan(model, graph, {"a": [2]})
    torch.testing.assert_close(model.b.weight, before[:, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]])
    assert max_rel_err(masked, model, torch.randn(2, 3, 6, 8)) <= 1e-5


def test_unbatched_input_is_sliced_on_its_first_dim():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.InstanceNorm2d(6, affine=True), nn.ReLU(), nn.Conv2d(6, 2, 1)
    )
    graph = assl.trace(model, torch.randn(3, 5, 5))
    masked = assl.masked_copy(model, graph, {"0": [1, 4]})
    assl.apply_plan(model, graph, {"0": [1, 4]})
    assert model[1].num_features == 4 and model[3].in_channels == 4
    assert max_rel_err(masked, model, torch.randn(3, 7, 7)) <= 1e-5


def test_layernorm_over_channels_refused_then_approximate():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.norm = nn.LayerNorm(8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.norm(self.a(x)))

    model = Net()
    x = torch.randn(2, 5, 4)
    assert assl.trace(model, x).group("a").num_prunable == 0
    graph = assl.trace(model, x, approximate_norms=True)
    assert graph.group("a").num_prunable == 8
    assl.apply_plan(model, graph, {"a": [0, 1, 2]})
    assert model.norm.normalized_shape == (5,) and model.b.in_features == 5
    assert model(x).shape == (2, 5, 2)


def test_pinned_groups_are_logged_with_layer_and_reason(caplog):
    with caplog.at_level("INFO", logger="assl"):
        assl.trace(_single(torch.sigmoid), torch.randn(1, 3, 5, 5))
    assert "group a (a): 6 of 6 channels stay: reaches `b` with a value that is not zero" in caplog.text
