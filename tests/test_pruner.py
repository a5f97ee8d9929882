"""The Pruner: scales, schedule, penalty, alignment, choice, slim, one-shot, budgets, errors."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch
from models import CASES, EDSR, RCAN
from torch import nn
from util import assert_same, call, flat, max_rel_err, snapshot

import assl
from assl.pruning._alignment import agreement, alignment_loss, consensus_loss, soft_masks

TINY = assl.Schedule(align_iters=6, reg_interval=2, reg_step=0.1, reg_limit=0.3, stabilize_iters=4)


def _edsr(seed=0, blocks=2, feats=8):
    torch.manual_seed(seed)
    return EDSR(n_resblocks=blocks, n_feats=feats, scale=2)


def _x(seed=0, size=8):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- scales --------------------------------------------------------------------------------


# a frozen BatchNorm's shift keeps every channel alive where it is read: the Pruner refuses that net
PRUNABLE = [c for c in CASES if c.name != "frozen_bn"]


@pytest.mark.parametrize("case", PRUNABLE, ids=lambda c: c.name)
def test_inserting_scales_keeps_outputs(case):
    model = case.build().eval()
    x = case.inputs(0)
    with torch.no_grad():
        before = [t.clone() for t in flat(call(model, x))]
    extra = [case.other_inputs(0)] if case.other_inputs else []
    pruner = assl.Pruner(model, x, ratio=0.5, extra_inputs=extra, schedule=TINY)
    assert pruner.penalized_parameters()
    # every pruned group has a carrier; producers read only through an affine norm get no scale
    groups = [n for n, k in pruner.removed.items() if k]
    assert groups and all(pruner.carriers(n) for n in groups)
    scaled = {name for n in groups for name, kind in pruner.carriers(n) if kind == "g"}
    assert not scaled & set(pruner.graph.normalized)
    with torch.no_grad():
        after = flat(call(model, x))
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scales_start_from_the_weights_loaded_last():
    trained = _edsr(seed=1)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5).add_(0.01)
    fresh = _edsr(seed=2)
    fresh.load_state_dict(trained.state_dict())
    assl.Pruner(fresh, _x(), ratio=0.5, schedule=TINY)
    assert max_rel_err(trained.eval(), fresh.eval(), _x(3)) < 1e-5


def test_loading_a_dense_checkpoint_after_the_pruner_fails_loudly():
    model = _edsr()
    dense = _edsr(seed=5).state_dict()
    assl.Pruner(model, _x(), ratio=0.5, schedule=TINY)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(dense)


def test_weight_parameter_identity_survives_and_only_scales_are_new():
    model = _edsr()
    before = {id(p) for p in model.parameters()}
    pruner = assl.Pruner(model, _x(), ratio=0.5, schedule=TINY)
    after = {id(p) for p in model.parameters()}
    assert before <= after
    assert after - before == {id(p) for p in pruner.scale_parameters()}


# --- schedule ------------------------------------------------------------------------------


def test_schedule_numbers():
    s = assl.Schedule(align_iters=3, reg_interval=2, reg_step=0.1, reg_limit=0.3, stabilize_iters=4)
    assert s.increments == 4 and s.bounds(True) == (3, 11, 15) and s.bounds(False) == (0, 8, 12)
    phases = [s.phase(i, True) for i in range(16)]
    assert phases == ["align"] * 3 + ["regularize"] * 8 + ["stabilize"] * 4 + ["done"]
    pens = [round(s.penalty(i, True), 6) for i in range(16)]
    assert pens == [0, 0, 0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
    paper = assl.Schedule()
    assert paper.increments == 5001 and paper.bounds(True) == (17260, 17260 + 100020, 17260 + 100020 + 43150)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"align_iters": -1},
        {"stabilize_iters": -5},
        {"reg_interval": 0},
        {"reg_step": 0.0},
        {"reg_limit": -1.0},
        {"reg_step": math.nan},
        {"align_weight": math.inf},
        {"align_iters": 1.5},
        {"penalty_form": "l1"},
        {"reg_step": 0.5, "reg_limit": 0.6},  # a shrink of 100% per step
    ],
)
def test_schedule_rejects_bad_numbers(kwargs):
    with pytest.raises(ValueError, match="Schedule"):
        assl.Schedule(**kwargs)


@pytest.mark.parametrize("n", [10, 11, 17, 50, 99, 100, 333, 600, 2000, 12345, 160430])
@pytest.mark.parametrize("align", [True, False])
def test_for_steps_fills_exactly_n_steps_in_the_papers_proportions(n, align):
    s = assl.Schedule.for_steps(n, align=align)
    a, r, d = s.bounds(align)
    assert d == n and s.total_steps == n
    assert (a >= 1) == align and r - a >= 2 and d - r >= 1
    if n >= 1000:  # align 11%, regularize 62%, stabilize 27%, as in the paper
        assert abs(a / n - 17260 / 160430 * align) < 0.01 and abs((d - r) / n - 43150 / 160430) < 0.02
    # the penalty passes its limit inside regularize and holds it in stabilize
    assert s.penalty(r - 1, align) > s.reg_limit and s.penalty(r - 1, align) == s.penalty(d - 1, align)
    assert s.penalty(r - 1 - s.reg_interval, align) <= s.reg_limit
    # the shrink takes the chosen entries to 1e-4 of their size by the end of regularize (or its cap)
    kept = math.prod(1 - s.penalty(t, align) for t in range(a, r))
    assert kept <= 1.01e-4 or s.reg_limit == 0.3


def test_for_steps_refuses_too_few_steps_and_fields_it_sizes_itself():
    with pytest.raises(ValueError, match=">= 10"):
        assl.Schedule.for_steps(9)
    with pytest.raises(ValueError, match="align_iters"):
        assl.Schedule.for_steps(100, align_iters=5)
    with pytest.raises(ValueError, match="nonsense"):
        assl.Schedule.for_steps(100, nonsense=1)
    s = assl.Schedule.for_steps(500, align_weight=0.5, penalty_form="gradient", reg_limit=2.0)
    assert (s.align_weight, s.penalty_form, s.reg_limit, s.total_steps) == (0.5, "gradient", 2.0, 500)


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize(
    "options",
    [{}, {"guard_kept": False}, {"align_weight": 0.3, "align_loss": "authors"}, {"penalty_form": "gradient"}],
)
def test_sized_keeps_a_schedules_options_and_sizes_its_phases(options, align):
    for n in (10, 137, 2000):
        s = assl.Schedule(**options).sized(n, align=align)
        assert s == assl.Schedule.for_steps(n, align=align, **options)
        assert s.bounds(align)[2] == n and all(getattr(s, k) == v for k, v in options.items())
    # a reg_limit set is kept (the growth is sized to it); at its default the shrink sizes its own
    assert assl.Schedule(penalty_form="gradient", reg_limit=2.0).sized(500).reg_limit == 2.0
    assert assl.Schedule().sized(500).reg_limit == assl.Schedule.for_steps(500).reg_limit != 0.5


def test_sized_refuses_phase_lengths_it_would_overwrite():
    for field, value in [("align_iters", 5), ("stabilize_iters", 7), ("reg_interval", 3), ("reg_step", 0.01)]:
        with pytest.raises(ValueError, match=f"{field}={value!r}.*not both"):
            assl.Schedule(**{field: value}).sized(100)
    with pytest.raises(ValueError, match=">= 10"):
        assl.Schedule(guard_kept=False).sized(9)


def test_the_papers_schedule_is_kept_for_reproducing_it():
    paper = assl.Schedule.paper()
    assert paper.penalty_form == "gradient" and paper.total_steps == 160430
    assert assl.Schedule().total_steps == 160430 and assl.Schedule().penalty_form == "shrink"
    assert assl.Schedule().guard_kept and not paper.guard_kept  # the paper's runs: kept units unguarded
    assert not assl.Schedule.for_steps(100, guard_kept=False).guard_kept
    with pytest.raises(ValueError, match="guard_kept must be True or False"):
        assl.Schedule(guard_kept=1)


def test_groups_that_are_not_aligned_are_penalized_from_step_0():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    assert pruner.aligned == ["head.0"] and pruner.phase == "align"
    free = [g for g, k in pruner.removed.items() if k and g not in pruner.aligned]
    assert free and set(free) <= set(pruner.chosen())  # chosen at once, not after alignment
    before = {g: pruner.unit_scales(g) for g in [*free, "head.0"]}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.step()
    for g in free:  # shrunk by the first increment of the penalty
        chosen = pruner.chosen()[g]
        torch.testing.assert_close(pruner.unit_scales(g)[:, chosen], before[g][:, chosen] * (1 - TINY.reg_step))
    assert torch.equal(pruner.unit_scales("head.0"), before["head.0"])  # aligned: no penalty yet


def test_pruner_phases_switch_at_the_right_steps():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    assert pruner.aligned == ["head.0"]
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # the scales must move, or the Pruner says so
    seen = []
    for _ in range(19):
        seen.append((pruner.phase, round(pruner.penalty, 6)))
        opt.zero_grad()
        model(_x()).mean().backward()
        pruner.step()
        opt.step()
    assert [p for p, _ in seen] == ["align"] * 6 + ["regularize"] * 8 + ["stabilize"] * 4 + ["done"]
    assert [r for _, r in seen] == [0] * 6 + [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4] + [0.4] * 5
    assert pruner.done and pruner.step_count == 19


# --- penalty -------------------------------------------------------------------------------


def test_step_adds_penalty_only_to_chosen_channels():
    model = _edsr()
    sched = assl.Schedule(
        align_iters=0, reg_interval=1, reg_step=0.25, reg_limit=1.0, stabilize_iters=1, penalty_form="gradient"
    )
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=sched)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.step()  # first regularize step: penalty 0.25
    chosen = pruner.chosen()
    for name, layers in pruner._selection.layers.items():
        units = torch.tensor(chosen[name])
        for layer in layers:
            g = layer.scale
            mask = torch.isin(layer.scale_units, units)
            torch.testing.assert_close(g.grad[mask], 0.25 * g.detach()[mask])
            assert torch.all(g.grad[~mask] == 0)
            bias = model.get_submodule(layer.name).bias
            bmask = torch.isin(layer.channel_units, units)
            torch.testing.assert_close(bias.grad[bmask], 0.25 * bias.detach()[bmask])
            assert torch.all(bias.grad[~bmask] == 0)
    others = [p for n, p in model.named_parameters() if "scale" not in n and not n.endswith("bias")]
    assert all(torch.all(p.grad == 0) for p in others)


@pytest.mark.parametrize(
    "sched",
    [
        assl.Schedule(
            align_iters=20, reg_interval=2, reg_step=0.02, reg_limit=1.0, stabilize_iters=40, penalty_form="gradient"
        ),
        assl.Schedule.for_steps(162),
    ],
    ids=["gradient", "shrink"],
)
def test_penalty_drives_chosen_scales_to_zero_on_a_toy_task(sched):
    torch.manual_seed(0)
    teacher = _edsr(seed=3)
    model = _edsr(seed=4)
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=sched)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    start = {n: pruner.unit_scales(n).mean(0) for n, k in pruner.removed.items() if k}
    while not pruner.done:
        x = torch.randn(4, 3, 8, 8)
        with torch.no_grad():
            target = teacher(x)
        loss = (model(x) - target).abs().mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name in pruner.chosen():
        s = pruner.unit_scales(name).mean(0)
        chosen = torch.tensor(pruner.chosen()[name])
        kept = torch.ones_like(s, dtype=torch.bool)
        kept[chosen] = False
        assert s[chosen].max() < 0.1 * start[name][chosen].mean(), name
        assert s[kept].min() > 0.3 * start[name][kept].mean(), name


# --- alignment -----------------------------------------------------------------------------


def test_alignment_loss_value_and_gradient_by_hand():
    s = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], requires_grad=True)
    loss = alignment_loss(s, k=1)
    # thresholds are the 2nd smallest value (2.0) of each row
    m = torch.sigmoid(torch.tensor([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]]))
    expected = -(m @ m.T).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    sig = torch.sigmoid
    d = sig(torch.tensor(1.0)) * (1 - sig(torch.tensor(1.0)))  # sigmoid'(1) = sigmoid'(-1)
    # d loss / d s[0,0]: only m[0,0] depends on s[0,0] (the threshold is s[0,1])
    # loss = -(1/4) * sum_ij m_i . m_j ; d/dm00 = -(1/4) * (2*m00 + 2*m10)
    g00 = -(0.25) * (2 * m[0, 0] + 2 * m[1, 0]) * d
    torch.testing.assert_close(s.grad[0, 0], g00)
    assert torch.allclose(
        soft_masks(torch.tensor([[5.0, 1.0, 3.0]]), 1), torch.sigmoid(torch.tensor([[2.0, -2.0, 0.0]]))
    )
    with pytest.raises(ValueError):
        soft_masks(torch.ones(2, 3), 3)


def test_alignment_loss_prefers_layers_that_keep_the_same_channels():
    torch.manual_seed(0)
    for spread, margin in [(1.0, 0.0), (8.0, 0.5)]:
        base = torch.rand(16) * spread + 0.5
        aligned = torch.stack([base, base * 1.1, base * 0.9])
        shuffled = torch.stack([base, base[torch.randperm(16)] * 1.1, base[torch.randperm(16)] * 0.9])
        # the same scores per layer; only which channels each layer keeps differs
        assert alignment_loss(aligned, 8) < alignment_loss(shuffled, 8) - margin


def test_alignment_loss_is_free_outside_the_align_phase():
    model = _edsr()
    sched = assl.Schedule(align_iters=0, reg_interval=1, reg_step=0.1, reg_limit=0.2, stabilize_iters=1)
    pruner = assl.Pruner(model, _x(), ratio=0.5, schedule=sched)
    z = pruner.alignment_loss()
    assert z.item() == 0.0 and not z.requires_grad
    z += 1.0  # a fresh tensor each call: adding to it in place changes no later call
    assert pruner.alignment_loss() is not z and pruner.alignment_loss().item() == 0.0


def test_group_layers_end_with_one_index_set():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    while not pruner.done:
        loss = model(_x()).abs().mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    small = pruner.slim()
    stream = ["head.0", "body.0.body.2", "body.1.body.2", "body.2"]
    widths = {small.get_submodule(n).out_channels for n in stream}
    assert widths == {4}


# --- slim ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PRUNABLE, ids=lambda c: c.name)
def test_slim_after_pruning_equals_masked_on_the_battery(case):
    model = case.build().eval()
    extra = [case.other_inputs(0)] if case.other_inputs else []
    pruner = assl.Pruner(model, case.inputs(0), ratio=0.5, extra_inputs=extra, schedule=TINY)
    with torch.no_grad():  # make the scales differ from the weights' norms, as after training
        for g in pruner.scale_parameters():
            g.mul_(torch.rand_like(g) + 0.5)
    plan = pruner.plan()
    masked = assl.masked_copy(model, pruner.graph, plan)
    small = pruner.slim()
    for x in [case.inputs(1)] + ([case.other_inputs(2)] if case.other_inputs else []):
        assert max_rel_err(masked, small, x) <= 1e-5
    assert sum(p.numel() for p in small.parameters()) == pruner.graph.count_params(plan)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in small.modules())


def test_slim_warns_when_the_removed_channels_still_matter(caplog):
    def pruned(zero_chosen):
        model = _edsr(blocks=2, feats=8)
        pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
        pruner._step = TINY.bounds(True)[2]  # the schedule is over, whatever it achieved
        pruner.plan()
        if zero_chosen:  # what a penalty that did its job leaves: chosen scales and biases at zero
            with torch.no_grad():
                for layer in pruner._selection.all_layers():
                    layer.scale[layer.scale_idx] = 0
                    layer.bias[layer.bias_idx] = 0
        with caplog.at_level("INFO", logger="assl"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            caplog.clear()
            small = pruner.slim()
        dense = _edsr(blocks=2, feats=8)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
        said = "slimming changed the output"
        warned = [str(w.message) for w in caught if issubclass(w.category, assl.ASSLWarning) and said in str(w.message)]
        return warned, [r.getMessage() for r in caplog.records if said in r.getMessage()]

    warned, logged = pruned(zero_chosen=False)  # a warning the user can filter or turn into an error
    assert len(warned) == 1 and not logged and "reg_limit" in warned[0]
    change = float(warned[0].split(" by ")[1].split()[0])
    assert change > assl.pruning.pruner.SLIM_CHANGE_WARNING
    warned, logged = pruned(zero_chosen=True)  # information: logged, no warning
    assert not warned and len(logged) == 1
    assert float(logged[0].split(" by ")[1].split()[0]) <= 1e-5


def test_unit_scales_are_the_layers_g_per_unit_as_a_copy():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    group = next(g for g in pruner.graph.groups if len(g.layers) > 1 and pruner.removed[g.name])
    table = pruner.unit_scales(group.name)
    assert table.shape == (len(group.layers), group.size)
    for row, layer in zip(table, group.layers):
        g = assl.pruning._scales.scale_of(model.get_submodule(layer)).scale.detach().abs()
        expected = torch.zeros(group.size).index_add(0, torch.as_tensor(group.channels(layer)), g)
        torch.testing.assert_close(row, expected, rtol=0, atol=0)
    table.zero_()
    assert pruner.unit_scales(group.name).abs().sum() > 0  # a copy: the scales are untouched
    with pytest.raises(ValueError, match="has no scales; groups that lose channels"):
        pruner.unit_scales("no-such-group")


def test_one_shot_pruning_does_not_warn_about_the_output_change():
    model = _edsr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = assl.Pruner(model, _x(), ratio=0.5, schedule=TINY).prune_now("l1")
    assert not [w for w in caught if issubclass(w.category, assl.ASSLWarning)]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in _edsr().parameters())


def test_slim_twice_and_step_after_slim_are_errors():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, schedule=TINY)
    pruner.slim()
    with pytest.raises(assl.ASSLError, match="already called"):
        pruner.slim()
    with pytest.raises(assl.ASSLError, match="already slimmed"):
        pruner.step()


def test_nan_scale_is_named():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    with torch.no_grad():
        model.body[0].body[0].parametrizations.weight[0].scale[1] = math.nan
    before = snapshot(model)
    with pytest.raises(assl.ASSLError, match=r"`body\.0\.body\.0`.*NaN"):
        pruner.slim()
    assert_same(before, snapshot(model))


# --- one-shot baseline ---------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["l1", "scale"])
def test_prune_now_removes_smallest_filters_aligned_per_group(criterion):
    model = _edsr()
    with torch.no_grad():
        for i in (1, 5):  # make units 1 and 5 of the residual stream clearly weakest
            for name in ["head.0", "body.0.body.2", "body.1.body.2", "body.2"]:
                model.get_submodule(name).weight[i].mul_(0.01)
    pruner = assl.Pruner(model, _x(), ratio=0.25, skip=["*mean*", "*tail*"])
    small = pruner.prune_now(criterion)
    assert pruner.chosen()["head.0"] == [1, 5]
    assert small.head[0].out_channels == 6
    with pytest.raises(ValueError, match="criterion"):
        assl.Pruner(_edsr(), _x(), ratio=0.25).prune_now("l2")


# --- ratios, budgets, rounding -------------------------------------------------------------


def test_ratio_mapping_first_match_wins_and_unmatched_layers_stay():
    model = _edsr(feats=8)
    ratio = {"body.0.*": 0.25, "body.*.body.0": 0.5}
    pruner = assl.Pruner(model, _x(), ratio=ratio, skip=["*mean*", "*tail*"], schedule=TINY)
    assert pruner.removed["body.0.body.0"] == 2 and pruner.removed["body.1.body.0"] == 4
    # the residual group takes the ratio of its one matched layer (body.0.body.2)
    assert pruner.removed["head.0"] == 2
    other = assl.Pruner(_edsr(), _x(), ratio={"body.*.body.0": 0.5}, schedule=TINY)
    assert other.removed["head.0"] == 0  # no layer of the group matches: it keeps everything


def test_group_with_conflicting_ratios_is_an_error():
    with pytest.raises(ValueError, match="different ratios"):
        assl.Pruner(_edsr(), _x(), ratio={"head.0": 0.5, "*": 0.25}, schedule=TINY)


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_budget_is_met_with_one_ratio(kind):
    model = _edsr(blocks=2, feats=16)
    graph = assl.trace(model, _x())
    dense = graph.count_params() if kind == "params" else graph.count_macs()
    target = dense // 2
    pruner = assl.Pruner(model, _x(), budget=assl.Budget(**{kind: target}), skip=["*mean*"], schedule=TINY)
    plan = pruner.plan()
    got = pruner.graph.count_params(plan) if kind == "params" else pruner.graph.count_macs(plan)
    assert got <= target and got > 0.8 * target
    small = pruner.slim()
    if kind == "params":
        assert sum(p.numel() for p in small.parameters()) == got


def test_unreachable_budget_and_bad_budget():
    with pytest.raises(ValueError, match="cannot be met"):
        assl.Pruner(_edsr(), _x(), budget=assl.Budget(params=10), schedule=TINY)
    with pytest.raises(ValueError, match="exactly one"):
        assl.Budget(params=10, macs=10)


def test_round_to_keeps_multiples():
    model = _edsr(feats=32)
    pruner = assl.Pruner(model, _x(), ratio=0.6, round_to=8, skip=["*mean*", "*tail*"], schedule=TINY)
    small = pruner.slim()
    for m in small.body.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 8 == 0 and m.out_channels == 16  # ceil(0.6*32)=20 -> keep 12 -> 16


def test_ratio_0_80859375_keeps_49_of_256():
    from assl.budgets.budget import units_to_remove

    class G:
        size, num_prunable = 256, 256

    assert units_to_remove(G, 0.80859375, 1) == 207  # type: ignore[arg-type]
    assert units_to_remove(G, 0.80859375, 8) == 200  # type: ignore[arg-type]


# --- groups and skips ----------------------------------------------------------------------


def test_authors_patterns_work_unchanged_on_rcan_and_edsr():
    class Wrapped(nn.Module):  # the authors' module names carry a `model.` prefix
        def __init__(self):
            super().__init__()
            self.model = _edsr(blocks=3)

        def forward(self, x):
            return self.model(x)

    pruner = assl.Pruner(
        Wrapped(), _x(), ratio=0.5, skip="*mean*,*tail*", groups=["model.head.0,model.body.3,*body.2"], schedule=TINY
    )
    assert pruner.aligned == ["model.head.0"]
    torch.manual_seed(0)
    assert assl.Pruner(RCAN(), _x(), ratio=0.5, skip=["*tail*"], schedule=TINY).aligned


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.0}, r"\[0, 1\)"),
        ({"ratio": -0.1}, r"\[0, 1\)"),
        ({"ratio": math.nan}, r"\[0, 1\)"),
        ({"ratio": {"body.*": 1.5}}, r"ratio\['body\.\*'\]"),
        ({"ratio": 0.5, "skip": ["*nothing*"]}, "skip pattern '\\*nothing\\*' matches no module"),
        ({"ratio": 0.5, "groups": [["head.0", "*.body.2"]]}, "leaves out body.2"),
        (
            {"ratio": 0.5, "groups": [["head.0", "body.2", "*body.2", "body.0.body.0"]]},
            r"not tied together.*8 channels",
        ),
        ({"ratio": 0.5, "skip": ["*mean*", "*tail*"], "groups": [["body.0.body.0"]]}, "in no group"),
        ({"ratio": 0.5, "groups": [["*zzz*"]]}, r"groups\[0\] pattern '\*zzz\*' matches no prunable layer"),
        ({"ratio": 0.0}, "nothing to prune"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
    ],
    ids=[
        "one",
        "negative",
        "nan",
        "mapping",
        "skip",
        "missing",
        "widths",
        "uncovered",
        "group_pattern",
        "zero",
        "round_to",
    ],
)
def test_bad_configuration_raises_and_leaves_model_untouched(kwargs, match):
    model = _edsr()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        assl.Pruner(model, _x(), schedule=TINY, **kwargs)
    assert_same(before, snapshot(model))
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def test_second_pruner_on_the_same_model_is_refused():
    model = _edsr()
    assl.Pruner(model, _x(), ratio=0.5, schedule=TINY)
    with pytest.raises(ValueError, match="one Pruner at a time"):
        assl.Pruner(model, _x(), ratio=0.5, schedule=TINY)


def test_attach_needs_an_optimizer_that_updates_the_scales():
    model = _edsr()
    early = torch.optim.Adam(model.parameters(), lr=1e-3)  # built before the Pruner: no scales
    pruner = assl.Pruner(model, _x(), ratio=0.5, schedule=TINY)
    with pytest.raises(ValueError, match=r"does not update the scales.*create the Pruner on the bare model first"):
        pruner.attach(early)
    early.add_param_group({"params": pruner.scale_parameters(), "lr": 1e-2})
    pruner.attach(early)
    with pytest.raises(ValueError, match="already attached"):
        pruner.attach(early)


def test_summary_and_state_are_plain_data():
    pruner = assl.Pruner(_edsr(), _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    text = pruner.summary()
    assert "phase align" in text and "head.0" in text
    state = pruner.state_dict()

    def plain(o):
        if isinstance(o, dict):
            return all(isinstance(k, str) and plain(v) for k, v in o.items())
        if isinstance(o, list):
            return all(plain(v) for v in o)
        return isinstance(o, (int, float, str, bool)) or o is None

    assert plain(state)


def test_half_precision_models_are_verified_at_their_precision():
    model = _edsr(feats=16).to(torch.bfloat16)
    pruner = assl.Pruner(model, _x().to(torch.bfloat16), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    small = pruner.prune_now("l1")
    assert all(p.dtype == torch.bfloat16 for p in small.parameters())
    from assl._slim import max_rel_err, tolerance

    assert tolerance(small) == 2e-2 and tolerance(_edsr()) == 1e-4
    masked = assl.masked_copy(_edsr(feats=16), assl.trace(_edsr(feats=16), _x()), {})
    assert max_rel_err(masked, _edsr(feats=16), _x(1)) == 0.0


# --- alignment that aligns ---------------------------------------------------------------


def _disagreeing_scores(seed: int) -> torch.Tensor:
    """6 layers x 32 units whose kept sets (16 of 32) agree at about 0.6-0.7 (chance: 0.5)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(32, generator=g) + 0.5
    return (base + 0.3 * base.mean() * torch.randn(6, 32, generator=g)).abs()


def _adam_on_loss_alone(loss_fn, start: torch.Tensor, steps: int = 150) -> torch.Tensor:
    s = nn.Parameter(start.clone())
    opt = torch.optim.Adam([s], lr=1e-2)
    for _ in range(steps):
        loss = loss_fn(s.abs(), 16)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return s.detach().abs()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_alignment_loss_aligns_without_inflating_the_scores(seed):
    start = _disagreeing_scores(seed)
    assert 0.55 < agreement(start, 16) < 0.8
    end = _adam_on_loss_alone(consensus_loss, start)
    assert agreement(end, 16) >= 0.9
    assert float((end - start).abs().mean() / start.mean()) <= 0.5  # drift
    assert abs(float(end.mean() / start.mean()) - 1) < 0.1  # no inflation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_authors_alignment_loss_does_not_align_and_inflates_the_scores(seed):
    start = _disagreeing_scores(seed)
    end = _adam_on_loss_alone(alignment_loss, start)
    assert agreement(end, 16) < agreement(start, 16) + 0.05
    assert float(end.mean() / start.mean()) > 1.3


def test_the_default_alignment_loss_is_bounded_whatever_the_width_and_depth():
    for layers, units in [(2, 4), (6, 32), (40, 512)]:
        g = torch.Generator().manual_seed(layers)
        worst = torch.stack([torch.randperm(units, generator=g).float() for _ in range(layers)])
        k = units // 2
        assert 0 < float(consensus_loss(worst, k)) <= 0.25
        assert float(consensus_loss(worst[:1].repeat(layers, 1), k)) < 1e-12
        assert float(alignment_loss(worst, k)) < -0.1 * units / 4  # the authors' grows with the width


def test_pruner_alignment_forms_and_agreement():
    model = _edsr()
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    assert TINY.align_loss == "consensus" and assl.Schedule.paper().align_loss == "authors"
    loss = pruner.alignment_loss()
    assert loss.requires_grad and 0 <= loss.item() <= 0.25
    agree = pruner.alignment_agreement()
    assert set(agree) == {"head.0"} and 0 <= agree["head.0"] <= 1
    assert "yes (" in pruner.summary()
    authors = assl.Pruner(
        _edsr(), _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=replace(TINY, align_loss="authors")
    )
    assert authors.alignment_loss().item() < 0
    with pytest.raises(ValueError, match="align_loss"):
        assl.Schedule(align_loss="mean")


# --- progress and dense weights ----------------------------------------------------------


def test_progress_record_counts_down_to_done():
    model = _edsr()
    sched = assl.Schedule.for_steps(30)
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=sched)
    first = pruner.progress()
    assert (first.phase, first.step, first.steps_left, first.alive) == ("align", 0, 30, None)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    while not pruner.done:
        pruner.step()
    last = pruner.progress(liveness=True)
    assert (last.phase, last.step, last.steps_left) == ("done", 30, 0)
    assert last.alive is not None and 0 <= last.alive <= 1
    assert set(last.postfix()) == {"phase", "left", "penalty", "alive"} and "left 0" in str(last)


def test_dense_weights_load_into_a_pruned_in_progress_model():
    trained = _edsr(seed=5)
    model = _edsr(seed=1)
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    with pytest.raises(RuntimeError, match=r"parametrizations\.weight\.original"):
        model.load_state_dict(trained.state_dict())
    pruner.load_dense_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), trained(_x()), rtol=1e-5, atol=1e-5)
    scale = pruner.unit_scales("head.0")[0]  # restarted at the loaded weights' norms
    norms = trained.head[0].weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(scale, norms[: scale.numel()])
    pruner.load_dense_state_dict(model.state_dict())  # its own (parametrized) state loads too


def test_a_schedule_with_an_align_phase_warns_at_the_first_step_when_no_group_is_aligned(recwarn):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3))
    pruner = assl.Pruner(model, torch.randn(1, 3, 8, 8), ratio=0.5, schedule=assl.Schedule.for_steps(200))
    assert not pruner.aligned and pruner.total_steps < 200
    assert not recwarn.list  # creating it is no use of the schedule (prune_now() uses none)
    with pytest.warns(assl.ASSLWarning, match=f"done after {pruner.total_steps} steps, not 200"):
        pruner.step()
    pruner.step()  # once
    assert not [w for w in recwarn.list if issubclass(w.category, assl.ASSLWarning)]
    pruner = assl.Pruner(_edsr(), _x(), ratio=0.5, schedule=assl.Schedule.for_steps(200, align=False))
    pruner.step()
    assert pruner.total_steps == 200 and not recwarn.list
