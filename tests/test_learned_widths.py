"""``Budget(params=..., widths="learned")``: the scores decide how many units each group loses.

The budget is met by the slimmed model as ``assl.count`` counts it, no group goes below its floor,
groups whose units score low lose more, the slimmed model computes what the masked one does, a
resumed run equals an uninterrupted one, and uniform budgets plan exactly as before.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from models import EDSR, ResNet
from torch import nn
from util import roundtrip, train_towards

import assl
from assl.budgets.budget import MIN_WIDTH

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))
from ledsr import SRModel

NO_ALIGN = assl.Schedule(align_iters=0, reg_interval=2, reg_step=0.1, reg_limit=0.2, stabilize_iters=4)


class PlainNet(nn.Sequential):
    """Four convolutions, no coupling: every group is one layer."""

    def __init__(self, width: int = 16) -> None:
        super().__init__(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )


def _edsr() -> nn.Module:
    return EDSR(n_resblocks=2, n_feats=16, scale=2)


def _ledsr() -> nn.Module:
    return SRModel(n_resblocks=2, n_feats=16, scale=2)


CASES = {
    "plain": (PlainNet, (1, 3, 8, 8), ()),
    "residual": (_edsr, (1, 3, 8, 8), ("*mean*", "*tail*")),
    "batchnorm": (ResNet, (2, 3, 16, 16), ()),
    "ledsr": (_ledsr, (1, 3, 8, 8), ("*mean*", "*tail*")),
}


def _pruner(case: str, share: float, seed: int = 0, **budget) -> tuple[assl.Pruner, torch.Tensor, int]:
    factory, shape, skip = CASES[case]
    torch.manual_seed(seed)
    model = factory()
    model.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    target = int(share * assl.count(model, x).params)
    budget = assl.Budget(params=target, widths="learned", **budget)
    return assl.Pruner(model, x, budget=budget, skip=list(skip), schedule=NO_ALIGN), x, target


@pytest.mark.parametrize("case", list(CASES))
def test_the_budget_is_met_above_every_floor_and_the_slimmed_model_is_the_masked_one(case):
    pruner, x, target = _pruner(case, 0.55)
    plan = pruner.plan()
    assert pruner.graph.count_params(plan) <= target
    assert {g: len(units) for g, units in plan.items()} == {g: k for g, k in pruner.removed.items() if g in plan}
    widths = {}
    for g in pruner.graph.groups:
        k = pruner.removed[g.name]
        widths[g.name] = g.size - k
        assert g.size - k >= math.ceil(MIN_WIDTH * g.size - 1e-9), g.name
    assert len({pruner.removed[g] for g in plan}) > 1 or len(plan) == 1  # not one ratio in disguise
    for g, units in plan.items():  # as tight as the steps allow: one unit given back breaks the budget
        if units:
            assert pruner.graph.count_params({**plan, g: units[:-1]}) > target, g
    masked = assl.masked_copy(pruner.model, pruner.graph, plan)
    small = pruner.prune_now("scale")  # the same scores, allocated again: the same plan
    assert pruner.chosen() == plan
    assert sum(p.numel() for p in small.parameters()) <= target
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)
    assert "learned widths:" in pruner.summary()


def test_a_mac_budget_and_rounding_and_a_floor_of_its_own():
    torch.manual_seed(0)
    model, x = PlainNet(32), torch.randn(1, 3, 8, 8)
    target = assl.count(model, x).macs // 2
    budget = assl.Budget(macs=target, widths="learned", min_width={"2": 0.75, "*": 0.25})
    pruner = assl.Pruner(model, x, budget=budget, round_to=4, schedule=NO_ALIGN)
    plan = pruner.plan()
    assert pruner.graph.count_macs(plan) <= target
    for g in pruner.graph.groups:
        kept = g.size - pruner.removed[g.name]
        assert kept % 4 == 0 or kept == g.size
        assert kept == g.size or kept >= (24 if g.name == "2" else 8)


def _low_half(model: nn.Module, layer: str) -> None:
    """Give half the filters of ``layer`` a hundredth of their norm; every other filter one norm."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight /= m.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        low = model.get_submodule(layer).weight
        low[: low.shape[0] // 2] *= 0.01


def test_groups_whose_units_score_low_lose_more():
    torch.manual_seed(0)
    model, x = PlainNet(16), torch.randn(1, 3, 8, 8)
    _low_half(model, "2")
    target = int(0.5 * assl.count(model, x).params)
    pruner = assl.Pruner(model, x, budget=assl.Budget(params=target, widths="learned"), schedule=NO_ALIGN)
    removed = pruner.removed
    assert removed["2"] >= 8 and removed["2"] > max(removed["0"], removed["4"])
    assert sorted(pruner.chosen()["2"])[:8] == list(range(8))  # the quiet filters go first
    uniform = assl.Pruner(PlainNet(16), x, budget=assl.Budget(params=target), schedule=NO_ALIGN).removed
    assert len({uniform[g] for g in ("0", "2", "4")}) == 1 and removed["2"] > uniform["2"]


def test_a_residual_stream_whose_units_score_low_loses_more_than_the_single_layers():
    # the stream's units count in each of the layers that produce them, as their cost does
    torch.manual_seed(0)
    model, x = _edsr(), torch.randn(1, 3, 8, 8)
    stream = assl.trace(model, x).group("head.0").layers
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and not name.endswith("mean"):
                m.weight /= m.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                if name in stream:
                    m.weight[:6] *= 0.01
    target = int(0.6 * assl.count(model, x).params)
    pruner = assl.Pruner(
        model, x, budget=assl.Budget(params=target, widths="learned"), skip=["*mean*", "*tail*"], schedule=NO_ALIGN
    )
    assert len(stream) > 2 and pruner.removed["head.0"] >= 6
    assert pruner.removed["head.0"] > max(pruner.removed["body.0.body.0"], pruner.removed["body.1.body.0"])
    assert pruner.chosen()["head.0"][:6] == list(range(6))


def test_uniform_budgets_plan_as_before():
    # the numbers of the release before learned widths, on this model and budget
    torch.manual_seed(0)
    model = _edsr()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    target = assl.count(model, x).params * 6 // 10
    for budget in (assl.Budget(params=target), assl.Budget(params=target, widths="uniform")):
        m = _edsr()
        m.load_state_dict(model.state_dict())
        p = assl.Pruner(
            m, x, budget=budget, skip=["*mean*", "*tail*"], round_to=2, schedule=assl.Schedule(align_iters=0)
        )
        assert p.removed == {
            "sub_mean": 0, "head.0": 6, "body.0.body.0": 6, "body.1.body.0": 6, "tail.0.0": 0, "tail.1": 0,
            "add_mean": 0,
        }  # fmt: skip
        assert p.chosen() == {
            "head.0": [1, 3, 6, 7, 9, 10], "body.0.body.0": [2, 7, 10, 11, 13, 15],
            "body.1.body.0": [1, 4, 5, 11, 13, 14],
        }  # fmt: skip
        assert "widths" not in p.state_dict() and "allocated" not in p.state_dict()


def test_widths_are_allocated_after_alignment_and_every_group_waits_for_it():
    torch.manual_seed(0)
    model, x = _edsr(), torch.randn(1, 3, 8, 8)
    target = int(0.6 * assl.count(model, x).params)
    pruner = assl.Pruner(
        model, x, budget=assl.Budget(params=target, widths="learned"), skip=["*mean*", "*tail*"], schedule=SCHEDULE
    )
    assert pruner.aligned == ["head.0"] and pruner.chosen() == {}
    assert "not allocated yet" in pruner.summary()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    train_towards(TEACHER, model, pruner, opt, 0, 5)
    assert pruner.chosen() == {}  # the unaligned groups wait as well
    train_towards(TEACHER, model, pruner, opt, 5, 6)
    assert set(pruner.chosen()) == {"head.0", "body.0.body.0", "body.1.body.0"}
    assert pruner.graph.count_params(pruner.chosen()) <= target
    assert pruner.state_dict()["allocated"] == {g: len(u) for g, u in pruner.chosen().items()}


# --- resume ---------------------------------------------------------------------------------------

SCHEDULE = assl.Schedule(align_iters=5, reg_interval=2, reg_step=0.1, reg_limit=0.2, stabilize_iters=4)
TOTAL = 5 + 3 * 2 + 4
TEACHER = (torch.manual_seed(123), _edsr())[1]


def _setup(seed: int, schedule: assl.Schedule):
    torch.manual_seed(seed)
    model = _edsr()
    target = 13000  # of 21787 parameters
    budget = assl.Budget(params=target, widths="learned")
    pruner = assl.Pruner(model, torch.randn(1, 3, 8, 8), budget=budget, skip=["*mean*", "*tail*"], schedule=schedule)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    return model, pruner, opt


@pytest.mark.parametrize(("schedule", "stop"), [(SCHEDULE, 3), (SCHEDULE, 8), (NO_ALIGN, 4)])
def test_a_resumed_run_equals_an_uninterrupted_one(schedule, stop):
    total = schedule.total_steps
    model, pruner, opt = _setup(0, schedule)
    train_towards(TEACHER, model, pruner, opt, 0, total)
    assert pruner.done
    state, chosen, removed = model.state_dict(), pruner.chosen(), dict(pruner.removed)

    model, pruner, opt = _setup(0, schedule)
    train_towards(TEACHER, model, pruner, opt, 0, stop)
    saved = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()})
    model2, pruner2, opt2 = _setup(7, schedule)  # other weights, another allocation at construction
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    pruner2.load_state_dict(saved["pruner"])
    train_towards(TEACHER, model2, pruner2, opt2, stop, total)
    assert pruner2.chosen() == chosen and pruner2.removed == removed
    for k, v in model2.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_states_of_the_other_kind_of_widths_are_refused():
    _, learned, _ = _setup(0, NO_ALIGN)
    torch.manual_seed(0)
    uniform = assl.Pruner(_edsr(), torch.randn(1, 3, 8, 8), budget=assl.Budget(params=13000), skip=["*mean*", "*tail*"])
    with pytest.raises(assl.StateError, match="learned widths"):
        uniform.load_state_dict(learned.state_dict())
    with pytest.raises(assl.StateError, match="uniform widths"):
        learned.load_state_dict(uniform.state_dict())
    bad = {**learned.state_dict(), "allocated": {"head.0": -1}}
    with pytest.raises(assl.StateError, match="allocated"):
        learned.load_state_dict(bad)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"latency": 0.01, "widths": "learned"}, "goes with params= or macs="),
        ({"relative_latency": 0.5, "widths": "learned"}, "goes with params= or macs="),
        ({"widths": "learned"}, "a ratio prunes every group alike"),
        ({"params": 100, "widths": "wide"}, "one of 'uniform', 'learned'"),
        ({"params": 100, "min_width": 0.5}, "widths='learned'"),
    ],
)
def test_budget_arguments_say_what_to_do(kwargs, said):
    with pytest.raises(assl.ArgumentError, match=said):
        assl.Budget(**kwargs)


def test_a_floor_that_leaves_the_model_above_the_budget_is_an_error():
    torch.manual_seed(0)
    model, x = PlainNet(16), torch.randn(1, 3, 8, 8)
    target = int(0.3 * assl.count(model, x).params)
    assl.Pruner(PlainNet(16), x, budget=assl.Budget(params=target), schedule=NO_ALIGN)  # uniform reaches it
    with pytest.raises(assl.ArgumentError, match="lower min_width"):
        assl.Pruner(model, x, budget=assl.Budget(params=target, widths="learned", min_width=0.9), schedule=NO_ALIGN)
