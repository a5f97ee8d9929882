"""A run stopped in any phase and resumed ends bit-identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import pytest
import torch
from models import EDSR
from util import roundtrip, train_towards

import assl

SCHEDULE = assl.Schedule(align_iters=5, reg_interval=2, reg_step=0.1, reg_limit=0.2, stabilize_iters=4)
TOTAL = 5 + 3 * 2 + 4  # align + regularize (3 increments of 2 steps) + stabilize


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return EDSR(n_resblocks=2, n_feats=8, scale=2)


def _setup(seed: int):
    model = _model(seed)
    pruner = assl.Pruner(model, torch.randn(1, 3, 8, 8), ratio=0.5, skip=["*mean*", "*tail*"], schedule=SCHEDULE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    return model, pruner, opt


TEACHER = _model(123)


@pytest.fixture(scope="module")
def uninterrupted():
    model, pruner, opt = _setup(0)
    train_towards(TEACHER, model, pruner, opt, 0, TOTAL)
    assert pruner.done
    return model.state_dict(), pruner.chosen(), pruner.slim().state_dict()


@pytest.mark.parametrize(
    "stop", [3, 5, 8, 12, TOTAL - 1], ids=["align", "align_end", "regularize", "stabilize", "last"]
)
def test_resume_is_bit_identical(uninterrupted, stop):
    model, pruner, opt = _setup(0)
    train_towards(TEACHER, model, pruner, opt, 0, stop)
    expected_phase = pruner.phase
    saved = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()})

    model2, pruner2, opt2 = _setup(7)  # other weights: everything must come from the checkpoint
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    pruner2.load_state_dict(saved["pruner"])
    assert pruner2.phase == expected_phase and pruner2.step_count == stop
    train_towards(TEACHER, model2, pruner2, opt2, stop, TOTAL)

    state, chosen, slim_state = uninterrupted
    assert pruner2.chosen() == chosen
    for k, v in model2.state_dict().items():
        assert torch.equal(v, state[k]), k
    small = pruner2.slim().state_dict()
    assert small.keys() == slim_state.keys()
    for k in small:
        assert torch.equal(small[k], slim_state[k]), k


def test_state_from_another_configuration_is_refused():
    _, pruner, _ = _setup(0)
    other = assl.Pruner(_model(0), torch.randn(1, 3, 8, 8), ratio=0.25, skip=["*mean*", "*tail*"], schedule=SCHEDULE)
    with pytest.raises(ValueError, match="another removed"):
        pruner.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="not a Pruner state"):
        pruner.load_state_dict({"version": 99})


def test_pruned_model_saves_and_loads_into_a_fresh_dense_instance(uninterrupted, tmp_path):
    model, pruner, opt = _setup(0)
    train_towards(TEACHER, model, pruner, opt, 0, TOTAL)
    small = pruner.slim()
    assl.save(small, tmp_path / "small.pt")
    fresh = assl.load(_model(99), tmp_path / "small.pt")
    x = torch.randn(2, 3, 11, 9)
    with torch.no_grad():
        assert torch.equal(fresh(x), small(x))
    assert sum(p.numel() for p in fresh.parameters()) < sum(p.numel() for p in _model(0).parameters())


def test_a_state_saved_before_the_kept_guard_resumes_unguarded_where_the_guard_acts():
    import dataclasses

    from models import ResNet

    def bn_pruner(schedule: assl.Schedule) -> assl.Pruner:
        torch.manual_seed(0)
        return assl.Pruner(
            ResNet(layers=(1, 1), widths=(4, 8)), torch.randn(2, 3, 16, 16), ratio=0.5, schedule=schedule
        )

    old = bn_pruner(SCHEDULE).state_dict()
    del old["schedule"]["guard_kept"]  # what a Pruner saved before the field existed holds
    with pytest.raises(ValueError, match="'guard_kept': False"):
        bn_pruner(SCHEDULE).load_state_dict(old)  # that run's kept biases took the task's gradient as it was
    unguarded = bn_pruner(dataclasses.replace(SCHEDULE, guard_kept=False))
    unguarded.load_state_dict(old)
    assert not unguarded.schedule.guard_kept
    # EDSR has no normalization layers: the guard has nothing to act on, the default resumes it
    _, pruner, _ = _setup(0)
    state = pruner.state_dict()
    del state["schedule"]["guard_kept"]
    _, fresh, _ = _setup(0)
    fresh.load_state_dict(state)
    assert fresh.schedule.guard_kept and fresh.step_count == 0
