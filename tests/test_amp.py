"""Mixed precision: bfloat16 autocast and GradScaler choose the same channels, with the right penalty (CPU).

GradScaler hands an ordinary optimizer unscaled gradients, but a fused one (``fused=True``,
``_step_supports_amp_scaling``) still-scaled gradients with ``optimizer.grad_scale`` and
``optimizer.found_inf`` set during ``step``: the Pruner's attach hook must scale its penalty by
``grad_scale`` and must not count a step GradScaler skips.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch
from models import EDSR
from torch import nn

import assl

SKIP = ["*mean*", "*tail*"]
STREAM = ["head.0", "body.0.body.2", "body.1.body.2", "body.2"]  # EDSR's residual stream: one aligned group
WEAK = [1, 3, 4, 6]  # units of the residual stream that start at half strength
SCALE = 2.0**12  # large, so that a penalty missing the loss scale would show
# align 8 + regularize 7 increments * 2 + stabilize 6 = 28 steps
ALIGN = assl.Schedule(align_iters=8, reg_interval=2, reg_step=0.05, reg_limit=0.3, stabilize_iters=6)
# no align phase: the first step already applies a large penalty, in the gradient form that the
# loss scale of mixed precision multiplies
REG = assl.Schedule(
    align_iters=0, reg_interval=2, reg_step=0.5, reg_limit=1.0, stabilize_iters=2, penalty_form="gradient"
)


def _edsr(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return EDSR(n_resblocks=2, n_feats=8, scale=2)


def _x(seed: int = 0, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _scores(pruner: assl.Pruner) -> dict[str, torch.Tensor]:
    """``|g|`` per unit, one row per layer of each pruned group."""
    with torch.no_grad():
        return {n: pruner.unit_scales(n) for n in pruner._selection.layers}


# --- a toy run in fp32 and in bfloat16 with GradScaler ---------------------------------------


class Run(NamedTuple):
    chosen: dict[str, list[int]]
    start: dict[str, torch.Tensor]
    end: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]


def _toy_run(amp: bool, fused: bool = False) -> Run:
    teacher = _edsr(100)
    model = _edsr(0)
    with torch.no_grad():  # clear scores: the aligned group's choice must not hang on rounding
        for name in STREAM:
            for i in WEAK:
                model.get_submodule(name).weight[i].mul_(0.5)
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=SKIP, schedule=ALIGN)
    assert pruner.aligned == ["head.0"]
    start = _scores(pruner)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2, fused=fused)
    pruner.attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, enabled=amp)
    gen = torch.Generator().manual_seed(1)
    while not pruner.done:
        x = torch.randn(4, 3, 8, 8, generator=gen)
        with torch.no_grad():
            y = teacher(x)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            assert out.dtype == (torch.bfloat16 if amp else torch.float32)
            loss = (out.float() - y).abs().mean() + pruner.alignment_loss()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert pruner.step_count == ALIGN.bounds(True)[2] == 28
    if amp:
        assert scaler.get_scale() == SCALE  # no step was skipped for inf/NaN
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    end = _scores(pruner)
    small = pruner.slim()
    return Run(pruner.chosen(), start, end, state, {k: tuple(v.shape) for k, v in small.state_dict().items()})


@pytest.fixture(scope="module")
def fp32_run() -> Run:
    return _toy_run(amp=False)


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused_adam"])
def test_bfloat16_autocast_with_grad_scaler_chooses_the_same_channels(fp32_run, fused):
    ref, amp = fp32_run, _toy_run(amp=True, fused=fused)
    assert ref.chosen["head.0"] == WEAK
    assert amp.chosen == ref.chosen
    assert amp.shapes == ref.shapes
    assert amp.shapes["head.0.weight"] == (4, 3, 3, 3) and amp.shapes["body.0.body.0.weight"] == (4, 4, 3, 3)
    # bfloat16 did change the numbers: the equality above is not that of two identical runs
    assert max(float((ref.state[k] - amp.state[k]).abs().max()) for k in ref.state) > 1e-3
    for name, units in ref.chosen.items():
        # the penalty shrank the chosen scales alike: one off by the loss scale would not
        before = ref.start[name][:, units].mean()
        after_fp32, after_amp = ref.end[name][:, units].mean(), amp.end[name][:, units].mean()
        assert after_fp32 < 0.9 * before, name
        assert abs(after_fp32 - after_amp) < 0.05 * before, name


# --- fused optimizers: still-scaled gradients ----------------------------------------------


def _reg_setup(fused: bool, scaled: bool) -> tuple[nn.Module, assl.Pruner, torch.optim.Optimizer, Any]:
    model = _edsr(0)
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=SKIP, schedule=REG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, enabled=scaled)
    return model, pruner, opt, scaler


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + i)
    return torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)


def _backward(model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, i: int) -> None:
    x, y = _batch(i)
    opt.zero_grad()
    scaler.scale((model(x) - y).abs().mean()).backward()


def _record_update_grads(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """After the Pruner's hook: the gradients the update uses, unscaled, and the ``grad_scale`` seen."""
    seen: dict[str, Any] = {}

    def hook(o: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        s = getattr(o, "grad_scale", None)
        seen["grad_scale"] = None if s is None else float(s)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        seen["grads"] = {n: (g if s is None else g / s).clone() for n, g in grads.items()}

    opt.register_step_pre_hook(hook)
    return seen


def test_fused_adam_with_grad_scaler_updates_like_adam():
    runs = {}
    for key, fused, scaled in [("fp32", False, False), ("adam", False, True), ("fused", True, True)]:
        model, pruner, opt, scaler = _reg_setup(fused, scaled)
        pruner.attach(opt)
        runs[key] = model, pruner, opt, scaler, _record_update_grads(model, opt)
    # what a Pruner ignoring grad_scale would do: its penalty is 1/SCALE of what it should be
    model, pruner, opt, scaler = _reg_setup(fused=True, scaled=True)
    opt.register_step_pre_hook(lambda o, args, kwargs: pruner.step())
    runs["unscaled_penalty"] = model, pruner, opt, scaler, _record_update_grads(model, opt)

    for i in range(2):
        for model, pruner, opt, scaler, _ in runs.values():
            assert pruner.phase == "regularize" and pruner.penalty == 0.5
            _backward(model, opt, scaler, i)
            scaler.step(opt)
            scaler.update()
            assert pruner.step_count == i + 1
        ref_model, ref_pruner, *_, ref_seen = runs["fp32"]
        assert ref_seen["grad_scale"] is None
        assert runs["adam"][-1]["grad_scale"] is None  # GradScaler unscaled before step
        assert runs["fused"][-1]["grad_scale"] == SCALE  # the fused step got scaled gradients
        for key in ["adam", "fused"]:
            model, pruner, *_, seen = runs[key]
            assert pruner.chosen() == ref_pruner.chosen()
            assert seen["grads"].keys() == ref_seen["grads"].keys()
            for n, g in ref_seen["grads"].items():
                torch.testing.assert_close(seen["grads"][n], g, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
            for (n, p), q in zip(ref_model.named_parameters(), model.parameters()):
                torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=lambda m, k=key, n=n: f"{k} {n}: {m}")
        # the comparison is sharp enough to see a penalty missing the scale factor
        bad = runs["unscaled_penalty"][0]
        assert max(float((p - q).detach().abs().max()) for p, q in zip(ref_model.parameters(), bad.parameters())) > 1e-3


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused_adam"])
def test_step_skipped_for_inf_gradients_is_not_counted(fused):
    model, pruner, opt, scaler = _reg_setup(fused, scaled=True)
    pruner.attach(opt)
    _backward(model, opt, scaler, 0)
    scaler.step(opt)
    scaler.update()
    assert pruner.step_count == 1
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = {n: opt.state[p]["step"].clone() for n, p in model.named_parameters() if p in opt.state}

    _backward(model, opt, scaler, 1)
    model.head[0].parametrizations.weight.original.grad[0, 0, 0, 0] = math.inf
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == SCALE / 2  # GradScaler did see the overflow and skip
    assert pruner.step_count == 1 and pruner.penalty == 0.5
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        if n in steps:
            assert torch.equal(opt.state[p]["step"], steps[n]), n
    for n, g in grads.items():
        # no penalty was added: the gradients are as GradScaler left them (unscaled unless fused)
        expected = g if fused else g / SCALE
        assert torch.equal(model.get_parameter(n).grad, expected), n
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")

    _backward(model, opt, scaler, 2)
    scaler.step(opt)
    scaler.update()
    assert pruner.step_count == 2
    assert any(not torch.equal(p, params[n]) for n, p in model.named_parameters())


# --- the manual form ----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [SCALE, torch.tensor(SCALE), 1000.0], ids=["float", "tensor", "not_a_power_of_two"])
def test_step_with_grad_scale_equals_step_on_unscaled_gradients(scale):
    sched = assl.Schedule(
        align_iters=2, reg_interval=1, reg_step=0.25, reg_limit=0.5, stabilize_iters=1, penalty_form="gradient"
    )
    plain, scaled = _edsr(0), _edsr(0)
    p_plain = assl.Pruner(plain, _x(), ratio=0.5, skip=SKIP, schedule=sched)
    p_scaled = assl.Pruner(scaled, _x(), ratio=0.5, skip=SKIP, schedule=sched)
    s = float(scale)
    exact = math.frexp(s)[0] == 0.5  # a power of two: scaling and unscaling are exact
    gen = torch.Generator().manual_seed(3)
    while not p_plain.done:
        grads = {}
        for (n, p), q in zip(plain.named_parameters(), scaled.parameters()):
            grads[n] = torch.randn(p.shape, generator=gen)
            p.grad = grads[n].clone()
            q.grad = grads[n] * s
        p_plain.step()
        p_scaled.step(grad_scale=scale)
        with torch.no_grad():  # the same update of both models' scales stands in for an optimizer
            for g in (*p_plain.scale_parameters(), *p_scaled.scale_parameters()):
                g.mul_(0.99)
        moved = False
        for (n, p), q in zip(plain.named_parameters(), scaled.parameters()):
            if exact:
                assert torch.equal(q.grad / s, p.grad), n
            else:
                torch.testing.assert_close(q.grad / s, p.grad, rtol=1e-6, atol=1e-7)
            moved |= not torch.equal(p.grad, grads[n])
        assert moved  # groups that are not aligned are penalized from step 0, the others after alignment
    assert p_scaled.done and p_scaled.step_count == p_plain.step_count == 2 + 3 + 1
    assert p_scaled.chosen() == p_plain.chosen()
