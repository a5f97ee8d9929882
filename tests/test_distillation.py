"""Distillation from the dense model: ``assl.Teacher`` and ``assl.distillation_loss``."""

from __future__ import annotations

import io
import math

import pytest
import torch
from models import EDSR
from torch import nn

import assl

SCHEDULE = assl.Schedule(align_iters=3, reg_interval=2, reg_step=0.1, reg_limit=0.2, stabilize_iters=2)
TOTAL = 3 + 3 * 2 + 2


def _dense(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return EDSR(n_resblocks=2, n_feats=8, scale=2)


def _batch(i: int) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))


def _prune(model: nn.Module) -> assl.Pruner:
    return assl.Pruner(model, torch.randn(1, 3, 8, 8), ratio=0.5, skip=["*mean*", "*tail*"], schedule=SCHEDULE)


@pytest.mark.filterwarnings("ignore:slimming changed the output")
def test_teacher_is_the_dense_function_through_pruning_and_slimming():
    model = _dense()
    x = _batch(100)
    with torch.no_grad():
        dense_out = model(x)
    teacher = assl.Teacher(model)
    assert torch.equal(teacher(x), dense_out)

    pruner = _prune(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    for i in range(TOTAL):
        loss = model(_batch(i)).abs().mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert pruner.done
    with torch.no_grad():
        assert not torch.allclose(model(x), dense_out)  # the student moved
    assert torch.equal(teacher(x), dense_out)
    small = pruner.slim()
    assert torch.equal(teacher(x), dense_out)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in teacher.module.parameters())


def test_teacher_is_in_eval_mode_with_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    for _ in range(3):  # running statistics away from their initial values
        model(torch.randn(4, 3, 6, 6))
    teacher = assl.Teacher(model)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    teacher.module.train()  # a stray train() on the copy is undone at the next call
    assert torch.equal(teacher(x), expected)
    assert not teacher.module.training
    assert torch.equal(teacher.module[1].running_mean, model[1].running_mean)  # the call updated no statistics


def test_teacher_shares_nothing_with_the_student():
    model = _dense()
    teacher = assl.Teacher(model)
    pruner = _prune(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.attach(opt)

    storage = {p.data_ptr() for p in model.parameters()}
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    for p in teacher.module.parameters():
        assert not p.requires_grad
        assert p.data_ptr() not in storage
        assert id(p) not in in_opt

    class Holder(nn.Module):  # a module that keeps the teacher beside its network
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.teacher = teacher

    holder = Holder()
    assert set(holder.state_dict()) == {f"net.{k}" for k in model.state_dict()}
    assert len(list(holder.parameters())) == len(list(model.parameters()))


def test_gradient_reaches_the_student_only():
    model = _dense()
    teacher = assl.Teacher(model)
    _prune(model)
    x = _batch(0)
    out = model(x)
    loss = teacher.loss(out + 0.1, x, weight=2.0)  # a nonzero distance
    loss.backward()
    assert all(p.grad is None for p in teacher.module.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0

    s = torch.tensor([1.0, 2.0], requires_grad=True)
    t = torch.tensor([0.0, 0.0], requires_grad=True)
    assl.distillation_loss(s, t * 1).backward()
    assert torch.equal(s.grad, torch.tensor([1.0, 2.0]))  # d/ds mean((s - t)^2) = (s - t)
    assert t.grad is None


def test_loss_kinds_on_hand_computed_values():
    s = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    t = torch.tensor([[0.0, 2.0], [4.0, 1.0]])
    assert assl.distillation_loss(s, t).item() == pytest.approx((1 + 0 + 1 + 16) / 4)
    assert assl.distillation_loss(s, t, kind="l1").item() == pytest.approx((1 + 0 + 1 + 4) / 4)

    def kl_row(srow: list[float], trow: list[float], temp: float) -> float:
        ps = [math.exp(v / temp) for v in srow]
        pt = [math.exp(v / temp) for v in trow]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        return sum(b * math.log(b / a) for a, b in zip(ps, pt))

    for temp in (1.0, 2.0):
        expected = temp**2 * (kl_row([1, 2], [0, 2], temp) + kl_row([3, 5], [4, 1], temp)) / 2
        got = assl.distillation_loss(s, t, kind="kl", temperature=temp).item()
        assert got == pytest.approx(expected, rel=1e-5)
    assert assl.distillation_loss(t, t, kind="kl").item() == pytest.approx(0.0, abs=1e-7)

    teacher = assl.Teacher(nn.Identity())
    assert teacher.loss(s, t, weight=3.0).item() == pytest.approx(3 * 4.5)


def test_structured_outputs():
    a, b = torch.ones(2, 3), torch.zeros(4)
    c, d = torch.zeros(2, 3), torch.full((4,), 2.0)
    got = assl.distillation_loss((a, {"x": b}), [c, {"x": d}])
    assert got.item() == pytest.approx(1.0 + 4.0)

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = self.conv(x)
            return {"mean": y.mean((2, 3)), "maps": (y, y.relu())}

    net = TwoHeads()
    teacher = assl.Teacher(net)
    x = torch.randn(2, 3, 5, 5)
    assert teacher.loss(net(x), x).item() == 0.0
    assert teacher.loss(net(x), {"x": x}).item() == 0.0  # keyword arguments


def test_errors_are_clear():
    model = _dense()
    _prune(model)
    with pytest.raises(assl.ArgumentError, match="before creating the Pruner"):
        assl.Teacher(model)
    with pytest.raises(assl.ArgumentTypeError, match=r"nn\.Module"):
        assl.Teacher(lambda x: x)  # type: ignore[arg-type]

    t = torch.zeros(2, 3)
    with pytest.raises(assl.ArgumentTypeError, match=r"tuples, lists and dicts of tensors.*output\[1\] is NoneType"):
        assl.distillation_loss((t, None), (t, None))
    with pytest.raises(assl.ArgumentTypeError, match=r"tuples, lists and dicts of tensors.* str"):
        assl.distillation_loss("out", "out")
    with pytest.raises(assl.ArgumentTypeError, match="floating-point"):
        assl.distillation_loss(t.long(), t.long())
    with pytest.raises(assl.ArgumentError, match="shape"):
        assl.distillation_loss(t, torch.zeros(3, 2))
    with pytest.raises(assl.ArgumentError, match="keys"):
        assl.distillation_loss({"a": t}, {"b": t})
    with pytest.raises(assl.ArgumentError, match="items"):
        assl.distillation_loss((t,), (t, t))
    with pytest.raises(assl.ArgumentError, match="one of"):
        assl.distillation_loss(t, t, kind="cosine")
    with pytest.raises(assl.ArgumentError, match="kind='kl' only"):
        assl.distillation_loss(t, t, temperature=2.0)
    with pytest.raises(assl.ArgumentError, match="positive"):
        assl.distillation_loss(t, t, kind="kl", temperature=0.0)
    with pytest.raises(assl.ArgumentError, match="no tensor"):
        assl.distillation_loss((), ())
    with pytest.raises(assl.ArgumentError, match="weight"):
        assl.Teacher(nn.Identity()).loss(t, t, weight=-1.0)


def test_teacher_follows_the_inputs_dtype():
    model = _dense()
    teacher = assl.Teacher(model)
    x = _batch(0).double()
    out = teacher(x)
    assert out.dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(out, model.double()(x))
    assert teacher.loss(model(x), x).dtype == torch.float64


def test_mixed_dtypes_and_autocast():
    got = assl.distillation_loss((torch.ones(2), torch.ones(2, dtype=torch.float64)), (torch.zeros(2), torch.zeros(2)))
    assert got.dtype == torch.float64 and got.item() == 2.0

    model = _dense()
    teacher = assl.Teacher(model)
    x = _batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = teacher.loss(out + 0.1, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad is None for p in teacher.module.parameters())
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:slimming changed the output")
def test_distillation_pulls_the_slimmed_network_towards_the_teacher():
    torch.set_num_threads(1)
    model = _dense()
    teacher = assl.Teacher(model)
    pruner = _prune(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    for i in range(TOTAL):
        x = _batch(i)
        loss = teacher.loss(model(x), x) + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    small = pruner.slim()
    held_out = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(999))

    def distance() -> float:
        with torch.no_grad():
            return float(assl.distillation_loss(small(held_out), teacher(held_out)))

    before = distance()
    opt = torch.optim.Adam(small.parameters(), lr=3e-3)
    for i in range(60):
        x = _batch(1000 + i)
        loss = teacher.loss(small(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = distance()
    assert before > 0
    print(f"distance to the teacher before fine-tuning {before:.4g}, after {after:.4g}")
    assert after < 0.5 * before, (before, after)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _setup(seed: int):
    model = _dense(seed)
    teacher = assl.Teacher(model)
    pruner = _prune(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(opt)
    return model, teacher, pruner, opt


def _train(model, teacher, pruner, opt, start: int, stop: int) -> None:
    for i in range(start, stop):
        x = _batch(i)
        out = model(x)
        loss = out.abs().mean() + teacher.loss(out, x, weight=0.5) + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_with_a_saved_teacher_is_bit_identical():
    model, teacher, pruner, opt = _setup(0)
    _train(model, teacher, pruner, opt, 0, TOTAL)
    expected = model.state_dict()

    model, teacher, pruner, opt = _setup(0)
    _train(model, teacher, pruner, opt, 0, 5)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()}
    saved = _roundtrip({**state, "teacher": teacher.state_dict()})
    model2, teacher2, pruner2, opt2 = _setup(7)  # other weights: everything comes from the checkpoint
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    pruner2.load_state_dict(saved["pruner"])
    teacher2.load_state_dict(saved["teacher"])
    _train(model2, teacher2, pruner2, opt2, 5, TOTAL)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k
