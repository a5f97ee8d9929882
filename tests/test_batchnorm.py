"""ASSL on networks with normalization layers: the chosen channels reach zero where they are read.

A scale on a conv that feeds a BatchNorm is undone by the norm's statistics; the Pruner then
carries the channel in the norm's weight and bias. Each net below is trained for a schedule sized
by ``Schedule.for_steps`` with Adam at 1e-3 (the user's ordinary learning rate, no param group of
its own): at the end the chosen channels must be silent and slimming must change nothing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from models import ResNet
from torch import nn

import assl
from assl._slim import max_rel_err

STEPS = 120


class ConvBN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 12, 3, padding=1, bias=False),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 3, 3, padding=1),
        )


class LinearBN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 4))


class DeconvBN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.ConvTranspose2d(3, 12, 2, stride=2), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 3, 3, padding=1)
        )


class InstanceNormNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.InstanceNorm2d(12, affine=True),
            nn.ReLU(),
            nn.Conv2d(12, 3, 3, padding=1),
        )


class PreActBlock(nn.Module):
    """BatchNorm after the residual sum: a zero input channel comes out as the norm's beta."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.conv = nn.Conv2d(12, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.conv(torch.relu(h))
        return self.head(torch.relu(self.bn(h)))


def _resnet() -> nn.Module:
    return ResNet(layers=(1, 1), widths=(4, 8))


NETS = {
    "conv_bn_relu": (ConvBN, (4, 3, 8, 8)),
    "linear_batchnorm1d": (LinearBN, (16, 8)),
    "convtranspose_bn": (DeconvBN, (4, 3, 4, 4)),
    "affine_instancenorm": (InstanceNormNet, (4, 3, 8, 8)),
    "bn_after_residual_add": (PreActBlock, (4, 3, 8, 8)),
    "resnet_bottleneck_downsample": (_resnet, (4, 3, 16, 16)),
}


def _prune(factory, shape, *, eval_mode=False, optimizer=torch.optim.Adam, lr=1e-3, steps=STEPS, **kw):
    torch.manual_seed(0)
    model = factory()
    teacher = copy.deepcopy(model).eval()
    x = torch.randn(*shape)
    pruner = assl.Pruner(model, x, ratio=0.5, schedule=assl.Schedule.for_steps(steps), **kw)
    opt = optimizer(model.parameters(), lr=lr)
    pruner.attach(opt)
    gen = torch.Generator().manual_seed(1)
    model.train(not eval_mode)
    while not pruner.done:
        batch = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            target = teacher(batch)
        loss = (model(batch) - target).pow(2).mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, pruner, x


@pytest.mark.parametrize("name", list(NETS))
def test_chosen_channels_reach_zero_and_slimming_changes_nothing(name):
    factory, shape = NETS[name]
    model, pruner, x = _prune(factory, shape)
    alive = pruner.liveness()
    assert alive and max(alive.values()) < 1e-4, alive
    small = pruner.slim()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in factory().parameters())
    assert max_rel_err(model, small, x) < 1e-4
    assert max_rel_err(model, small, torch.randn(*shape)) < 1e-4


def test_normalized_producers_are_carried_by_the_norm_and_the_rest_by_a_scale():
    model, pruner, _ = _prune(_resnet, (2, 3, 16, 16), steps=10)
    kinds = {name: kind for g in pruner.chosen() for name, kind in pruner.carriers(g)}
    # conv -> BN: the BN carries the channel; the conv gets no weight-normalization scale
    assert kinds["bn1"] == "norm" and "conv1" not in kinds
    assert kinds["layer1.0.bn3"] == kinds["layer1.0.downsample.1"] == "norm"
    assert not pruner.scale_parameters()
    assert {id(p) for p in pruner.penalized_parameters()} >= {id(model.bn1.weight), id(model.bn1.bias)}


def test_batchnorm_in_eval_mode_frozen_statistics():
    factory, shape = NETS["resnet_bottleneck_downsample"]
    model, pruner, x = _prune(factory, shape, eval_mode=True)
    assert all(not m.training for m in model.modules())
    assert max(pruner.liveness().values()) < 1e-4
    assert max_rel_err(model, pruner.slim(), x) < 1e-4


@pytest.mark.parametrize(
    ("optimizer", "lr"),
    [(torch.optim.Adam, 1e-3), (torch.optim.AdamW, 1e-3), (torch.optim.SGD, 0.05)],
    ids=["adam", "adamw", "sgd"],
)
def test_the_default_penalty_works_at_the_users_learning_rate(optimizer, lr):
    model, pruner, x = _prune(ConvBN, (4, 3, 8, 8), optimizer=optimizer, lr=lr)
    assert max(pruner.liveness().values()) < 1e-4
    assert max_rel_err(model, pruner.slim(), x) < 1e-4


def test_the_gradient_form_under_adam_leaves_the_chosen_channels_alive():
    """The paper's penalty in a short schedule, at the paper's rate: Adam normalizes it away (why it is not
    the default)."""
    torch.manual_seed(0)
    model = ConvBN()
    x = torch.randn(4, 3, 8, 8)
    schedule = assl.Schedule.for_steps(STEPS, penalty_form="gradient", reg_limit=0.5, min_scale_lr=None)
    pruner = assl.Pruner(model, x, ratio=0.5, schedule=schedule)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.attach(opt)
    while not pruner.done:
        loss = model(torch.randn(4, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert min(pruner.liveness().values()) > 0.5


def test_a_norm_without_affine_parameters_is_refused_and_the_model_left_alone():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"`1` .*affine"):
        assl.Pruner(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # skipping the group is the way out; the other group is pruned as usual
    pruner = assl.Pruner(model, torch.randn(2, 3, 8, 8), ratio=0.5, skip=["0"])
    assert [g for g, k in pruner.removed.items() if k] == ["3"]


def test_liveness_sees_a_channel_the_norm_keeps_alive():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 3))
    pruner = assl.Pruner(model, torch.randn(4, 3, 8, 8), ratio=0.5, schedule=assl.Schedule.for_steps(20))
    assert min(pruner.liveness().values()) > 0.1  # nothing trained yet: chosen channels as loud as kept
    with torch.no_grad():
        chosen = pruner.chosen()["0"]
        model[1].weight[chosen] = 0
        model[1].bias[chosen] = 0
    assert max(pruner.liveness().values()) == 0.0


class ShapeThenNorm(nn.Module):
    """Reads the conv output's shape before its BatchNorm, and feeds another conv output raw."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        assert a.shape[1] == self.bn.num_features  # metadata only
        h = torch.relu(self.bn(a))
        b = self.b(h)
        side = b * 0.5  # b's raw output is read by something other than its norm
        return self.head(torch.cat([torch.relu(self.bn_b(b)), side], 1))


def test_which_producers_a_norm_alone_reads():
    graph = assl.trace(ShapeThenNorm(), torch.randn(2, 3, 8, 8))
    assert graph.normalized == {"a": ("bn",)}  # b is also read raw: it keeps a scale of its own
    pruner = assl.Pruner(ShapeThenNorm(), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert pruner.carriers("a") == [("bn", "norm")]
    assert pruner.carriers("b") == [("b", "g"), ("bn_b", "norm")]


def _kept_norm_entries(pruner: assl.Pruner, which: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each normalization carrier's kept ``"bias"`` or ``"weight"`` entries: (tensor, positions)."""
    found = []
    for carriers in pruner._selection.layers.values():
        for c in carriers:
            if c.kind == "norm" and c.bias is not None:
                idx = c.kept_bias_idx  # a norm carries a unit in the same entry of its weight and bias
                found.append((c.bias if which == "bias" else c.scale, idx))
    return [f for f in found if f[1].numel()]


def _fell(name: str, guard: bool, form: str = "shrink") -> tuple[int, int]:
    """Train net ``name`` at ratio 0.75 with plain SGD (a step is ``-lr * grad``); count the kept
    normalization biases that a step of the penalized phases lowered, and the kept weights whose
    magnitude it shrank."""
    factory, shape = NETS[name]
    torch.manual_seed(0)
    model = factory()
    teacher = copy.deepcopy(model).eval()
    schedule = assl.Schedule.for_steps(40, guard_kept=guard, penalty_form=form)
    pruner = assl.Pruner(model, torch.randn(*shape), ratio=0.75, schedule=schedule)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.attach(opt)
    gen = torch.Generator().manual_seed(1)
    biases = weights = 0
    while not pruner.done:
        batch = torch.randn(*shape, generator=gen)
        loss = (model(batch) - teacher(batch).detach()).pow(2).mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        penalized = pruner.phase != "align"
        before = {
            w: [(t, i, t.detach()[i].clone()) for t, i in _kept_norm_entries(pruner, w)] for w in ("bias", "weight")
        }
        opt.step()
        if penalized:
            biases += sum(int((t.detach()[i] < old).sum()) for t, i, old in before["bias"])
            weights += sum(int((t.detach()[i].abs() < old.abs()).sum()) for t, i, old in before["weight"])
    return biases, weights


@pytest.mark.parametrize("name", list(NETS))
def test_while_the_chosen_fade_no_kept_normalization_bias_is_lowered(name):
    # a normalization after the readers makes only the ratio of kept to chosen matter: the task
    # would push the kept channels down after the fading ones, below the activation's threshold
    lowered, shrunk = _fell(name, guard=True)
    assert lowered == 0
    assert shrunk > 0  # the weights are not guarded: the task still moves them both ways


def test_the_guard_acts_under_the_gradient_form_too():
    assert _fell("conv_bn_relu", guard=True, form="gradient")[0] == 0
    assert _fell("conv_bn_relu", guard=False, form="gradient")[0] > 0


def test_without_the_guard_the_task_lowers_kept_biases():
    assert _fell("resnet_bottleneck_downsample", guard=False)[0] > 0  # the guarded test above can fail


def test_the_guard_changes_nothing_where_no_normalization_carries_the_units():
    from models import EDSR

    def run(guard: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = EDSR(n_resblocks=2, n_feats=8, scale=2)
        schedule = assl.Schedule.for_steps(20, guard_kept=guard)
        pruner = assl.Pruner(model, torch.randn(1, 3, 8, 8), ratio=0.5, skip=["*mean*", "*tail*"], schedule=schedule)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pruner.attach(opt)
        gen = torch.Generator().manual_seed(1)
        while not pruner.done:
            x = torch.randn(2, 3, 8, 8, generator=gen)
            loss = model(x).pow(2).mean() + pruner.alignment_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return pruner.slim().state_dict()

    guarded, plain = run(True), run(False)
    assert guarded.keys() == plain.keys() and all(torch.equal(guarded[k], plain[k]) for k in guarded)
