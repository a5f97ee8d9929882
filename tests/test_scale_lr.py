"""The floor on the penalized parameters' learning rate (``Schedule.min_scale_lr``).

The invariant: under Adam and AdamW the kept entries of the penalized parameters move as Adam at the
floor's learning rate would move them, and the chosen entries as the optimizer's own step does,
attached or by hand, with a closure, under GradScaler; nothing changes under SGD or where the
optimizer's rate is above the floor. Checked on models whose channels are carried by
inserted scales (EDSR, a plain conv net), by BatchNorm (a ResNet, a Linear-BatchNorm1d net) or
both (a residual net).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import pytest
import torch
from lightning_net import Net as BNResidual
from models import EDSR, ResNet, randomize_norms
from torch import nn

import assl
from assl.pruning._penalty import chosen_entries

STEPS = 12
LR = 1e-3


def _plain() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def _linear_bn() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


# norms at random values: freshly initialized ones tie every score, and the choice would hang on rounding
MODELS: dict[str, Callable[[], nn.Module]] = {
    "plain": _plain,
    "edsr": lambda: EDSR(n_resblocks=2, n_feats=8, scale=2),
    "resnet": lambda: randomize_norms(ResNet(layers=(1, 1), widths=(4, 8))),
    "linear_bn": lambda: randomize_norms(_linear_bn()),
    "bn_residual": lambda: randomize_norms(BNResidual()),
}
# eps: rounding noise on a gradient the loss does not see (a bias before a BatchNorm) would otherwise be
# normalized into full steps, and two runs equal up to rounding would part by the learning rate
OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=LR, eps=1e-4),
    "adamw": lambda params: torch.optim.AdamW(params, lr=LR, eps=1e-4, weight_decay=0.05),
    "sgd": lambda params: torch.optim.SGD(params, lr=LR, momentum=0.9),
}


def _x(name: str) -> torch.Tensor:
    size = 16 if name == "resnet" else 8
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))


def _run(name: str, floor: float | str | None, *, optimizer: str = "adam", by_hand: bool = False) -> dict:
    """Prune ``name`` for :data:`STEPS` steps; the model's state at the end."""
    torch.manual_seed(0)
    model = MODELS[name]()
    x = _x(name)
    pruner = assl.Pruner(model, x, ratio=0.5, steps=STEPS, schedule=assl.Schedule(min_scale_lr=floor))
    opt = OPTIMIZERS[optimizer](model.parameters())
    if not by_hand:
        pruner.attach(opt)
    gen = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        opt.zero_grad()
        batch = x + 0.1 * torch.randn(x.shape, generator=gen)
        (model(batch).float().square().mean() + pruner.alignment_loss()).backward()
        if by_hand:
            pruner.step()
        opt.step()
    assert pruner.done
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _adam_update(opt: torch.optim.Optimizer, p: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """What Adam or AdamW at its own rate moved ``p`` (``before`` the step) by, from its state after the step."""
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    state, (b1, b2) = opt.state[p], group["betas"]
    if "step" not in state:  # never had a gradient: Adam leaves it
        return torch.zeros_like(before)
    t = float(state["step"])
    m, v = state["exp_avg"] / (1 - b1**t), state["exp_avg_sq"] / (1 - b2**t)
    update = -group["lr"] * m / (v.sqrt() + group["eps"])
    if isinstance(opt, torch.optim.AdamW):
        update = update - group["lr"] * group["weight_decay"] * before
    return update


@pytest.mark.parametrize("closure", [False, True], ids=["step", "closure"])
@pytest.mark.parametrize("floor", [1e-2, "auto"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.parametrize("name", list(MODELS))
def test_kept_entries_take_the_floors_step_and_chosen_ones_the_optimizers(name, optimizer, floor, closure):
    """Every step of the schedule, checked against Adam's own update computed from its state."""
    torch.manual_seed(0)
    model, x = MODELS[name](), _x(name)
    pruner = assl.Pruner(model, x, ratio=0.5, steps=STEPS, schedule=assl.Schedule(min_scale_lr=floor))
    opt = OPTIMIZERS[optimizer](model.parameters())
    pruner.attach(opt)  # its hooks first: the test's see the penalty applied, then the update scaled
    factor = (min(1 / STEPS, 1e-2) if floor == "auto" else floor) / LR
    seen: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    checked = []

    def pre(o: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        chosen = chosen_entries(pruner._selection.all_layers())
        seen.update({id(p): (p.detach().clone(), chosen.get(id(p))) for p in pruner.penalized_parameters()})

    def post(o: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for p in pruner.penalized_parameters():
            before, chosen = seen.pop(id(p))
            plain = _adam_update(o, p, before)
            expected = plain * factor
            if chosen is not None:
                expected[chosen] = plain[chosen]
            # float32 rounding of p - before, times the factor
            torch.testing.assert_close(p.detach() - before, expected, rtol=1e-3, atol=1e-6 * max(factor, 1.0))
            checked.append(chosen is not None and chosen.numel() > 0)

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, enabled=not closure)
    gen = torch.Generator().manual_seed(2)
    k = 0
    while not pruner.done:
        batch = x + 0.1 * torch.randn(x.shape, generator=gen)

        def loss_fn(batch: torch.Tensor = batch, inf: bool = k == 3 and not closure) -> torch.Tensor:
            opt.zero_grad()
            loss = model(batch).float().square().mean() + pruner.alignment_loss()
            scaler.scale(loss * (float("inf") if inf else 1.0)).backward()  # GradScaler skips step 3
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            scaler.step(opt)
            scaler.update()
        k += 1
    assert len(checked) >= STEPS and any(checked)  # chosen entries were among those checked
    assert closure or scaler.get_scale() < 4.0  # a step was skipped: nothing of it was scaled later


@pytest.mark.parametrize("name", list(MODELS))
def test_by_hand_the_floor_acts_as_attached(name):
    attached = _run(name, 1e-2)
    assert all(torch.equal(v, attached[k]) for k, v in _run(name, 1e-2, by_hand=True).items())
    plain = _run(name, None)
    assert any(not torch.allclose(attached[k], plain[k], atol=1e-5) for k in plain)  # the check can fail


def test_auto_is_one_over_the_steps_of_the_schedule_the_model_runs_at_most_1e_2():
    torch.manual_seed(0)
    schedule = assl.Schedule.for_steps(300)
    unaligned = assl.Pruner(MODELS["plain"](), _x("plain"), ratio=0.5, schedule=schedule)
    assert unaligned.total_steps < 300 and not unaligned.aligned  # no align phase here
    assert unaligned._scale_lr.floor == 1 / unaligned.total_steps
    aligned = assl.Pruner(MODELS["edsr"](), _x("edsr"), ratio=0.5, schedule=schedule)
    assert aligned.aligned and aligned._scale_lr.floor == 1 / 300
    assert assl.Pruner(MODELS["edsr"](), _x("edsr"), ratio=0.5, steps=20)._scale_lr.floor == 1e-2
    assert all(torch.equal(v, b) for v, b in zip(_run("edsr", "auto").values(), _run("edsr", 1e-2).values()))


@pytest.mark.parametrize("name", list(MODELS))
def test_sgd_and_rates_above_the_floor_are_left_as_they_are(name):
    for by_hand in (False, True):
        plain = _run(name, None, optimizer="sgd", by_hand=by_hand)
        assert all(torch.equal(v, plain[k]) for k, v in _run(name, 1e-2, optimizer="sgd", by_hand=by_hand).items())
    above = _run(name, 1e-4)  # below the optimizer's 1e-3: nothing to raise
    assert all(torch.equal(v, above[k]) for k, v in _run(name, None).items())


@pytest.mark.parametrize(("optimizer", "recorded"), [("sgd", False), ("adam", True)])
def test_an_attached_optimizer_the_floor_never_scales_costs_the_step_nothing(optimizer, recorded):
    torch.manual_seed(0)
    model, x = MODELS["resnet"](), _x("resnet")
    pruner = assl.Pruner(model, x, ratio=0.5, steps=STEPS, schedule=assl.Schedule(min_scale_lr=1e-2))
    opt = OPTIMIZERS[optimizer](model.parameters())
    pruner.attach(opt)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(bool(pruner._scale_lr._before)))  # after the Pruner's
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert seen == [recorded] * 3
    pruner.detach()  # by hand again: whichever optimizer steps may be scaled, so the step records
    opt.zero_grad()
    model(x).square().mean().backward()
    pruner.step()
    assert pruner._scale_lr._before


def test_by_hand_an_update_that_never_comes_leaves_nothing_to_scale_later():
    torch.manual_seed(0)
    model, x = MODELS["resnet"](), _x("resnet")
    pruner = assl.Pruner(model, x, ratio=0.5, steps=STEPS, schedule=assl.Schedule(min_scale_lr=1e-2))
    opt = OPTIMIZERS["adam"](model.parameters())

    def backward() -> None:
        opt.zero_grad()
        (model(x).square().mean() + pruner.alignment_loss()).backward()

    for _ in range(3):
        backward()
        pruner.step()
        opt.step()
    backward()
    pruner.step()  # a step GradScaler skipped: the optimizer never stepped
    backward()
    pruner.step()
    chosen = chosen_entries(pruner._selection.all_layers())
    before = {id(p): p.detach().clone() for p in pruner.penalized_parameters()}
    opt.step()
    for p in pruner.penalized_parameters():
        plain = _adam_update(opt, p, before[id(p)])
        expected = plain * 10
        if id(p) in chosen:
            expected[chosen[id(p)]] = plain[chosen[id(p)]]
        torch.testing.assert_close(p.detach() - before[id(p)], expected, rtol=1e-3, atol=1e-5)


def test_two_optimizers_by_hand_each_scale_their_own_and_after_slimming_nothing_is_scaled():
    torch.manual_seed(0)
    model, x = MODELS["edsr"](), _x("edsr")
    pruner = assl.Pruner(model, x, ratio=0.5, steps=STEPS, schedule=assl.Schedule(min_scale_lr=1e-2))
    ids = {id(p) for p in pruner.penalized_parameters()}
    weights = torch.optim.SGD([p for p in model.parameters() if id(p) not in ids], lr=LR)
    scales = torch.optim.Adam(pruner.penalized_parameters(), lr=LR)
    other = nn.Linear(2, 2)
    unrelated = torch.optim.Adam(other.parameters(), lr=LR)  # a GAN's other network: never touched
    moves = []
    for _ in range(STEPS):
        for opt in (weights, scales, unrelated):
            opt.zero_grad()
        (model(x).square().mean() + pruner.alignment_loss() + other(torch.ones(2)).sum()).backward()
        pruner.step()
        before = [p.detach().clone() for p in other.parameters()]
        for opt in (unrelated, weights, scales):
            opt.step()
        moves.append(max(float((p - b).abs().max()) for p, b in zip(other.parameters(), before)))
    assert max(moves) <= LR * 1.01  # Adam's first steps move by about lr: the other net's at its own rate
    small = pruner.slim()
    assert isinstance(small, nn.Module)
    g = pruner.scale_parameters()[0]
    before_g = g.detach().clone()
    scales.zero_grad()
    g.grad = torch.ones_like(g)
    scales.step()  # the Pruner is done with: its floor no longer acts
    assert float((g - before_g).abs().max()) <= LR * 1.01


def test_the_floor_says_once_in_the_log_that_it_raises_the_rate(caplog):
    with caplog.at_level(logging.INFO, logger="assl"):
        _run("edsr", 1e-2)
    said = [r.getMessage() for r in caplog.records if "min_scale_lr" in r.getMessage()]
    assert said == [
        "Adam at lr 0.001: the scales learn at 0.01 while pruning (Schedule.min_scale_lr; None keeps "
        "the optimizer's rate)"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="assl"):
        _run("edsr", 1e-2, optimizer="sgd")
    assert not [r for r in caplog.records if "min_scale_lr" in r.getMessage()]
    torch.manual_seed(0)
    model, x = MODELS["plain"](), _x("plain")
    pruner = assl.Pruner(model, x, ratio=0.5, steps=STEPS, schedule=assl.Schedule(min_scale_lr=1e-2))
    opt = OPTIMIZERS["adam"](model.parameters())
    pruner.attach(opt)
    decay = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)  # a new rate every step
    with caplog.at_level(logging.INFO, logger="assl"):
        for _ in range(STEPS):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            decay.step()
    assert len([r for r in caplog.records if "min_scale_lr" in r.getMessage()]) == 1  # once, not every step


def test_the_schedule_checks_the_floor_and_the_paper_runs_without_one():
    assert assl.Schedule().min_scale_lr == "auto" and assl.Schedule.paper().min_scale_lr is None
    assert assl.Schedule(min_scale_lr=None).sized(100).min_scale_lr is None
    for bad in (0, -1e-3, float("nan"), float("inf"), "fast", True):
        with pytest.raises(ValueError, match="min_scale_lr must be 'auto', None or a finite number > 0"):
            assl.Schedule(min_scale_lr=bad)


def test_a_state_saved_before_the_floor_resumes_only_without_one():
    def pruner(schedule: assl.Schedule) -> assl.Pruner:
        torch.manual_seed(0)
        return assl.Pruner(MODELS["edsr"](), _x("edsr"), ratio=0.5, schedule=schedule)

    base = assl.Schedule.for_steps(STEPS)
    old = pruner(base).state_dict()
    del old["schedule"]["min_scale_lr"]  # what a Pruner saved before the field existed holds
    with pytest.raises(ValueError, match="'min_scale_lr': None"):
        pruner(base).load_state_dict(old)  # that run's scales learned at the optimizer's rate
    resumed = pruner(dataclasses.replace(base, min_scale_lr=None))
    resumed.load_state_dict(old)
    assert resumed.schedule.min_scale_lr is None
