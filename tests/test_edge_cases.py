"""Edge cases where a careless tracer or Pruner gives a wrong model: each pinned or exact.

Each test names the trap: constant indices and sizes in forward code, values that stop being
zero (exp, hardtanh, 0/0), aliases changed in place, outputs in dataclasses, parameters used in
two roles, NaN weights, budgets over units of different cost, rounding with pinned units,
resuming in another process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from util import checkout_env

import assl

TINY = assl.Schedule(align_iters=6, reg_interval=2, reg_step=0.1, reg_limit=0.3, stabilize_iters=4)
X = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))


class _Fn(nn.Module):
    """A model whose forward is ``fn(self, x)``, with the given submodules and parameters."""

    def __init__(self, fn, **members):
        super().__init__()
        self.fn = fn
        for k, v in members.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(self, x)


def _conv(i, o, **kw):
    return nn.Conv2d(i, o, 3, padding=1, **kw)


def _all_but_one_plan(graph):
    plan = {}
    for g in graph.groups:
        p = np.flatnonzero(g.prunable)
        k = min(len(p), g.size - 1)
        if k > 0:
            plan[g.name] = p[:k].tolist()
    return plan


def _slim_vs_masked(model, x=X, plan=None):
    """(masked output, slimmed output), or None when the tracer pins every channel (safe too)."""
    torch.manual_seed(0)
    model.eval()
    graph = assl.trace(model, x)
    plan = _all_but_one_plan(graph) if plan is None else plan
    if not plan:
        return None
    masked = assl.masked_copy(model, graph, plan)
    small = assl.apply_plan(copy.deepcopy(model), graph, plan)
    with torch.no_grad():
        return masked(x), small(x)


def _assert_same_function(model, x=X, plan=None):
    outs = _slim_vs_masked(model, x, plan)
    if outs is None:
        return
    a, b = outs
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- tracer: slim() gives a model that does not compute what masked_copy computes -----------


def test_int_index_on_channels_shifts_after_removing_an_earlier_channel():
    # y[:, 2] pins channel 2 only. Removing channel 0 shifts it: the slimmed model's y[:, 2]
    # is the original channel 3. Expected: every channel before an int index (after, for a
    # negative one) stays. Without the rule: outputs differ.
    model = _Fn(lambda s, x: (lambda y: s.b(y) * y[:, 2].unsqueeze(1))(s.a(x)), a=_conv(3, 4), b=_conv(4, 2))
    graph = assl.trace(model, X)
    assert graph.group("a").num_prunable == 0
    with pytest.raises(assl.PlanError, match="constant index"):
        assl.apply_plan(model, graph, {"a": [0]})


def test_pow_with_scalar_base_pins_or_follows_its_exponent():
    # _unary reads args[0] only; torch.pow(2.0, y) has the tensor second, so the output gets no
    # labels and y's channels are never pinned. Required: slim == masked or pinned; naively the consumer
    # keeps all its input columns and the slimmed model crashes (4 channels expected, 1 given).
    model = _Fn(lambda s, x: s.b(torch.pow(2.0, s.a(x))), a=_conv(3, 4), b=_conv(4, 2))
    _assert_same_function(model)


def test_clamp_with_a_traced_tensor_bound_ties_or_pins_the_bound():
    # clamp(a, max=b): out[c] depends on b[c], but only a's labels are read; a and b stay in
    # separate groups and lose different channels. Required: slim == masked or pinned.
    model = _Fn(
        lambda s, x: s.o(torch.clamp(s.a(x).relu(), max=s.b(x).relu())), a=_conv(3, 4), b=_conv(3, 4), o=_conv(4, 2)
    )
    _assert_same_function(model)


def test_parameter_through_exp_is_not_zero_when_zeroed():
    # y + logb.exp(): the ref of logb follows exp, so the add records logb as a "zero" entry and
    # claims the channel is zero once removed. masked_copy zeroes logb -> exp(0) = 1, so the
    # removed channel is 1 where the next conv reads it. Required: slim == masked or pinned.
    model = _Fn(
        lambda s, x: s.b(s.a(x) + s.logb.exp().view(1, -1, 1, 1)),
        a=_conv(3, 4),
        b=_conv(4, 2),
        logb=nn.Parameter(torch.randn(4)),
    )
    _assert_same_function(model)


def test_hardtanh_with_positive_lower_bound_does_not_keep_zero():
    # Hardtanh(0.5, 2) maps a removed (zero) channel to 0.5; the tracer lists hardtanh as f(0)=0
    # whatever its bounds. Required: slim == masked or pinned.
    model = _Fn(lambda s, x: s.b(s.act(s.a(x))), a=_conv(3, 4), b=_conv(4, 2), act=nn.Hardtanh(0.5, 2.0))
    _assert_same_function(model)


def test_in_place_change_through_detach_alias_is_seen():
    # y.detach() shares y's memory but has no _base, so y.detach().add_(1) is not seen as a
    # change of y: y still counts as zero once removed. Required: slim == masked or pinned.
    def fwd(s, x):
        y = s.a(x)
        y.detach().add_(1.0)
        return s.b(y)

    _assert_same_function(_Fn(fwd, a=_conv(3, 4), b=_conv(4, 2)))


def test_division_by_a_removable_tensor_then_depthwise():
    # y / ||y|| over space: a removed channel is 0/0 = NaN in the masked model. The quotient is
    # flagged "not zero", but the depthwise conv after it claims zero (its rows are zeroed) and
    # NaN * 0 = NaN reaches the next conv. Expected: slim == masked (the denominator's removable
    # channels pinned). Without the rule: the masked model outputs NaN, the slimmed one does not.
    def fwd(s, x):
        y = s.a(x)
        y = y / y.norm(dim=(2, 3), keepdim=True)
        return s.b(s.dw(y))

    _assert_same_function(_Fn(fwd, a=_conv(3, 4), dw=_conv(4, 4, groups=4), b=_conv(4, 2)))


def test_parameter_used_as_divisor_then_as_bias():
    # p is first a divisor (entry role "slice": never zeroed), then an additive bias (the add
    # claims "zero once removed" because that call's role is "zero"). masked_copy keeps p, so the
    # removed channel of c1(x) + p is p, not 0. Required: slim == masked or pinned.
    def fwd(s, x):
        a = s.dw(s.c0(x) / s.p.view(1, -1, 1, 1))
        b = s.c1(x) + s.p.view(1, -1, 1, 1)
        return s.c2(a) + s.c3(b)

    model = _Fn(
        fwd,
        c0=_conv(3, 4),
        c1=_conv(3, 4),
        dw=_conv(4, 4, groups=4),
        c2=_conv(4, 2),
        c3=_conv(4, 2),
        p=nn.Parameter(torch.rand(4, generator=torch.Generator().manual_seed(1)) + 1),
    )
    _assert_same_function(model)


def test_full_width_narrow_with_constant_length():
    # narrow(1, 0, 4) over all 4 channels counts as a no-op, so nothing is pinned; the forward
    # code's constant 4 then exceeds the slimmed width. Docs: the narrowed tensor keeps all its
    # channels. Without the rule: RuntimeError "start (0) + length (4) exceeds dimension size (1)".
    _assert_same_function(_Fn(lambda s, x: s.b(s.a(x).narrow(1, 0, 4)), a=_conv(3, 4), b=_conv(4, 2)))


def test_split_with_one_constant_size():
    # torch.split(y, [4], 1) makes one piece, so the "more than one piece" pin is skipped.
    # Without the rule: RuntimeError "split_with_sizes expects split_sizes to sum exactly to 1".
    _assert_same_function(_Fn(lambda s, x: s.b(torch.split(s.a(x), [4], dim=1)[0]), a=_conv(3, 4), b=_conv(4, 2)))


@dataclasses.dataclass
class _Output:
    y: torch.Tensor


def test_output_inside_a_dataclass_keeps_its_channels():
    # Docs: channels that reach the model's outputs always stay, whatever the output structure.
    # _tensors only walks tuple/list/dict: a dataclass output is invisible and its producer is
    # fully prunable; slimming changes the output's shape. Expected: no prunable unit.
    model = _Fn(lambda s, x: _Output(s.a(x)), a=_conv(3, 4))
    graph = assl.trace(model, X)
    assert graph.group("a").num_prunable == 0


def test_division_by_a_constant_keeps_zero_like_multiplication():
    # For a divisor the zero flag means "divisor non-zero" (see `~v.zero`), but a scalar divisor
    # gives `t == 0 and not is_denominator` == False. So y / 2 pins every channel of y while
    # y * 0.5 pins none (docs: only dividing by a removed channel loses zero). Lost pruning, not
    # a wrong model.
    div = assl.trace(_Fn(lambda s, x: s.b(s.a(x) / 2), a=_conv(3, 4), b=_conv(4, 2)), X)
    assert div.group("a").num_prunable == 4


# --- Pruner -------------------------------------------------------------------------------


def test_pruner_error_on_nan_weights_leaves_model_untouched():
    # Docs: every check happens before the first change. _scale_scores raises ASSLError ("the
    # model is left as it is") after insert_scale already parametrized the layers.
    torch.manual_seed(0)
    model = _Fn(lambda s, x: s.b(s.a(x).relu()), a=_conv(3, 8), b=_conv(8, 3))
    with torch.no_grad():
        model.a.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(assl.ASSLError):
        assl.Pruner(model, X, ratio=0.5, schedule=TINY)
    assert not parametrize.is_parametrized(model.a)


class _Heterogeneous(nn.Module):
    """One group whose units cost differently: units 0..3 are rows of a 7x7 conv, 4..7 of a 1x1."""

    def __init__(self):
        super().__init__()
        self.big = nn.Conv2d(3, 4, 7, padding=3)
        self.small = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out((torch.cat([self.big(x), self.small(x)], 1) + self.c(x)).relu())


def test_parameter_budget_is_met_by_the_slimmed_model():
    # Budget docs: one ratio is solved "so that the slimmed model fits". The solver counts a plan
    # removing the FIRST units (the expensive 7x7 rows); the Pruner then removes the units with
    # the lowest scores (here the cheap 1x1 rows). Expected: <= budget. Without the rule: 634 > 267.
    torch.manual_seed(0)
    model = _Heterogeneous()
    with torch.no_grad():
        model.c.weight[:4] *= 100  # units 0..3 score high: the cheap units 4..7 are chosen
    budget = assl.trace(model, X).count_params() - 400
    pruner = assl.Pruner(model, X, budget=assl.Budget(params=budget), schedule=TINY)
    small = pruner.prune_now("l1")
    assert sum(p.numel() for p in small.parameters()) <= budget


def test_round_to_holds_when_some_units_are_pinned():
    # Group of 8 units, 4 pinned (tied to the model input). ratio 0.75, round_to 3: the rounded
    # removal (5) is capped to the 4 prunable units, keeping 4, not a multiple of 3. Expected:
    # remove 2 (keep 6). Docs: kept widths are rounded up to a multiple of round_to.
    def fwd(s, x):
        x4 = torch.cat([x, x[:, :1]], 1)
        return s.o((s.a(x) + torch.cat([s.b(x), x4], 1)).relu())

    torch.manual_seed(0)
    model = _Fn(fwd, a=_conv(3, 8), b=_conv(3, 4), o=_conv(8, 3))
    pruner = assl.Pruner(model, X, ratio=0.75, round_to=3, schedule=TINY)
    g = pruner.graph.group("a")
    assert g.num_prunable == 4
    assert (g.size - pruner.removed["a"]) % 3 == 0


_RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    import assl

    class Chain(nn.Module):
        def __init__(s):
            super().__init__()
            s.a1, s.a2 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            s.b1, s.b2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
            s.c1, s.c2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
            s.o = nn.Conv2d(8, 3, 1)
        def forward(s, x):
            y = s.a1(x) + s.a2(x)
            z = s.b1(y) + s.b2(y)
            return s.o(s.c1(z) + s.c2(z))

    torch.manual_seed(0)
    pruner = assl.Pruner(
        Chain(), torch.randn(1, 3, 4, 4), ratio=0.5, groups=[["a1", "a2"], ["b1", "b2"], ["c1", "c2"]],
        schedule=assl.Schedule(align_iters=4, reg_interval=1, reg_step=0.1, reg_limit=0.1, stabilize_iters=1),
    )
    if sys.argv[1] == "save":
        print(json.dumps(pruner.state_dict()))
    else:
        pruner.load_state_dict(json.loads(sys.stdin.read()))
    """
)


def test_resume_in_another_process_with_explicit_groups():
    # With groups=[...], `aligned` is built from a set of strings, so its order follows the
    # process's hash seed; load_state_dict compares the lists and refuses a state saved by an
    # identical Pruner in another process. (Seeds 0 and 1 give different orders on CPython.)
    def run(seed, mode, stdin=None):
        env = checkout_env(PYTHONHASHSEED=str(seed))
        return subprocess.run(
            [sys.executable, "-c", _RESUME_SCRIPT, mode], input=stdin, capture_output=True, text=True, env=env
        )

    saved = run(0, "save")
    assert saved.returncode == 0, saved.stderr
    state = json.loads(saved.stdout.strip().splitlines()[-1])
    loaded = run(1, "load", stdin=json.dumps(state))
    assert loaded.returncode == 0, loaded.stderr[-600:]


def test_weight_shared_by_two_convs_is_pinned():
    shared = _conv(4, 4)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = _conv(3, 4)
            self.b = shared
            self.c = _conv(4, 4)
            self.c.weight = shared.weight  # weight tying
            self.o = _conv(4, 2)

        def forward(self, x):
            y = self.a(x)
            return self.o(self.b(y).relu() + self.c(y).relu())

    graph = assl.trace(Tied(), X)
    assert graph.group("b").num_prunable == 0
    assert "shared by" in graph.group("b").reasons[0]


def test_transposed_conv_macs_count_input_positions():
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 2, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = assl.trace(model, torch.zeros(1, 3, 5, 5))
    expected = 5 * 5 * (3 * 4 * 2 * 2) + 10 * 10 * (2 * 4)  # each input pixel meets the whole kernel
    assert graph.count_macs() == expected
