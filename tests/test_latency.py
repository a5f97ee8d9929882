"""Latency budgets: the step detector, the table, the prediction and the width solver.

Everything that decides is tested on synthetic tables, where the right answer is known; the one
test that times real layers checks only what the measurement must leave behind (no timings are
asserted: machines are shared and noisy).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from models import EDSR, ResNet

import assl
from assl.budgets._width_solver import allowed_widths, solve_widths
from assl.budgets.budget import MIN_WIDTH
from assl.budgets.latency import LatencyTable, _dim_grid, detect_step, relative_noise, timed_layers, widths_grid
from assl.budgets.latency_plan import MIN_BAND, LatencyModel, min_widths
from assl.budgets.timing import timeable


def blocky(cin: float, cout: float, positions: int, step: int = 8) -> float:
    """A layer whose time grows with whole blocks of ``step`` channels on each side."""
    return 1e-9 * positions * step * math.ceil(cin / step) * step * math.ceil(cout / step)


def synthetic_table(model, x, *, step=1, max_points=64, fixed=1e-4, cost=blocky, calibrate=False) -> LatencyTable:
    """A table laid out as ``LatencyTable.measure`` lays it out, with ``cost`` instead of timings."""
    graph = assl.trace(model, x)
    grids = {g.name: widths_grid(g.size, max(1, g.size - g.num_prunable), step, max_points) for g in graph.groups}
    layers, signatures, total = {}, [], 0.0
    for name, (shape, positions, shares) in timed_layers(graph).items():
        d_out = 1 if isinstance(model.get_submodule(name), torch.nn.ConvTranspose2d) else 0
        grid_in = _dim_grid(shape[1 - d_out], shares.get(1 - d_out, {}), grids, max_points)
        grid_out = _dim_grid(shape[d_out], shares.get(d_out, {}), grids, max_points)
        signatures.append([[cost(a, b, positions) for b in grid_out] for a in grid_in])
        layers[name] = {"weight": list(shape), "out_dim": d_out, "in": grid_in, "out": grid_out, "calls": [len(layers)]}
        total += signatures[-1][-1][-1]
    table = LatencyTable("synthetic", "float32", total + fixed, step, layers, signatures)  # nothing to verify on
    if calibrate:  # the rest measured as exactly `fixed` at half width too
        half = {g.name: g.size // 2 for g in graph.groups if g.num_prunable >= g.size // 2 > 0}
        table.calibration = [{"removed": half, "seconds": LatencyModel(table, graph).layer_seconds(half) + fixed}]
    return table


def edsr(feats: int = 32) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return EDSR(2, feats, 2).eval(), torch.randn(1, 3, 8, 8)


# --- the step of a measured curve --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_detect_step_reads_plateaus_through_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    widths = list(range(16, 97))

    def noisy(curve: list[float]) -> np.ndarray:
        return np.asarray(curve) * (1 + 0.02 * rng.standard_normal(len(curve)))

    assert detect_step(widths, noisy([0.3 + 0.2 * math.ceil(w / 16) for w in widths])) == 16
    assert detect_step(widths, noisy([0.3 + 0.1 * math.ceil(w / 8) for w in widths])) == 8
    assert detect_step(widths, noisy([0.01 * w for w in widths])) == 1  # smooth: no step
    assert detect_step(widths, noisy([1e-3 * w * w for w in widths])) == 1
    assert detect_step(widths, 1 + 0.05 * rng.standard_normal(len(widths))) == 1  # noise alone


def test_widths_grid_and_allowed_widths() -> None:
    assert widths_grid(64, 1, 8, 12) == [1, 8, 16, 24, 32, 40, 48, 56, 64]
    coarse = widths_grid(2048, 1, 8, 12)
    assert len(coarse) <= 14 and coarse[-1] == 2048 and all(w % 8 == 0 for w in coarse[1:])
    assert widths_grid(10, 10, 4, 12) == [10]  # nothing prunable: the full width only
    assert allowed_widths(64, 20, 16) == [32, 48, 64]
    assert allowed_widths(60, 1, 16) == [16, 32, 48, 60]  # the full width even off the step


# --- prediction ---------------------------------------------------------------------------------


def test_prediction_is_the_table_at_its_grid_points_plus_the_rest() -> None:
    model, x = edsr()
    table = synthetic_table(model, x, calibrate=True)  # the rest: a fixed 1e-4 s
    graph = assl.trace(model, x)
    lm = LatencyModel(table, graph)
    assert lm.seconds({}) == pytest.approx(table.dense)
    body = next(g for g in graph.groups if g.name.endswith("body.0"))
    removed = {body.name: 16}
    expected = table.dense
    for shape, positions, shares in timed_layers(graph).values():
        for dim, s in shares.items():
            if body.name in s:  # the one layer writing the group and the one reading it
                before = (shape[1], shape[0])
                after = (shape[1] - 16 * s[body.name], shape[0]) if dim == 1 else (shape[1], shape[0] - 16)
                expected += blocky(*after, positions) - blocky(*before, positions)
    assert lm.seconds(removed) == pytest.approx(expected, rel=1e-9)
    assert lm.change({}, body.name, 16) == pytest.approx(expected - table.dense, rel=1e-9)


def test_calibration_splits_the_rest_into_fixed_and_scaled_parts() -> None:
    model, x = edsr()
    table = synthetic_table(model, x, fixed=2e-4, calibrate=True)
    lm = LatencyModel(table, assl.trace(model, x))
    assert lm.fixed == pytest.approx(2e-4, rel=1e-6)  # the rest did not shrink at half width
    assert lm.rest == pytest.approx(0.0, abs=1e-9)


def test_table_of_another_model_is_refused_naming_the_layer() -> None:
    model, x = edsr(32)
    table = synthetic_table(model, x)
    other, _ = edsr(16)
    with pytest.raises(ValueError, match=r"`head.0` has weight \(16, 3, 3, 3\)"):
        LatencyModel(table, assl.trace(other, x))


def test_table_is_plain_data_that_survives_weights_only_loading(tmp_path) -> None:
    model, x = edsr()
    table = synthetic_table(model, x, calibrate=True)
    table.save(tmp_path / "t.pt")
    back = LatencyTable.load(tmp_path / "t.pt")
    assert back == table
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.from_dict({"format": 99})
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.from_dict({**table.to_dict(), "extra": 1})


# --- the solver ---------------------------------------------------------------------------------


class Additive:
    """A latency model where each group's units cost ``per_unit[g]`` seconds, independently."""

    def __init__(self, per_unit: dict[str, float], sizes: dict[str, int]) -> None:
        self.per_unit, self.sizes = per_unit, sizes

    def seconds(self, removed):
        return sum(c * (self.sizes[g] - removed.get(g, 0)) for g, c in self.per_unit.items())

    def change(self, removed, g, k):
        return -self.per_unit[g] * (k - removed.get(g, 0))

    def neighbours(self):
        return {g: {g} for g in self.sizes}


def test_solver_drops_the_least_important_units_per_second() -> None:
    sizes = {"a": 16, "b": 16}
    lm = Additive({"a": 1.0, "b": 1.0}, sizes)
    allowed = {g: list(range(1, 17)) for g in sizes}
    scores = {"a": np.full(16, 0.1), "b": np.full(16, 5.0)}  # a's units matter less
    removed = solve_widths(lm, sizes, allowed, scores, target=24.0)
    assert removed == {"a": 8, "b": 0}
    # b's units now save three times the time each: worth more than a's importance ratio
    lm = Additive({"a": 1.0, "b": 100.0}, sizes)
    removed = solve_widths(lm, sizes, allowed, scores, target=lm.seconds({}) - 300.0)
    assert removed["b"] == 3 and lm.seconds(removed) <= lm.seconds({}) - 300.0


def test_solver_spreads_cuts_instead_of_emptying_the_group_that_saves_most() -> None:
    sizes = {"a": 16, "b": 16}
    lm = Additive({"a": 2.0, "b": 1.0}, sizes)  # a's units save twice the time, equal importance
    allowed = {g: list(range(1, 17)) for g in sizes}
    scores = {g: np.ones(16) for g in sizes}
    removed = solve_widths(lm, sizes, allowed, scores, target=lm.seconds({}) - 24.0)
    assert lm.seconds(removed) <= lm.seconds({}) - 24.0
    assert removed["a"] > removed["b"] > 0  # more from a, but each further unit of a costs more
    assert removed["a"] < 12  # taking a's units alone would leave it 4 of 16


def test_solver_widens_again_when_a_jump_overshoots() -> None:
    sizes = {"a": 16, "b": 16}
    lm = Additive({"a": 1.0, "b": 1.0}, sizes)
    allowed = {"a": [8, 16], "b": list(range(1, 17))}
    scores = {"a": np.full(16, 0.1), "b": np.full(16, 1.0)}
    removed = solve_widths(lm, sizes, allowed, scores, target=29.0)
    assert lm.seconds(removed) <= 29.0
    assert removed == {"a": 8, "b": 0}  # b is not cut once a's jump already met the target
    removed = solve_widths(lm, sizes, allowed, scores, target=21.0)
    assert removed == {"a": 8, "b": 3}


def test_solver_lands_on_the_steps_of_the_latency_curve() -> None:
    model, x = edsr(32)
    table = synthetic_table(model, x, step=1)  # every width measured; time climbs per 8 channels
    pruner = assl.Pruner(model, x, budget=assl.Budget(relative_latency=0.5, table=table), skip=["tail*"])
    plan = pruner.latency
    assert plan is not None and plan.predicted <= plan.target == pytest.approx(0.5 * table.dense)
    assert plan.describe() in pruner.summary()
    cut = {g: w for g, w in plan.widths.items() if pruner.removed[g]}
    assert cut and all(w % 8 == 0 for w in cut.values()), cut  # widths in between cost a whole block


def test_round_to_auto_takes_the_tables_step() -> None:
    model, x = edsr(32)
    table = synthetic_table(model, x, step=1)
    table.step = 16
    pruner = assl.Pruner(model, x, budget=assl.Budget(relative_latency=0.6, table=table), round_to="auto")
    assert pruner.latency is not None and pruner.latency.step == 16
    assert all(w % 16 == 0 or pruner.removed[g] == 0 for g, w in pruner.latency.widths.items())


def test_same_table_same_weights_same_widths() -> None:
    model, x = edsr()
    table = synthetic_table(model, x)
    budget = assl.Budget(relative_latency=0.4, table=table, verify=False)
    a = assl.Pruner(copy.deepcopy(model), x, budget=budget)
    b = assl.Pruner(copy.deepcopy(model), x, budget=budget)
    assert a.removed == b.removed and a.state_dict() == b.state_dict()


def test_a_check_that_cannot_run_here_is_an_assl_warning() -> None:
    model, x = edsr()
    table = synthetic_table(model, x)  # of another device: the widths cannot be timed here
    with pytest.warns(assl.ASSLWarning, match="not checked by timing here: the table is of synthetic") as caught:
        pruner = assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(relative_latency=0.4, table=table))
    assert pruner.latency is not None and pruner.latency.checked is None and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", assl.ASSLWarning)  # verify=False: the user knows, nothing to say
        assl.Pruner(model, x, budget=assl.Budget(relative_latency=0.4, table=table, verify=False))


def test_unreachable_and_already_met_targets_say_the_numbers() -> None:
    model, x = edsr()
    table = synthetic_table(model, x)
    with pytest.raises(ValueError, match=r"cannot be met: the smallest allowed widths are predicted at [0-9.]+ ms"):
        assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(latency=table.dense * 1e-3, table=table))
    with pytest.raises(ValueError, match="already meets the latency target"):
        assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(latency=table.dense * 2, table=table))
    assert not any(n.endswith("parametrizations") for n, _ in model.named_modules())


def test_budget_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        assl.Budget(params=10, latency=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        assl.Budget()
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        assl.Budget(relative_latency=1.5)
    with pytest.raises(ValueError, match="positive number"):
        assl.Budget(latency=-1.0)
    with pytest.raises(ValueError, match="goes with latency"):
        assl.Budget(params=10, table=LatencyTable("cpu", "float32", 1.0, 1, {}, []))
    with pytest.raises(TypeError, match="must be a bool"):
        assl.Budget(latency=0.1, verify="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"assl\.LatencyTable"):
        assl.Budget(latency=0.1, table={"format": 1})  # type: ignore[arg-type]
    model, x = edsr()
    with pytest.raises(ValueError, match=r"round_to='auto' takes the width step from a latency table"):
        assl.Pruner(model, x, ratio=0.5, round_to="auto")
    with pytest.raises(ValueError, match="round_to must be"):
        assl.Pruner(model, x, ratio=0.5, round_to="eight")  # type: ignore[arg-type]


def test_a_device_that_cannot_be_timed_says_so() -> None:
    with pytest.raises(ValueError, match="latency cannot be measured on device 'meta'"):
        timeable(torch.device("meta"))


# --- measuring on this machine ------------------------------------------------------------------
# The tests' timer counts work (tests/conftest.py): what is measured below is the same on a loaded
# machine. The test marked real_timer times the wall clock and asserts no timing.


def test_the_tests_timer_counts_work_and_says_the_same_every_time() -> None:
    model, x = edsr()
    first = LatencyTable.measure(model, x, step=8, max_points=3, rounds=2)
    assert LatencyTable.measure(model, x, step=8, max_points=3, rounds=2) == first
    wide, narrow = (torch.nn.Conv2d(16, c, 3, padding=1) for c in (16, 4))
    x16 = torch.randn(1, 16, 16, 16)
    assert assl.measure_latency(wide, x16) > assl.measure_latency(narrow, x16) > 0


@pytest.mark.real_timer
def test_measuring_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = ResNet().train()
    x = torch.randn(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = LatencyTable.measure(model, x, step=4, max_points=3, rounds=1, min_time=1e-5)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    graph = assl.trace(model, x)
    assert set(table.layers) == set(timed_layers(graph))
    assert all(s for _, _, s in timed_layers(graph).values())
    for row in table.layers.values():
        shape = row["weight"]
        assert row["out"][-1] == shape[row["out_dim"]] and row["in"][-1] == shape[1 - row["out_dim"]]
        for i in row["calls"]:
            assert np.all(np.asarray(table.signatures[i]) > 0)
    assert table.dense > 0 and table.calibration and all(c["seconds"] > 0 for c in table.calibration)
    assert table.device == "cpu" and table.dtype == "float32"


def test_a_budget_measured_here_is_verified_measured_and_resumable() -> None:
    torch.manual_seed(0)
    model, x = EDSR(2, 64, 2).eval(), torch.randn(1, 3, 32, 32)  # the convolutions dominate its time
    table = LatencyTable.measure(model, x, step=8, max_points=3, rounds=3)
    pruner = assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(relative_latency=0.6, table=table))
    plan = pruner.latency
    assert plan is not None and plan.checked is not None and plan.checked > 0  # checked: the table is this device's
    sizes = {g.name: g.size for g in pruner.graph.groups}
    assert all(0 < plan.widths[g] == sizes[g] - k for g, k in pruner.removed.items())  # the plan is what is pruned
    pruner.slim()
    assert plan.measured is not None and plan.measured > 0  # measured on the table's device
    again = assl.Pruner(copy.deepcopy(model), x, ratio=plan.ratios())  # resuming: no timing
    assert again.removed == pruner.removed
    assert table.inputs == [[1, 3, 32, 32]]
    small_inputs = assl.Pruner(
        copy.deepcopy(model), x[..., :16, :16], budget=assl.Budget(relative_latency=0.6, table=table)
    )
    other = small_inputs.latency
    assert other is not None and other.checked is None  # another input size times something else
    small_inputs.slim()
    assert other.measured is None


@pytest.mark.parametrize(
    ("measured", "expected", "aims"),
    [
        ([0.97], 0, []),  # within the target: kept
        ([1.2, 0.98], 1, [1.0 / 1.2]),  # too slow: solved for a lower prediction
        ([0.8, 0.99], 1, [1.0 / 0.8]),  # room left: solved for a higher prediction, still within
        ([0.8, 1.1, 1.05], 0, [1.0 / 0.8, 1.0 / 0.8 / 1.1]),  # the widest copy within the target wins
        ([1.3, 1.2, 1.1], 2, [1.0 / 1.3, 1.0 / 1.3 / 1.2]),  # none within: the fastest, with a warning
    ],
)
def test_the_check_moves_the_prediction_by_the_measured_miss(monkeypatch, measured, expected, aims) -> None:
    import assl.budgets.latency_plan as lb

    plans = [{"g": i} for i in range(len(measured))]
    seen = iter(measured)
    monkeypatch.setattr(lb, "_measured_ratio", lambda *args: (next(seen), 0.0))
    asked = []

    def solve(aim: float) -> dict:
        asked.append(aim)
        return plans[len(asked)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        removed, seconds = lb._verified(None, None, None, solve, plans[0], target=1.0, dense=1.0)
    assert removed == plans[expected] and seconds == measured[expected]
    assert asked == pytest.approx(aims)
    missed = [
        w for w in caught if issubclass(w.category, assl.ASSLWarning) and "misses on this device" in str(w.message)
    ]
    assert len(missed) == (min(measured) > 1.02)


def test_a_loud_check_moves_the_aim_at_most_by_the_correction_cap(monkeypatch) -> None:
    import assl.budgets.latency_plan as lb

    seen = iter([2.0, 1.6, 1.0])  # one loud measurement must not halve the next aim
    monkeypatch.setattr(lb, "_measured_ratio", lambda *args: (next(seen), 0.0))
    asked = []

    def solve(aim: float) -> dict:
        asked.append(aim)
        return {"g": len(asked)}

    removed, seconds = lb._verified(None, None, None, solve, {"g": 0}, target=1.0, dense=1.0)
    cap = lb.MAX_CORRECTION
    assert asked == pytest.approx([1 / cap, 1 / cap**2]) and removed == {"g": 2} and seconds == 1.0


@pytest.mark.parametrize(
    "measured, asked, expected",
    [
        ([0.97], [], 0),  # the floor meets the target: the same answer as the table's
        ([1.1], [], 0),  # the floor is too slow: nothing smaller to go to (and a warning)
        ([0.5, 0.99], [1.5], 1),  # the floor is far faster than the table said: wider widths fit
    ],
)
def test_the_floor_is_solved_again_only_when_measured_well_below_the_target(monkeypatch, measured, asked, expected):
    import assl.budgets.latency_plan as lb

    seen = iter(measured)
    monkeypatch.setattr(lb, "_measured_ratio", lambda *args: (next(seen), 0.0))
    aims = []

    def solve(aim: float) -> dict:
        aims.append(aim)
        return {"g": len(aims)}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        removed, seconds = lb._verified(None, None, None, solve, {"g": 0}, target=1.0, dense=1.0, at_floor=True)
    assert aims == pytest.approx(asked) and removed == {"g": expected} and seconds == measured[-1]
    floor = [w for w in caught if "these are the smallest allowed widths" in str(w.message)]
    assert len(floor) == (measured == [1.1])


@pytest.mark.parametrize("uncertainty, accepted", [(0.0, False), (0.1, True)])
def test_the_check_tolerates_its_own_uncertainty_not_the_tables_noise(monkeypatch, uncertainty, accepted) -> None:
    import assl.budgets.latency_plan as lb

    seen = iter([1.08, 0.99, 0.99])
    monkeypatch.setattr(lb, "_measured_ratio", lambda *args: (next(seen), uncertainty))
    removed, seconds = lb._verified(None, None, None, lambda aim: {"g": 1}, {"g": 0}, target=1.0, dense=1.0)
    assert (removed, seconds) == (({"g": 0}, 1.08) if accepted else ({"g": 1}, 0.99))


@pytest.mark.parametrize("spread, rounds", [(0.0, 9), (0.005, 9), (0.4, 45)])
def test_a_noisy_check_takes_more_rounds_up_to_a_cap(monkeypatch, spread, rounds) -> None:
    import assl.budgets.latency_plan as lb

    model, x = edsr(16)
    graph = assl.trace(model, x)
    rng = np.random.default_rng(0)
    taken = []

    def fake(calls, device, *, rounds, seed=0, **kw):
        taken.append(rounds)
        dense = np.ones(rounds)
        return np.stack([dense, 0.5 * (1 + spread * rng.standard_normal(rounds))], axis=1)

    monkeypatch.setattr(lb, "interleaved", fake)
    median, uncertainty = lb._measured_ratio(model, x, graph, {g.name: 0 for g in graph.groups})
    assert sum(taken) == rounds and abs(median - 0.5) < 0.5 * max(spread, 1e-9) * 2
    assert (uncertainty <= lb.TOLERANCE / 2) == (rounds < lb.MAX_CHECK_ROUNDS)


def test_median_uncertainty_shrinks_with_the_square_root_of_the_rounds() -> None:
    from assl.budgets.latency_plan import median_uncertainty

    few = np.tile([0.9, 1.0, 1.1, 1.0], 4)
    many = np.tile(few, 4)
    assert median_uncertainty(few)[0] == 1.0
    assert median_uncertainty(few)[1] == pytest.approx(2 * median_uncertainty(many)[1])


# --- floors, spreading, the noise band ------------------------------------------------------------


def _floor_seconds(model, x, table, min_width=MIN_WIDTH) -> float:
    """The predicted seconds of the smallest widths a budget with ``min_width`` allows (step 1)."""
    graph = assl.trace(model, x)
    floors = min_widths(graph, min_width)
    fastest = {
        g.name: (g.num_prunable and min(g.num_prunable, g.size - max(1, math.ceil(floors[g.name] * g.size - 1e-9))))
        for g in graph.groups
    }
    return LatencyModel(table, graph).seconds(fastest)


@pytest.mark.parametrize("feats", [16, 32, 48])
def test_every_group_keeps_its_floor_even_for_the_tightest_target(feats: int) -> None:
    model, x = edsr(feats)
    table = synthetic_table(model, x)
    target = _floor_seconds(model, x, table) * 1.0001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", assl.ASSLWarning)
        pruner = assl.Pruner(model, x, budget=assl.Budget(latency=target, table=table, verify=False))
    plan = pruner.latency
    assert plan is not None and plan.predicted <= target * (1 + MIN_BAND)
    for g in pruner.graph.groups:
        if pruner.removed[g.name]:
            assert plan.widths[g.name] >= math.ceil(g.size / 8), (g.name, plan.widths[g.name])
    assert "->" in plan.describe_widths() and "widths:" in pruner.summary()


def test_min_width_per_glob_raises_one_groups_floor() -> None:
    model, x = edsr(32)
    table = synthetic_table(model, x)
    graph = assl.trace(model, x)
    body = next(g for g in graph.groups if any(n.startswith("body.0.body.0") for n in g.layers))
    target = _floor_seconds(model, x, table, {"body.0.body.0": 0.5}) * 1.0001
    budget = assl.Budget(latency=target, table=table, verify=False, min_width={"body.0.body.0": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", assl.ASSLWarning)
        pruner = assl.Pruner(model, x, budget=budget)
    assert pruner.latency is not None and pruner.latency.widths[body.name] >= 16
    assert min_widths(graph, {"body.0.body.0": 0.5})[body.name] == 0.5
    assert all(v == MIN_WIDTH for k, v in min_widths(graph, {"body.0.body.0": 0.5}).items() if k != body.name)
    with pytest.raises(assl.PatternError, match="min_width"):
        min_widths(graph, {"nothing.like.it": 0.5})


def test_a_group_emptied_beyond_ninety_percent_is_warned_about() -> None:
    model, x = edsr(32)
    table = synthetic_table(model, x)
    target = _floor_seconds(model, x, table, 0.0) * 1.0001
    with pytest.warns(assl.ASSLWarning, match=r"less than 10% of their channels \(.* 32 -> [1-3]\b"):
        assl.Pruner(model, x, budget=assl.Budget(latency=target, table=table, verify=False, min_width=0.0))


def test_a_target_within_the_noise_of_the_floor_gets_the_same_answer_every_time() -> None:
    model, x = edsr(32)
    table = synthetic_table(model, x)
    table.noise = 0.04  # a band of ±8% around predictions
    floor = _floor_seconds(model, x, table)
    answers = []
    for factor in (0.93, 0.97, 1.0, 1.03, 1.07):  # all inside the band: the smallest widths, warned
        with pytest.warns(assl.ASSLWarning, match="within the timing noise"):
            p = assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(latency=floor * factor, table=table))
        answers.append(p.removed)
    assert all(a == answers[0] for a in answers)
    with pytest.raises(assl.ArgumentError, match=r"reachable") as info:
        assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(latency=floor * 0.9, table=table))
    assert "± 8%" in str(info.value)
    wide = assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(latency=floor * 1.5, table=table))
    assert sum(wide.removed.values()) < sum(answers[0].values())  # outside the band: solved as usual


def test_min_width_is_checked() -> None:
    with pytest.raises(assl.ArgumentError, match="min_width"):
        assl.Budget(relative_latency=0.5, min_width=1.5)
    with pytest.raises(assl.ArgumentError, match="goes with latency"):
        assl.Budget(params=10, min_width=0.25)
    with pytest.raises(assl.ArgumentTypeError, match="string globs"):
        assl.Budget(relative_latency=0.5, min_width={3: 0.5})  # type: ignore[dict-item]


def test_relative_noise_is_a_robust_spread_of_the_whole_model_timings() -> None:
    rng = np.random.default_rng(0)
    dense = 1 + 0.05 * rng.standard_normal(201)
    quiet = np.stack([dense, 0.5 * dense], 1)  # the copy's share does not move: the dense spread counts
    assert relative_noise(quiet) == pytest.approx(0.05, rel=0.2)
    shaky = np.stack([np.ones(201), 0.5 * (1 + 0.1 * rng.standard_normal(201))], 1)
    assert relative_noise(shaky) == pytest.approx(0.1, rel=0.2)
    outlier = np.stack([np.r_[np.ones(20), 50.0], np.ones(21)], 1)  # one slow round barely counts
    assert relative_noise(outlier) < 0.01
