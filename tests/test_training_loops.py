"""The Pruner in real training loops: warmups, closures, frozen norms, NaNs and retries.

Each failure class has a rule (docs/pruner.md, "What the Pruner refuses, leaves unchanged and warns
about"): no false alarm, no silent no-op, and a refusal changes nothing. The rules are checked on
several model shapes: a plain conv net, a BatchNorm ResNet whose channels are all carried by
BatchNorm, the Lightning tests' residual net (BatchNorm and inserted scales) and EDSR.
"""

from __future__ import annotations

import gc
import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning_net import Net as BNResidual
from models import EDSR, ResNet
from torch import nn
from util import assert_same, snapshot

import assl
from assl.pruning._alignment import TAU_FLOOR, consensus_loss


def _plain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 3, 3, padding=1),
    )


def _edsr() -> nn.Module:
    torch.manual_seed(0)
    return EDSR(n_resblocks=2, n_feats=8, scale=2)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return ResNet()


def _bn_residual() -> nn.Module:
    torch.manual_seed(0)
    return BNResidual()


def _x(size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# name -> (build, example input); ResNet carries every pruned channel in a BatchNorm
MODELS: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
    "plain": (_plain, _x()),
    "edsr": (_edsr, _x()),
    "resnet": (_resnet, _x(16)),
    "bn_residual": (_bn_residual, _x()),
}
NAMES = list(MODELS)


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).float().square().mean()


def _train(pruner: assl.Pruner, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int, *, by_hand: bool, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        (_loss(pruner.model, x) + pruner.alignment_loss()).backward()
        if by_hand:
            pruner.step()
        opt.step()
        if sched is not None:
            sched.step()


def _assl_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, assl.ASSLWarning)]


# --- 1. a learning rate that starts at 0 is no alarm; an optimizer without the scales is ----------


WARMUPS = {
    "linear_from_0": lambda s: min(1.0, s / 5),
    "zero_for_3_steps": lambda s: 0.0 if s < 3 else 1.0,
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("warmup", list(WARMUPS))
@pytest.mark.parametrize("by_hand", [True, False], ids=["by_hand", "attached"])
def test_a_warmup_from_lr_0_runs_the_whole_schedule(name, warmup, by_hand):
    build, x = MODELS[name]
    model = build()
    pruner = assl.Pruner(model, x, ratio=0.5, steps=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WARMUPS[warmup])
    if not by_hand:
        pruner.attach(opt)
    _train(pruner, opt, x, 12, by_hand=by_hand, sched=sched)
    assert pruner.step_count == 12 and pruner.done


@pytest.mark.parametrize("name", ["plain", "edsr", "bn_residual"])  # models with inserted scales
def test_an_optimizer_built_before_the_pruner_is_refused_at_the_next_step_and_that_step_changes_nothing(name):
    build, x = MODELS[name]
    model = build()
    early = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the refusal must not depend on values moving
    pruner = assl.Pruner(model, x, ratio=0.5, steps=12)
    _train(pruner, early, x, 1, by_hand=True)
    early.zero_grad()
    _loss(model, x).backward()
    before = snapshot(model)
    with pytest.raises(assl.ASSLError, match=r"updates the model but not the scales.*built before the Pruner"):
        pruner.step()
    assert_same(before, snapshot(model))
    assert pruner.step_count == 1
    # the fix: an optimizer over model.parameters() now; the run goes on to the end
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train(pruner, opt, x, 11, by_hand=True)
    assert pruner.done


def test_scales_in_an_optimizer_of_their_own_and_an_unrelated_optimizer_are_no_alarm():
    model, x = _edsr(), _x()
    pruner = assl.Pruner(model, x, ratio=0.5, steps=12)
    own = {id(p) for p in pruner.scale_parameters()}
    weights = torch.optim.SGD([p for p in model.parameters() if id(p) not in own], lr=0.05)
    scales = torch.optim.Adam(pruner.scale_parameters(), lr=1e-3)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)  # a GAN's other network
    for _ in range(12):
        for opt in (weights, scales, other):
            opt.zero_grad()
        _loss(model, x).backward()
        pruner.step()
        other.step()
        weights.step()
        scales.step()
    assert pruner.done


# --- 2. optimizer.step(closure) ----------------------------------------------------------------


def _chosen_scales(pruner: assl.Pruner) -> torch.Tensor:
    group = next(iter(pruner.chosen()))
    return pruner.unit_scales(group)[:, pruner.chosen()[group]]


def _closure_run(form: str, use_closure: bool, steps: int = 30) -> tuple[assl.Pruner, torch.Tensor]:
    model, x = _plain(), _x()
    schedule = assl.Schedule.for_steps(steps, align=False, penalty_form=form)
    pruner = assl.Pruner(model, x, ratio=0.5, schedule=schedule)
    start = _chosen_scales(pruner)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.attach(opt)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(model, x)
        loss.backward()
        return loss

    for _ in range(steps):
        if use_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
    return pruner, _chosen_scales(pruner) / start


def test_the_gradient_penalty_survives_a_closure_bit_for_bit():
    with_closure, ratio = _closure_run("gradient", True)
    without, expected = _closure_run("gradient", False)
    assert with_closure.step_count == without.step_count == 30
    torch.testing.assert_close(ratio, expected, rtol=0, atol=0)
    assert float(ratio.mean()) < 0.5  # the penalty acted (before: 1.000, the closure wiped it)


def test_the_shrink_survives_a_closure_and_the_task_cannot_hold_the_chosen_entries():
    pruner, ratio = _closure_run("shrink", True)
    _, expected = _closure_run("shrink", False)
    assert pruner.step_count == 30 and float(ratio.max()) < 1e-2
    # the closure's task gradient on the chosen entries is zeroed too: they follow the shrink alone
    torch.testing.assert_close(ratio, expected, rtol=0, atol=0)


def test_lbfgs_counts_one_step_per_optimizer_step_and_the_penalty_reaches_every_evaluation():
    model, x = _plain(), _x()
    schedule = assl.Schedule.for_steps(10, align=False, penalty_form="gradient", reg_limit=5.0)
    pruner = assl.Pruner(model, x, ratio=0.5, schedule=schedule)
    start = _chosen_scales(pruner)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    pruner.attach(opt)
    calls, losses = [0], []

    def closure() -> torch.Tensor:
        calls[0] += 1
        opt.zero_grad()
        loss = _loss(model, x)
        loss.backward()
        return loss

    for _ in range(10):
        losses.append(float(opt.step(closure).detach()))
    assert calls[0] > 10  # several evaluations per step
    assert pruner.step_count == 10 and pruner.done
    assert float((_chosen_scales(pruner) / start).max()) < 0.5
    assert all(math.isfinite(v) for v in losses)


class _SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization: ascend to w + rho * g/|g|, take the gradient there, step from w."""

    def __init__(self, params: Any, base: type[torch.optim.Optimizer], rho: float = 0.05, **kw: Any) -> None:
        super().__init__(params, {"rho": rho, **kw})
        self.base = base(self.param_groups, **kw)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm() for g in grads])) + 1e-12
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["w"] = p.detach().clone()
                    p.add_(p.grad * group["rho"] / norm)
        with torch.enable_grad():
            loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if "w" in self.state[p]:
                    p.copy_(self.state[p]["w"])
        self.base.step()
        return loss


@pytest.mark.parametrize("form", ["shrink", "gradient"])
def test_a_sam_style_optimizer_keeps_the_penalty(form):
    model, x = _plain(), _x()
    pruner = assl.Pruner(model, x, ratio=0.5, schedule=assl.Schedule.for_steps(30, align=False, penalty_form=form))
    start = _chosen_scales(pruner)
    opt = _SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    pruner.attach(opt)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(model, x)
        loss.backward()
        return loss

    for _ in range(30):
        closure()
        opt.step(closure)
    assert pruner.step_count == 30
    assert float((_chosen_scales(pruner) / start).max()) < (1e-2 if form == "shrink" else 0.5)


def test_step_by_hand_before_a_closure_is_refused_at_the_next_step():
    model, x = _plain(), _x()
    pruner = assl.Pruner(model, x, ratio=0.5, steps=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(model, x)
        loss.backward()
        return loss

    closure()
    pruner.step()
    opt.step(closure)  # recomputes the gradients: the penalty pruner.step() added is gone
    closure()
    before = snapshot(model)
    with pytest.raises(assl.ASSLError, match=r"SGD.step\(closure\) ran after pruner.step\(\).*pruner.attach"):
        pruner.step()
    assert_same(before, snapshot(model))


# --- 3. frozen normalization layers ---------------------------------------------------------------


def _freeze_norms(model: nn.Module) -> list[str]:
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)
            names.append(name)
    return names


@pytest.mark.parametrize("name", ["resnet", "bn_residual"])
def test_frozen_norms_are_shrunk_anyway(name):
    build, x = MODELS[name]
    model = build()
    _freeze_norms(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    pruner = assl.Pruner(model, x, ratio=0.5, steps=40)
    assert any(kind == "norm" for g in pruner.chosen() for _, kind in pruner.carriers(g))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    pruner.attach(opt)
    _train(pruner, opt, x, 40, by_hand=False)
    assert pruner.done
    assert max(pruner.liveness().values()) < 1e-3  # 1.01 before: the frozen carriers were never penalized
    # the shrink touched only the chosen entries of the frozen tensors
    chosen = {(c, tuple(pruner.chosen()[g])) for g in pruner.chosen() for c, k in pruner.carriers(g) if k == "norm"}
    for carrier, _ in chosen:
        w, before = model.get_submodule(carrier).weight, frozen[f"{carrier}.weight"]
        changed = (w.detach() != before).nonzero().flatten().tolist()
        assert changed and len(changed) < w.numel()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        small = pruner.slim()
    assert not _assl_warnings(record)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet", "bn_residual"])
def test_frozen_norms_under_the_gradient_form_are_refused_by_name_and_the_model_is_unchanged(name):
    build, x = MODELS[name]
    model = build()
    names = _freeze_norms(model)
    before = snapshot(model)
    with pytest.raises(assl.ArgumentError, match=rf"`{names[0]}` \(group .*frozen.*penalty_form='shrink'"):
        assl.Pruner(model, x, ratio=0.5, schedule=assl.Schedule.for_steps(40, penalty_form="gradient"))
    assert_same(before, snapshot(model))
    assl.Pruner(model, x, ratio=0.5, steps=40)  # nothing was left behind: a retry works


# --- 4. tied scores ---------------------------------------------------------------------------------


def _orthogonal(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.orthogonal_(m.weight)
    return model


@pytest.mark.parametrize("name", ["edsr", "bn_residual"])
def test_tied_scores_do_not_blow_up_the_alignment(name):
    build, x = MODELS[name]
    model = _orthogonal(build())
    pruner = assl.Pruner(model, x, ratio=0.5, steps=100)
    assert pruner.aligned and pruner.schedule.align_iters == 11
    start = {g: pruner.unit_scales(g) for g in pruner.aligned}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner.attach(opt)
    for _ in range(11):
        opt.zero_grad()
        loss = pruner.alignment_loss()
        assert 0 <= loss.item() <= 0.25
        loss.backward()
        opt.step()
    for g in pruner.aligned:  # before: |g| went 1 -> 424 -> 1.46e6 -> NaN
        ratio = pruner.unit_scales(g) / start[g]
        assert torch.isfinite(ratio).all() and float(ratio.max()) < 1.1, g


@pytest.mark.parametrize(("layers", "units"), [(2, 8), (6, 32), (3, 64)])
@pytest.mark.parametrize("size", [1e-3, 1.0, 1e3])
def test_the_consensus_gradient_is_bounded_relative_to_the_scores_size(layers, units, size):
    g = torch.Generator().manual_seed(units)
    for spread in (0.0, 1e-7, 1e-3, 0.3):  # exact ties, near ties, a real spread
        scores = size * (1 + spread * torch.randn(layers, units, generator=g))
        s = scores.abs().requires_grad_(True)
        loss = consensus_loss(s, units // 2)
        (grad,) = torch.autograd.grad(loss, s)
        assert 0 <= loss.item() <= 0.25
        mean = float(s.detach().mean())
        assert float(grad.abs().max()) * mean <= 1.05 / (2 * layers * units * TAU_FLOOR)


# --- 5. non-finite scales -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_scale_is_named_by_step_and_alignment_loss_and_nothing_changes(name, value):
    build, x = MODELS[name]
    model = build()
    pruner = assl.Pruner(model, x, ratio=0.5, steps=40)
    group = pruner.aligned[0] if pruner.aligned else next(iter(pruner.chosen()))
    layer, _ = pruner.carriers(group)[-1]
    carrier = next(c for c in pruner._selection.layers[group] if c.name == layer)
    _loss(model, x).backward()
    with torch.no_grad():
        carrier.scale[0] = value  # as a diverged update leaves it
    before = snapshot(model)
    match = rf"scales of `{layer}` contain NaN or inf"
    if pruner.phase == "align":
        with pytest.raises(assl.ASSLError, match=match):
            pruner.alignment_loss()
    with pytest.raises(assl.ASSLError, match=match):
        pruner.step()
    assert_same(before, snapshot(model))
    assert pruner.step_count == 0


# --- 6. a refused load changes nothing ----------------------------------------------------------------


def _dense_state(build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    other = build()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    return other.state_dict()


def _bad_states(state: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    keys = [k for k, v in state.items() if v.is_floating_point() and v.ndim > 1]
    first, last = keys[0], keys[-1]
    wrong = dict(state)
    wrong[last] = state[last][:1]
    missing = dict(state)
    del missing[last]
    nan = dict(state)
    nan[last] = state[last].clone().fill_(float("nan"))
    return {
        "shape": (wrong, rf"state\['{last}'\] has shape"),
        "missing": (missing, rf"missing '{last}'"),
        "unexpected": ({**state, "extra.weight": torch.zeros(1)}, r"unexpected 'extra.weight'"),
        "none": ({**state, first: None}, rf"state\['{first}'\] is a NoneType"),
        "int": ({**state, first: 3}, rf"state\['{first}'\] is a int"),
        "nan": (nan, rf"state\['{last}'\] contains NaN"),
        "not_a_mapping": ([1, 2], "takes a state dict"),  # type: ignore[dict-item]
    }


@pytest.mark.parametrize("name", NAMES)
def test_load_dense_state_dict_checks_everything_before_changing_anything(name):
    build, x = MODELS[name]
    model = build()
    pruner = assl.Pruner(model, x, ratio=0.5, steps=40)
    good = _dense_state(build)
    for what, (state, match) in _bad_states(good).items():
        before = snapshot(model)
        with pytest.raises(assl.CheckpointError, match=match):
            pruner.load_dense_state_dict(state)
        assert_same(before, snapshot(model)), what
    pruner.load_dense_state_dict(good)
    reference = build()
    reference.load_state_dict(good)
    reference.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


# --- 7. one Pruner per model ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_second_pruner_is_refused_on_every_model_until_the_first_is_gone(name):
    build, x = MODELS[name]
    model = build()
    first = assl.Pruner(model, x, ratio=0.5, steps=40)
    before = snapshot(model)
    with pytest.raises(assl.ArgumentError, match="one Pruner at a time"):
        assl.Pruner(model, x, ratio=0.5, steps=40)
    assert_same(before, snapshot(model))
    if first.scale_parameters():
        return  # the scales stay in the model: it stays refused
    assert name == "resnet"  # every carrier is a BatchNorm: nothing in the model says it is pruned
    del first
    gc.collect()
    assert assl.Pruner(model, x, ratio=0.5, steps=40).chosen()


# --- 8. advice that fits -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_slim_without_any_step_says_no_step_was_counted(name, caplog):
    build, x = MODELS[name]
    pruner = assl.Pruner(build(), x, ratio=0.5, steps=40)
    with caplog.at_level(logging.WARNING, logger="assl"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruner.slim()
    said = " ".join(_assl_warnings(record)) + caplog.text
    assert "before any step was counted" in said and "pruner.step()" in said and "attach" in said
    assert "more steps" not in said and "stabilize" not in said


@pytest.mark.parametrize("name", NAMES)
def test_one_shot_pruning_says_nothing_about_the_schedule(name, caplog):
    build, x = MODELS[name]
    with caplog.at_level(logging.WARNING, logger="assl"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        small = assl.Pruner(build(), x, ratio=0.5, schedule=assl.Schedule.for_steps(100)).prune_now("l1")
    assert not _assl_warnings(record) and "align" not in caplog.text and "steps" not in caplog.text
    assert isinstance(small, nn.Module)


# --- 9. exactly n steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [10, 37, 200])
def test_steps_n_is_done_after_exactly_n_steps_whatever_the_trace_finds(name, n):
    build, x = MODELS[name]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruner = assl.Pruner(build(), x, ratio=0.5, steps=n)
        assert pruner.total_steps == n
        assert pruner.schedule == assl.Schedule.for_steps(n, align=bool(pruner.aligned))
        for _ in range(n - 1):
            pruner.step()
        assert not pruner.done
        pruner.step()
        assert pruner.done
    assert not _assl_warnings(record)


@pytest.mark.parametrize("name", NAMES)
def test_steps_with_a_schedules_options_is_done_after_exactly_n_steps(name):
    """``steps=n, schedule=Schedule(...)``: the schedule's options, sized to n steps for the groups traced."""
    build, x = MODELS[name]
    options = assl.Schedule(guard_kept=False, align_weight=0.25)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruner = assl.Pruner(build(), x, ratio=0.5, steps=40, schedule=options)
    assert not _assl_warnings(record)
    assert pruner.schedule == options.sized(40, align=bool(pruner.aligned))
    assert pruner.total_steps == 40 and not pruner.schedule.guard_kept and pruner.schedule.align_weight == 0.25
    for _ in range(40):
        assert not pruner.done
        pruner.step()
    assert pruner.done


def test_steps_is_checked_before_the_model_changes():
    model, x = _edsr(), _x()
    before = snapshot(model)
    with pytest.raises(assl.ArgumentError, match="not both"):
        assl.Pruner(model, x, ratio=0.5, steps=100, schedule=assl.Schedule.for_steps(100))
    with pytest.raises(assl.ArgumentTypeError, match=r"schedule must be an assl\.Schedule"):
        assl.Pruner(model, x, ratio=0.5, steps=100, schedule={"guard_kept": False})
    with pytest.raises(assl.ArgumentError, match="n >= 10"):
        assl.Pruner(model, x, ratio=0.5, steps=5)
    assert_same(before, snapshot(model))


# --- 10. assl errors, naming the file, field or argument ------------------------------------------------


def _table() -> tuple[assl.LatencyTable, nn.Module, torch.Tensor]:
    from test_latency import synthetic_table

    model, x = _plain(), _x()
    table = synthetic_table(model, x, step=2, calibrate=True, fixed=1e-6, cost=lambda a, b, n: 1e-9 * n * a * b)
    table.probe = {"widths": [16.0, 17.0], "seconds": [1e-4, 1e-4]}
    table.inputs = [list(x.shape)]
    return table, model, x


def test_latency_table_files_that_are_not_tables_are_named(tmp_path):
    table, _, _ = _table()
    good = tmp_path / "table.pt"
    table.save(good)
    assert assl.LatencyTable.load(good) == table
    pickled = nn.Conv2d(1, 1, 1)
    files = {
        "empty.pt": b"",
        "truncated.pt": good.read_bytes()[:200],
        "text.pt": b"device: cpu\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save(pickled, tmp_path / "module.pt")
    torch.save({**table.to_dict(), "dense": -1.0}, tmp_path / "negative.pt")
    for name in [*files, "module.pt", "negative.pt"]:
        path = tmp_path / name
        with pytest.raises(assl.CheckpointError, match=rf"'{path}'") as info:
            assl.LatencyTable.load(path)
        assert isinstance(info.value, ValueError), name
    with pytest.raises(FileNotFoundError):
        assl.LatencyTable.load(tmp_path / "absent.pt")


def _tampered(data: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    layer = next(iter(data["layers"]))
    row = data["layers"][layer]

    def with_row(**changes: Any) -> dict[str, Any]:
        return {**data, "layers": {**data["layers"], layer: {**row, **changes}}}

    sig = [[list(r) for r in grid] for grid in data["signatures"]]
    negative = [[list(r) for r in grid] for grid in sig]
    negative[0][0][0] = -1e-3
    return {
        "negative time": ({**data, "signatures": negative}, r"signatures\[0\]\[0\]\[0\] is -0.001"),
        "nan time": ({**data, "dense": float("nan")}, r"dense is nan"),
        "call out of range": (with_row(calls=[len(sig)]), rf"layers\['{layer}'\]\['calls'\]"),
        "grid mismatch": (with_row(out=row["out"][:-1]), r"has \d+ x \d+ timings"),
        "unsorted grid": (
            with_row(**{"in": row["in"][::-1]}) if len(row["in"]) > 1 else with_row(out=row["out"][::-1]),
            r"increasing",
        ),
        "row not a dict": ({**data, "layers": {**data["layers"], layer: [1]}}, rf"layers\['{layer}'\] is \[1\]"),
        "row key missing": (with_row(weight=None) | {}, rf"layers\['{layer}'\]\['weight'\]"),
        "out_dim": (with_row(out_dim=3), r"\['out_dim'\] is 3"),
        "step": ({**data, "step": 0}, r"step is 0"),
        "device": ({**data, "device": 1}, r"device is 1"),
        "calibration": ({**data, "calibration": [{"removed": {"0": -2}, "seconds": 1e-3}]}, r"calibration\[0\]"),
        "probe": ({**data, "probe": {"widths": [1.0], "seconds": []}}, r"probe"),
        "inputs": ({**data, "inputs": [[2, "x"]]}, r"inputs"),
        "signatures": ({**data, "signatures": {}}, r"signatures is \{\}"),
    }


def test_latency_table_from_dict_checks_every_field():
    table, _, _ = _table()
    data = table.to_dict()
    assert assl.LatencyTable.from_dict(data) == table
    for what, (bad, match) in _tampered(data).items():
        with pytest.raises(assl.CheckpointError, match=match):
            assl.LatencyTable.from_dict(bad)
        assert data == table.to_dict(), what  # nothing of the input was changed


def test_a_bfloat16_model_with_a_latency_budget():
    table, model, x = _table()
    model = model.to(torch.bfloat16)
    pruner = assl.Pruner(model, x.bfloat16(), budget=assl.Budget(relative_latency=0.6, table=table), steps=10)
    assert pruner.latency is not None and any(pruner.removed.values())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


class _Softplus(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(w)


@pytest.mark.parametrize("name", ["resnet", "bn_residual"])
def test_a_parametrized_norm_is_refused_for_what_it_is(name):
    build, x = MODELS[name]
    model = build()
    bn = next(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    torch.nn.utils.parametrize.register_parametrization(model.get_submodule(bn), "weight", _Softplus())
    before = snapshot(model)
    with pytest.raises(assl.ArgumentError, match=rf"`{bn}` \(group .*weight by _Softplus\).*parametrized") as info:
        assl.Pruner(model, x, ratio=0.5, steps=40)
    assert "affine=True" not in str(info.value)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("limit", [0, -0.1, float("nan"), float("inf"), "0.5", True])
def test_for_steps_names_reg_limit(limit):
    with pytest.raises(assl.ArgumentError, match=r"reg_limit must be a finite number > 0") as info:
        assl.Schedule.for_steps(100, reg_limit=limit)
    assert "reg_step" not in str(info.value).split("sizes")[0]
