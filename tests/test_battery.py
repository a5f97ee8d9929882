"""The equivalence invariant on every model of the battery: slimmed == masked dense."""

from __future__ import annotations

import io

import pytest
import torch
from models import CASES
from torch.nn.utils import parametrize
from util import call, flat, max_rel_err, random_plan

import assl

TOL = 1e-5
RATIOS = [0.25, 0.5, 0.75, None]  # None: every prunable channel but one per group


def _trace(case):
    model = case.build().eval()
    extra = [case.other_inputs(0)] if case.other_inputs else []
    return model, assl.trace(model, case.inputs(0), extra_inputs=extra)


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: "all_but_one" if r is None else f"r{r}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_slimmed_equals_masked(case, ratio):
    model, graph = _trace(case)
    plan = random_plan(graph, ratio, seed=hash(case.name) % 1000)
    assert plan, "the battery model must have something to prune"
    dense = case.build().eval()
    masked = assl.masked_copy(model, graph, plan)
    predicted = graph.count_params(plan)
    assl.apply_plan(model, graph, plan)

    assert sum(p.numel() for p in model.parameters()) == predicted
    assert predicted < graph.count_params()
    inputs = [case.inputs(1)] + ([case.other_inputs(2)] if case.other_inputs else [])
    for x in inputs:
        assert max_rel_err(masked, model, x) <= TOL
        # the plan really changes the function (the check above is not vacuous)
        assert max_rel_err(dense, masked, x) > 1e-4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_slimmed_model_is_plain_torch(case):
    model, graph = _trace(case)
    plan = random_plan(graph, 0.5, seed=0)
    assl.apply_plan(model, graph, plan)
    built = dict(case.build().named_modules())  # the model's own hooks (legacy weight norm, the user's) stay
    for name, m in model.named_modules():
        assert not parametrize.is_parametrized(m), name
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            assert len(getattr(m, hooks)) == len(getattr(built[name], hooks)), (name, hooks)
        assert type(m).__module__.split(".")[0] != "assl", name
    x = case.inputs(3)
    # jit.trace of the slimmed model computes the same
    args = x if isinstance(x, tuple) else ((x,) if isinstance(x, torch.Tensor) else None)
    if args is not None:
        traced = torch.jit.trace(model, args, strict=False)
        with torch.no_grad():
            for a, b in zip(flat(call(model, x)), flat(traced(*args))):
                torch.testing.assert_close(a, b)
    # state_dict round trip with weights_only=True into the slimmed model itself
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh_model, fresh_graph = _trace(case)
    assl.apply_plan(fresh_model, fresh_graph, plan)
    fresh_model.load_state_dict(state)
    assert max_rel_err(model, fresh_model, x) == 0.0


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.name in ("resnet_bottleneck", "mobilenetv2", "densenet", "legacy_spectral_norm")],
    ids=lambda c: c.name,
)
def test_train_mode_batch_statistics(case):
    """In train mode BatchNorm uses batch statistics (and spectral norm steps its power iteration):
    removed channels must still not leak."""
    model, graph = _trace(case)
    model.train()
    for m in model.modules():  # dropout masks depend on the width: compare without them
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    plan = random_plan(graph, 0.5, seed=1)
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert max_rel_err(masked, model, case.inputs(4)) <= TOL
    for m in (masked, model):  # running statistics moved the same way
        m.eval()
    assert max_rel_err(masked, model, case.inputs(5)) <= TOL
