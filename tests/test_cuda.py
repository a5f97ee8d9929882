"""CUDA checks: they skip cleanly on machines without a GPU."""

from __future__ import annotations

import pytest
import torch
from models import CASES, EDSR
from util import call, flat, random_plan

import assl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _exact_float32():
    """cuDNN convolutions use TF32 by default (10-bit mantissa): compare in true float32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return tuple(_to(v, device) for v in x)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_slimmed_equals_masked_on_cuda(case):
    model = case.build().eval().cuda()
    x = _to(case.inputs(0), "cuda")
    extra = [_to(case.other_inputs(0), "cuda")] if case.other_inputs else []
    graph = assl.trace(model, x, extra_inputs=extra)
    plan = random_plan(graph, 0.5, seed=0)
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert all(p.is_cuda for p in model.parameters())
    with torch.no_grad():
        for a, b in zip(flat(call(masked, x)), flat(call(model, x))):
            assert float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) <= 1e-4


def _run(amp: bool, fused: bool) -> dict[str, list[int]]:
    torch.manual_seed(0)
    teacher = EDSR(n_resblocks=2, n_feats=16).cuda()
    model = EDSR(n_resblocks=2, n_feats=16).cuda()
    with torch.no_grad():  # make some units of every group clearly weaker, so the choice is well defined
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.out_channels == 16:
                m.weight[::3].mul_(0.3)
    sched = assl.Schedule(align_iters=10, reg_interval=2, reg_step=0.05, reg_limit=0.3, stabilize_iters=6)
    x0 = torch.zeros(1, 3, 16, 16, device="cuda")
    pruner = assl.Pruner(model, x0, ratio=0.25, skip=["*mean*", "*tail*"], schedule=sched)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    pruner.attach(opt)
    scaler = torch.amp.GradScaler("cuda", enabled=amp, init_scale=2.0**14)
    g = torch.Generator(device="cuda").manual_seed(1)
    while not pruner.done:
        x = torch.rand(4, 3, 16, 16, device="cuda", generator=g)
        with torch.no_grad():
            y = teacher(x)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        scaler.scale(loss + pruner.alignment_loss()).backward()
        scaler.step(opt)
        scaler.update()
    small = pruner.slim()
    assert all(p.is_cuda for p in small.parameters())
    return pruner.chosen()


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused_adam"])
def test_fp16_gradscaler_chooses_the_same_channels(fused):
    assert _run(amp=True, fused=fused) == _run(amp=False, fused=fused)


def test_pruner_verification_holds_with_default_tf32():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # the fixture restores them
    torch.manual_seed(0)
    model = EDSR(n_resblocks=4, n_feats=64).cuda()
    pruner = assl.Pruner(model, torch.rand(2, 3, 24, 24, device="cuda"), ratio=0.5, skip=["*mean*", "*tail*"])
    small = pruner.prune_now("l1")  # slim() checks against the masked model; TF32 would exceed 1e-4
    assert small.head[0].out_channels == 32


def test_teacher_follows_the_inputs_to_the_gpu():
    torch.manual_seed(0)
    model = EDSR(n_resblocks=2, n_feats=8, scale=2)
    teacher = assl.Teacher(model)  # built on the CPU
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    model.cuda()
    pruner = assl.Pruner(model, x.cuda(), ratio=0.5, skip=["*mean*", "*tail*"])
    out = model(x.cuda())
    loss = teacher.loss(out, x.cuda())
    loss.backward()
    assert all(p.is_cuda for p in teacher.module.parameters())
    assert torch.allclose(teacher(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-6)
    assert float(loss) < 1e-8  # nothing has changed the model yet: the student is the teacher
    assert pruner.step_count == 0
