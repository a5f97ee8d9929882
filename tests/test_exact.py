"""Exact or refused: never a silently wrong model, never a raw crash, never a changed model on error.

Each test names the trap: layers whose computation is not their class's (an overridden forward,
the user's hooks, legacy weight_norm/spectral_norm), a Pruner that fails half way, sizes written
in forward code, a saved state that does not fit, wrong arguments, a trace that changes buffers,
a shared zero, lifecycle misuse, skip lists that name layers without channels of their own.
"""

from __future__ import annotations

import copy
import pickle
import types
import warnings

import pytest
import torch
from models import CASES, EDSR, HookNet, LegacySpectralNormNet, LegacyWeightNormNet, ResNet, SpectralNormNet, WSConv2d
from torch import nn
from torch.nn.utils import parametrize
from util import assert_same, max_rel_err, random_plan, snapshot

import assl
from assl import _slim
from assl.pruning import _selection
from assl.tracing.channels import SizeInt

TINY = assl.Schedule(align_iters=0, reg_interval=2, reg_step=0.2, reg_limit=0.3, stabilize_iters=2)
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
BY_NAME = {c.name: c for c in CASES}


def _conv(i, o):
    return nn.Conv2d(i, o, 3, padding=1)


class _Res(nn.Module):
    """head -> residual block (a, b) -> tail; ``make`` builds ``a``."""

    def __init__(self, make=_conv):
        super().__init__()
        torch.manual_seed(0)
        self.head, self.a, self.b, self.tail = _conv(3, 8), make(8, 8), _conv(8, 8), _conv(8, 3)

    def forward(self, x):
        h = self.head(x)
        return self.tail(h + self.b(torch.relu(self.a(h))))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# --- 1. layers whose computation is not their class's ---------------------------------------


def test_overridden_forward_is_traced_through_and_the_standardized_inputs_stay():
    case = BY_NAME["ws_conv"]
    graph = assl.trace(case.build(), case.inputs(0))
    assert not graph.opaque_layers  # its forward is followed: F.conv2d of a standardized weight times a gain
    assert graph.group("ws").num_prunable == 8  # a filter standardized alone: the filters can go
    why = graph.group("stem").reasons[0]  # standardization mixes a filter's input channels: they stay
    assert graph.group("stem").num_prunable == 0 and "`ws.weight` (dim 1) is reduced over by `mean`" in why
    assert "models.py:" in why  # the line of the forward code
    assert graph.group("body.0").num_prunable == 16


def test_a_layer_whose_weight_goes_through_an_op_not_followed_is_refused_and_the_model_unchanged():
    class Rolled(nn.Conv2d):
        def forward(self, x):
            return nn.functional.conv2d(x, self.weight.roll(1, 0), self.bias, padding=1)

    model = _Res(lambda i, o: Rolled(i, o, 3, padding=1))
    before = snapshot(model)
    graph = assl.trace(model, X)
    assert "`a.weight` go(es) through `roll`" in graph.opaque_layers["a"]
    with pytest.raises(ValueError, match="nothing to prune"):
        assl.Pruner(model, X, ratio=0.5)
    assert_same(before, snapshot(model))


def test_the_issues_ws_conv_in_a_residual_block_prunes_its_filters_exactly():
    model = _Res(lambda i, o: WSConv2d(i, o, 3, padding=1)).eval()  # refused before: the WS conv was opaque
    graph = assl.trace(model, X)
    assert graph.group("a").num_prunable == 8 and graph.group("head").num_prunable == 0
    plan = {"a": [1, 4, 6]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert model.a.weight.shape == (5, 8, 3, 3) and model.a.gain.shape == (5, 1, 1, 1)
    assert model.a.out_channels == 5 and model.b.in_channels == 5
    for x in (X, torch.randn(1, 3, 11, 7)):
        assert max_rel_err(masked, model, x) < 1e-5


def test_weight_computed_by_an_unknown_pre_hook_is_opaque():
    model = _Res()
    w = model.a._parameters.pop("weight")
    model.a.raw = w
    model.a.register_forward_pre_hook(lambda m, args: setattr(m, "weight", m.raw * 2))
    model.a(torch.zeros(1, 8, 4, 4))
    graph = assl.trace(model, X)
    assert "computed outside the layer" in graph.opaque_layers["a"]


def test_forward_replaced_on_the_instance_is_traced_through():
    model = _Res().eval()
    double = lambda self, x: nn.functional.conv2d(x, self.weight * 2, self.bias, padding=1)  # noqa: E731
    model.a.forward = types.MethodType(double, model.a)  # bound: copies of the model call their own layer
    graph = assl.trace(model, X)
    assert not graph.opaque_layers and graph.group("a").num_prunable == 8
    masked = assl.masked_copy(model, graph, {"a": [0, 3]})
    assl.apply_plan(model, graph, {"a": [0, 3]})
    assert max_rel_err(masked, model, X) < 1e-5
    model = _Res()
    model.a.forward = lambda x: nn.functional.conv2d(x, model.a.weight.flip(0), model.a.bias, padding=1)
    graph = assl.trace(model, X)  # flip reorders the filters: not followed, the layer stays whole
    assert "flip" in graph.opaque_layers["a"] and graph.group("head").num_prunable == 0


def test_the_users_hooks_are_traced_through():
    model = _Res()
    model.a.register_forward_hook(lambda m, args, out: out + 1)  # slimmed != masked by 0.46 before
    graph = assl.trace(model, X)
    assert "not zero once removed" in graph.group("a").reasons[0]
    with pytest.raises(assl.PlanError, match="must stay"):
        assl.apply_plan(model, graph, {"a": [0, 1]})
    graph = assl.trace(HookNet().eval(), X)  # a pre-hook that scales, a hook that applies ReLU: prunable
    assert graph.group("stem").num_prunable == 8 and graph.group("b").num_prunable == 0


def test_a_global_forward_hook_is_refused():
    handle = nn.modules.module.register_module_forward_hook(lambda m, args, out: None)
    try:
        with pytest.raises(assl.TraceError, match="global forward hook"):
            assl.trace(_Res(), X)
    finally:
        handle.remove()


def test_legacy_weight_norm_is_cut_and_its_hook_keeps_working():
    model = LegacyWeightNormNet().eval()
    graph = assl.trace(model, X)
    plan = random_plan(graph, 0.5, seed=3)
    masked = assl.masked_copy(model, graph, plan)
    head = masked.head  # the masked reference really is masked: the rebuilt weight rows are zero
    assert torch.equal(head.weight[plan["head"]], torch.zeros_like(head.weight[plan["head"]]))
    assl.apply_plan(model, graph, plan)
    assert model.head.weight_g.shape[0] == model.head.weight_v.shape[0] == 8 - len(plan["head"])
    assert max_rel_err(masked, model, X) < 1e-5 and sum(p.numel() for p in model.parameters()) == graph.count_params(
        plan
    )
    torch.nn.utils.remove_weight_norm(model.head)  # still a proper legacy weight norm
    assert max_rel_err(masked, model, X) < 1e-5


@pytest.mark.parametrize("dim", [0, 1, None, -4, -3])
def test_legacy_weight_norm_over_any_dimension_is_exact(dim):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(
            _conv(3, 8), nn.ReLU(), torch.nn.utils.weight_norm(_conv(8, 8), dim=dim), nn.ReLU(), _conv(8, 3)
        ).eval()
    graph = assl.trace(model, X)
    plan = {"0": [1, 2, 5], "2": [0, 3, 4, 7]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    assert max_rel_err(masked, model, X) < 1e-5 and max_rel_err(masked, model, X[:, :, :5]) < 1e-5
    assert sum(p.numel() for p in model.parameters()) == graph.count_params(plan)
    assert model[2].weight_v.shape == (4, 5, 3, 3)


def test_pruner_on_legacy_weight_norm_and_spectral_norm_scales_what_the_hook_reads():
    for net, scaled in ((LegacyWeightNormNet, "weight_g"), (LegacySpectralNormNet, "weight_orig")):
        model = net().eval()  # in train mode spectral norm steps its power iteration at every call
        with torch.no_grad():
            before = model(X)
        pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
        layer = "head" if net is LegacyWeightNormNet else "up"
        assert parametrize.is_parametrized(model.get_submodule(layer), scaled)
        with torch.no_grad():
            torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-6)
        small = pruner.prune_now()
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_dense_weights_load_into_a_pruner_on_legacy_weight_norm():
    trained, model = LegacyWeightNormNet().eval(), LegacyWeightNormNet().eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5)
    pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    pruner.load_dense_state_dict(trained.state_dict())  # head.weight_g goes where the scale reads it
    with torch.no_grad():
        torch.testing.assert_close(model(X), trained(X), rtol=1e-5, atol=1e-5)


def test_spectral_norm_pins_the_channels_it_consumes():
    graph = assl.trace(LegacySpectralNormNet(), X)
    assert "has spectral_norm" in graph.group("body.0").reasons[0]
    assert graph.group("up").num_prunable == 8 and graph.group("mid").num_prunable == 8


def test_a_failed_pruner_on_legacy_weight_norm_used_to_leave_scales_now_it_works():
    model = _Res()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.b = torch.nn.utils.weight_norm(model.b)  # legacy weight norm on a later layer
    dense = sum(p.numel() for p in model.parameters())
    small = assl.Pruner(model, X, ratio=0.5, schedule=TINY).prune_now()  # checked against the masked model
    assert sum(p.numel() for p in small.parameters()) < dense
    with torch.no_grad():
        assert small(X).shape == model(X).shape


# --- 2. a failed Pruner leaves the model as it was ------------------------------------------


def test_failure_while_inserting_scales_rolls_back_and_a_retry_works(monkeypatch):
    model = EDSR(n_resblocks=2, n_feats=8)
    before = snapshot(model)
    real, calls = _selection.insert_scale, []

    def failing(module):
        calls.append(module)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(module)

    monkeypatch.setattr(_selection, "insert_scale", failing)
    with pytest.raises(assl.ASSLError, match=r"inserting the scales failed.*boom"):
        assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    assert_same(before, snapshot(model))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    monkeypatch.setattr(_selection, "insert_scale", real)
    assl.Pruner(model, X, ratio=0.5, schedule=TINY)  # the retry is not refused


def test_rollback_keeps_the_users_own_parametrization(monkeypatch):
    case = BY_NAME["weight_norm"]
    model = case.build()

    def failing(module):
        raise RuntimeError("boom")

    monkeypatch.setattr(_selection, "insert_scale", failing)
    before = snapshot(model)
    with pytest.raises(assl.ASSLError):
        assl.Pruner(model, case.inputs(0), ratio=0.5, schedule=TINY)
    assert_same(before, snapshot(model))
    assert parametrize.is_parametrized(model.head, "weight")


# --- 3. sizes written in forward code; errors while slimming --------------------------------


class _Flat(nn.Module):
    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.how, self.c, self.fc = how, _conv(3, 8), nn.Linear(8 * 144, 4)

    def forward(self, x):
        h = torch.relu(self.c(x))
        b, c, hh, ww = h.shape
        sizes = {
            "constant": (h.size(0), 8 * 144),
            "minus_one": (h.size(0), -1),
            "from_shape": (b, c * hh * ww),
            "numel": (b, h.numel() // b),
        }[self.how]
        return self.fc(h.reshape(*sizes))


def test_reshape_to_a_constant_size_pins_and_sizes_from_the_tensor_follow():
    x = torch.randn(2, 3, 12, 12)
    graph = assl.trace(_Flat("constant"), x)
    assert (
        graph.group("c").num_prunable == 0 and "size written in the forward code (1152)" in graph.group("c").reasons[0]
    )
    with pytest.raises(ValueError, match="nothing to prune"):
        assl.Pruner(_Flat("constant"), x, ratio=0.5)  # raised RuntimeError: shape '[2, 1152]' is invalid
    for how in ("minus_one", "from_shape", "numel"):
        model = _Flat(how).eval()
        graph = assl.trace(model, x)
        assert graph.group("c").num_prunable == 8, how
        masked = assl.masked_copy(model, graph, {"c": [1, 4, 6]})
        assl.apply_plan(model, graph, {"c": [1, 4, 6]})
        assert model.fc.in_features == 5 * 144 and max_rel_err(masked, model, x) < 1e-5


def test_size_read_from_another_tensor_ties_the_two():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = _conv(3, 8), _conv(3, 8), _conv(8, 3)

        def forward(self, x):
            p, q = torch.relu(self.a(x)), torch.relu(self.b(x))
            return self.c(p.view(p.size(0), q.size(1), -1).view_as(q))

    graph = assl.trace(Net(), X)
    assert graph.group("a") is graph.group("b")


def test_size_ints_copy_and_pickle_as_plain_ints():
    n = SizeInt(8, ()) * 3 + 1
    assert isinstance(n, SizeInt) and n == 25
    assert type(copy.deepcopy(n)) is int and type(pickle.loads(pickle.dumps(n))) is int


def test_an_error_while_slimming_names_the_layer_and_leaves_the_model(monkeypatch):
    model = EDSR(n_resblocks=2, n_feats=8)
    graph = assl.trace(model, X)
    before = snapshot(model)
    real = _slim.resize

    def failing(m):
        if m is model.body[1].body[0]:
            raise RuntimeError("boom")
        real(m)

    monkeypatch.setattr(_slim, "resize", failing)
    with pytest.raises(assl.ASSLError, match=r"slimming `body\.1\.body\.0` failed \(RuntimeError: boom\)"):
        assl.apply_plan(model, graph, random_plan(graph, 0.5, seed=0))
    assert_same(before, snapshot(model))


def test_a_slimmed_model_that_fails_names_the_layer():
    class Strict(nn.Module):  # forward code that wants 8 channels, through a count the tracer cannot see:
        def forward(self, x):  # range() reads the size through __index__, a plain int comes out
            if len(range(x.shape[1])) != 8:
                raise RuntimeError(f"expected 8 channels, got {x.shape[1]}")
            return x

    model = nn.Sequential(_conv(3, 8), nn.ReLU(), Strict(), _conv(8, 3))
    pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    before = snapshot(model)
    with pytest.raises(assl.ASSLError, match=r"fails in `2` on the example inputs \(RuntimeError: expected 8"):
        pruner.prune_now()
    assert_same(before, snapshot(model))
    assert pruner.step_count == 0 and not pruner.done  # the failed attempt left the Pruner as it was


# --- 5. Pruner.load_state_dict checks everything first --------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s["chosen"].update({"head.0": [0, 0, 0, 0]}), r"\['head\.0'\].*twice"),
        (lambda s: s["chosen"].update({"head.0": [99]}), r"\['head\.0'\].*channel 99"),
        (lambda s: s["chosen"].update({"nope": [1]}), r"\['nope'\].*not a group that loses channels"),
        (lambda s: s["chosen"].update({"head.0": [1, 2, 3, 4, 5]}), r"lists 5 units, but the group loses 4"),
        (lambda s: s["chosen"].update({"head.0": ["1"]}), r"\['head\.0'\] must hold ints"),
        (lambda s: s["chosen"].update({"add_mean": [0]}), r"\['add_mean'\].*not a group that loses"),
        (lambda s: s.pop("step"), r"'step' missing"),
        (lambda s: s.update(step=-1), r"state\['step'\] must be an int"),
        (lambda s: s.update(step="7"), r"state\['step'\] must be an int"),
        (lambda s: s.update(slimmed=1), r"state\['slimmed'\] must be a bool"),
        (lambda s: s.update(chosen=[1]), r"state\['chosen'\] must be a dict"),
    ],
    ids=["twice", "range", "group", "too_many", "type", "pinned_group", "missing", "negative", "str", "bool", "list"],
)
def test_load_state_dict_validates_first_and_changes_nothing(change, match):
    pruner = assl.Pruner(EDSR(n_resblocks=2, n_feats=8), X, ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    good = pruner.state_dict()
    bad = copy.deepcopy({**good, "step": 5})
    change(bad)
    with pytest.raises(ValueError, match=match):
        pruner.load_state_dict(bad)
    assert pruner.state_dict() == good
    pruner.load_state_dict({**good, "step": 3})
    assert pruner.step_count == 3


# --- 6. wrong arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda m: dict(model=m, ratio=0.5, groups=[[]]), ValueError, r"groups\[0\] is empty"),
        (lambda m: dict(model=m, ratio=0.5, groups=[","]), ValueError, r"groups\[0\] is empty"),
        (lambda m: dict(model=m, ratio=0.5, groups=5), TypeError, "groups must be a list"),
        (lambda m: dict(model=m, ratio=0.5, skip=None), TypeError, r"skip must be a glob.*\(use \(\) for none\)"),
        (lambda m: dict(model=m, ratio=0.5, skip=[3]), TypeError, "skip patterns must be strings"),
        (lambda m: dict(model=lambda x: x, ratio=0.5), TypeError, "model must be an nn.Module, got function"),
        (lambda m: dict(model=m, ratio=0.5, example_inputs=X.to("meta")), ValueError, "example_inputs.*meta"),
        (lambda m: dict(model=m, ratio=0.5, extra_inputs=X), TypeError, "extra_inputs must be a list of input sets"),
        (lambda m: dict(model=m, ratio=0.5, extra_inputs=[X, 3.0]), TypeError, r"extra_inputs\[1\]: example"),
        (
            lambda m: dict(model=m, ratio=0.5, extra_inputs=[X.to("meta")]),
            ValueError,
            r"extra_inputs\[0\] holds a tensor on the meta",
        ),
    ],
    ids=[
        "empty",
        "comma",
        "groups_int",
        "skip_none",
        "skip_int",
        "callable",
        "meta_x",
        "extra_tensor",
        "extra",
        "meta2",
    ],
)
def test_wrong_arguments_name_the_argument(make, error, match):
    model = _Res()
    before = snapshot(model)
    kwargs = {"example_inputs": X, "schedule": TINY, **make(model)}
    with pytest.raises(error, match=match):
        assl.Pruner(kwargs.pop("model"), kwargs.pop("example_inputs"), **kwargs)
    assert_same(before, snapshot(model))


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = _Res()
    with pytest.raises(ValueError, match=r"`head\.weight` of the model is on the meta device"):
        assl.trace(model, X)


# --- 7. trace() leaves every parameter and buffer as it found them --------------------------


@pytest.mark.parametrize("net", [ResNet, SpectralNormNet, LegacySpectralNormNet, LegacyWeightNormNet, EDSR])
def test_trace_in_train_mode_changes_no_tensor(net):
    torch.manual_seed(0)
    model = net().train()
    with torch.no_grad():
        model(X)  # running statistics and power-iteration vectors away from their initial values
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}
    ids = {k: id(v) for k, v in model.state_dict(keep_vars=True).items()}
    assl.trace(model, X, extra_inputs=[X * 2])
    after = model.state_dict(keep_vars=True)
    _same_state(before, after)
    assert ids == {k: id(v) for k, v in after.items()}
    assl.Pruner(model, X, ratio=0.5, schedule=TINY)  # the Pruner's trace too: only the scales are new
    after = model.state_dict()
    for key, value in before.items():
        module, _, name = key.rpartition(".")
        scaled = f"{module}.parametrizations.{name}.original"
        assert torch.equal(after[key if key in after else scaled], value), key


# --- 8. alignment_loss() is a new tensor every call -----------------------------------------


def test_alignment_loss_is_never_a_shared_tensor():
    model = EDSR(n_resblocks=2, n_feats=8)
    pruner = assl.Pruner(model, X, ratio=0.5, skip=["*mean*", "*tail*"], schedule=TINY)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(3):
        t = pruner.alignment_loss()
        t += 1.0  # used to change the next call's zero, whose backward then failed
        loss = model(X).abs().mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        pruner.step()
        opt.step()
    assert pruner.alignment_loss().item() == 0.0


# --- 9. lifecycle misuse --------------------------------------------------------------------


def test_after_slim_prune_now_and_attach_change_nothing():
    model = EDSR(n_resblocks=2, n_feats=8)
    pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    pruner.slim()
    with pytest.raises(assl.ASSLError, match="already called"):
        pruner.prune_now()
    assert pruner.step_count == 0
    with pytest.raises(assl.ASSLError, match="already slimmed"):
        pruner.attach(opt)
    assert not opt._optimizer_step_pre_hooks


def test_attach_and_step_by_hand_is_refused_instead_of_counting_twice():
    model = EDSR(n_resblocks=2, n_feats=8)
    pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    pruner.attach(opt)
    model(X).mean().backward()
    with pytest.raises(assl.ASSLError, match=r"attached to an optimizer.*count twice.*detach"):
        pruner.step()
    opt.step()
    assert pruner.step_count == 1
    pruner.detach()
    pruner.step()
    assert pruner.step_count == 2


def test_an_optimizer_that_never_updates_the_scales_is_noticed():
    model = EDSR(n_resblocks=2, n_feats=8)
    early = torch.optim.SGD(model.parameters(), lr=1e-3)  # built before the Pruner: no scales in it
    pruner = assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    with pytest.raises(assl.ASSLError, match=r"updates the model but not the scales.*Build the optimizer after"):
        while not pruner.done:
            early.zero_grad()
            model(X).mean().backward()
            pruner.step()
            early.step()
    assert pruner.step_count == 1 and not pruner.done  # at the step after the optimizer's first


# --- 10. skip patterns that name layers without channels of their own -----------------------


class _Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1)
        self.dw, self.bn = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(14, 8, 1))
        self.ws = WSConv2d(8, 4, 1)

    def forward(self, x):
        h = self.bn(self.dw(torch.relu(self.a(x))))
        return self.ws(self.block(torch.cat([torch.relu(h), torch.relu(self.b(x))], 1)))


def test_skip_naming_a_layer_that_carries_channels_keeps_them():
    for skip in (["dw"], ["bn"]):
        pruner = assl.Pruner(_Depthwise(), X, ratio=0.5, skip=skip, schedule=TINY)
        assert pruner.removed["a"] == 0 and pruner.removed["b"] == 3, skip


def test_skip_naming_a_layer_that_changes_nothing_warns():
    with pytest.warns(assl.ASSLWarning) as caught:
        pruner = assl.Pruner(_Depthwise(), X, ratio=0.5, skip=["ws", "block"], schedule=TINY)
    assert pruner.removed["a"] == 4
    assert {w.filename for w in caught} == {__file__}  # attributed to the line that created the Pruner
    text = "\n".join(str(w.message) for w in caught)
    assert "skip pattern 'ws' changes nothing: the channels of `ws` stay anyway: reaches the model's output" in text
    assert "skip pattern 'block' changes nothing: `block` has no channels of its own" in text
    assert "use 'block.*'" in text


def test_skip_pattern_that_matches_no_module_lists_close_names():
    with pytest.raises(assl.PatternError) as info:
        assl.Pruner(EDSR(n_resblocks=2, n_feats=8), X, ratio=0.5, skip=["*tial*"], schedule=TINY)
    message = str(info.value)
    assert "skip pattern '*tial*' matches no module" in message and "Close names: tail" in message
    assert message.count("*tial*") == 1  # never offered as an example of a good pattern
