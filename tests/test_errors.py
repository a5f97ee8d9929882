"""Bad input gets a clear error and leaves the user's model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from models import CASES, EDSR, ResNet
from torch import nn
from util import assert_same, random_plan, snapshot

import assl


def _edsr():
    torch.manual_seed(0)
    model = EDSR(n_resblocks=2, n_feats=8)
    return model, assl.trace(model, torch.randn(1, 3, 6, 6))


def test_model_without_prunable_layer():
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3))
    with pytest.raises(assl.TraceError, match="no prunable layer"):
        assl.trace(model, torch.randn(1, 3, 4, 4))


def test_not_a_module_and_bad_input_types():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        assl.trace(lambda x: x, torch.randn(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example inputs"):
        assl.trace(nn.Conv2d(3, 3, 1), 3.0)
    with pytest.raises(TypeError, match="DataParallel"):
        assl.trace(nn.DataParallel(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 2, 2))


def test_inputs_the_model_rejects_leave_it_untouched():
    model = ResNet()
    model.train()
    before = snapshot(model)
    with pytest.raises(assl.TraceError, match=r"RuntimeError on example_inputs.*batch dimension"):
        assl.trace(model, torch.randn(2, 5, 16, 16))  # 5 channels, the stem wants 3
    with pytest.raises(assl.TraceError, match=r"extra_inputs\[0\]"):
        assl.trace(model, torch.randn(2, 3, 16, 16), extra_inputs=[torch.randn(2, 4, 16, 16)])
    assert_same(before, snapshot(model))
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks)


def test_trace_leaves_training_flag_statistics_grads_and_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))
    model.train()
    model(torch.randn(2, 3, 6, 6)).sum().backward()  # gradients exist
    model[1].running_mean.fill_(0.3)
    before = snapshot(model)
    x = torch.randn(2, 3, 6, 6)
    rng = torch.get_rng_state()
    assl.trace(model, x)
    assert torch.equal(rng, torch.get_rng_state())
    assert_same(before, snapshot(model))
    assert model.training and model[1].num_batches_tracked.item() == 1


@pytest.mark.parametrize(
    "plan, match",
    [
        ({"head.1": [0]}, "no traced producer layer or group is named 'head.1'.*Did you mean 'head.0'"),
        ({"head.0": [8]}, "names channel 8, but group 'head.0' has 8"),
        ({"head.0": [-1]}, "names channel -1"),
        ({"head.0": [1, 1]}, "lists a channel twice"),
        ({"head.0": list(range(8))}, "removes all 8 channels of group 'head.0'.*keep at least one"),
        ({"add_mean": [0]}, "must stay: reaches the model's output"),
        ({"head.0": [0], "body.2": [1]}, "name the same group 'head.0'"),
        ({"body.0.body.0": ["a"]}, "sequence of ints"),
        ([("head.0", [1])], "mapping"),
    ],
    ids=["unknown", "range", "negative", "twice", "all", "pinned", "same_group", "not_int", "not_mapping"],
)
def test_bad_plans_raise_and_change_nothing(plan, match):
    model, graph = _edsr()
    before = snapshot(model)
    with pytest.raises((assl.PlanError, TypeError), match=match):
        assl.apply_plan(model, graph, plan)
    with pytest.raises((assl.PlanError, TypeError), match=match):
        assl.masked_copy(model, graph, plan)
    assert_same(before, snapshot(model))


def test_plan_errors_are_value_errors():
    assert issubclass(assl.PlanError, ValueError) and issubclass(assl.PlanError, assl.ASSLError)
    assert issubclass(assl.TraceError, ValueError) and issubclass(assl.TraceError, assl.ASSLError)


def test_slimming_twice_with_a_stale_graph_is_refused():
    model, graph = _edsr()
    plan = {"head.0": [0, 1]}
    assl.apply_plan(model, graph, plan)
    before = snapshot(model)
    with pytest.raises(assl.PlanError, match="changed since trace"):
        assl.apply_plan(model, graph, plan)
    assert_same(before, snapshot(model))


def test_failed_slim_of_parametrized_model_keeps_its_parametrizations():
    case = next(c for c in CASES if c.name == "weight_norm")
    model = case.build()
    graph = assl.trace(model, case.inputs(0))
    before = snapshot(model)
    with pytest.raises(assl.PlanError):
        assl.apply_plan(model, graph, {"nope": [0]})
    assert_same(before, snapshot(model))
    assert any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def test_masked_copy_leaves_parametrized_original_working():
    case = next(c for c in CASES if c.name == "weight_norm")
    model = case.build()
    graph = assl.trace(model, case.inputs(0))
    before = snapshot(model)
    assl.masked_copy(model, graph, random_plan(graph, 0.5, seed=0))
    assert_same(before, snapshot(model))
    model(case.inputs(1))  # the parametrized class still computes its weights
