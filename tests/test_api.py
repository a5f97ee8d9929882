"""The public API: one name per contract, ASSLError subclasses for bad input, exact globs,
dict-level persistence, and the old names still working for a release with a DeprecationWarning."""

from __future__ import annotations

import copy
import importlib
import io
import sys
import warnings

import pytest
import torch
from models import EDSR, ResNet
from torch import nn
from util import assert_same, random_plan, snapshot

import assl
from assl._patterns import fullmatch, match

X = torch.randn(1, 3, 8, 8)


def _edsr(seed: int = 0) -> EDSR:
    torch.manual_seed(seed)
    return EDSR(n_resblocks=2, n_feats=8)


# --- errors -------------------------------------------------------------------------------------

BAD_CALLS = [
    (lambda: assl.Pruner(_edsr(), X, ratio=2), assl.ArgumentError, ValueError),
    (lambda: assl.Pruner(_edsr(), X, ratio=-0.1), assl.ArgumentError, ValueError),
    (lambda: assl.Pruner(_edsr(), X), assl.ArgumentError, ValueError),
    (lambda: assl.Pruner(_edsr(), X, ratio=0.5, budget=assl.Budget(params=10)), assl.ArgumentError, ValueError),
    (lambda: assl.Pruner(_edsr(), X, budget=0.5), assl.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
    (lambda: assl.Pruner(_edsr(), X, ratio=0.5, skip=None), assl.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
    (lambda: assl.Pruner(_edsr(), X, ratio=0.5, round_to=0), assl.ArgumentError, ValueError),
    (lambda: assl.Pruner(_edsr(), X, ratio=0.5, skip=["nope*"]), assl.PatternError, ValueError),
    (lambda: assl.Pruner(nn.DataParallel(_edsr()), X, ratio=0.5), assl.ArgumentTypeError, TypeError),
    (lambda: assl.Schedule(reg_step=-1), assl.ArgumentError, ValueError),
    (lambda: assl.Schedule.for_steps(1), assl.ArgumentError, ValueError),
    (lambda: assl.Budget(macs=-5), assl.ArgumentError, ValueError),
    (lambda: assl.Budget(params=1, macs=1), assl.ArgumentError, ValueError),
    (lambda: assl.Budget(latency=1.0, verify="yes"), assl.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
    (lambda: assl.trace(lambda x: x, X), assl.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
    (lambda: assl.save("not a model", io.BytesIO()), assl.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
    (lambda: assl.load_slim_state_dict(_edsr(), {"state_dict": {}}), assl.CheckpointError, ValueError),
]


@pytest.mark.parametrize("call, kind, builtin", BAD_CALLS)
def test_bad_input_raises_an_assl_error_that_is_also_the_builtin(call, kind, builtin):
    with pytest.raises(kind) as info:
        call()
    assert isinstance(info.value, assl.ASSLError) and isinstance(info.value, builtin)
    assert len(str(info.value)) > 20  # says what is wrong


def test_a_bad_pruner_state_is_a_state_error_and_changes_nothing():
    pruner = assl.Pruner(_edsr(), X, ratio=0.5, skip=["*tail*"])
    before = pruner.state_dict()
    for bad in ({"version": 99}, "nope", {**before, "step": -1}, {**before, "chosen": {"zzz": [0]}}):
        with pytest.raises(assl.StateError):
            pruner.load_state_dict(bad)  # type: ignore[arg-type]
        assert pruner.state_dict() == before


def test_pattern_error_lives_in_errors():
    assert assl.PatternError is assl.errors.PatternError
    assert issubclass(assl.PatternError, assl.ASSLError) and issubclass(assl.PatternError, ValueError)


# --- globs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, pattern, hit",
    [
        ("blocks.a/b", "blocks.a", False),
        ("blocks.a", "blocks.a", True),
        ("blocks.a/b", "blocks.a/b", True),
        ("blocks.a/b", "blocks.a*", True),
        ("blocks.a/b.conv", "*/b.conv", True),
        ("x/y", "y", False),
        ("x/y", "x", False),
        ("a\\b", "a", False),
        ("a\\b", "a\\b", True),
        ("a/b/c", "a/*", True),
        ("model.body.3.body.2", "*body.2", True),
        ("model.sub_mean", "*mean*", True),
        ("model.sub_mean", "*Mean*", False),
        ("tail.0", "tail.?", True),
        ("tail.10", "tail.?", False),
        ("blocks.a", "**", True),
    ],
)
def test_a_glob_matches_the_whole_name_and_slash_is_an_ordinary_character(name, pattern, hit):
    assert fullmatch(name, pattern) is hit


class _SlashNet(nn.Module):
    """A ModuleDict whose keys hold '/': skipping one key must keep exactly that one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleDict({"a": nn.Conv2d(8, 8, 3, padding=1), "a/b": nn.Conv2d(8, 8, 3, padding=1)})
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.blocks["a"](h))
        return self.head(torch.relu(self.blocks["a/b"](h)))


def test_skip_of_a_name_keeps_only_that_layer_not_names_that_extend_it_with_a_slash():
    assert match(["blocks.a"], ["blocks.a", "blocks.a/b"], what="skip") == ["blocks.a"]
    model = _SlashNet()
    pruner = assl.Pruner(model, X, ratio=0.5, skip=["blocks.a", "head"])
    lose = {layer for g in pruner.graph.groups if pruner.removed[g.name] for layer in g.layers}
    assert "blocks.a/b" in lose and "blocks.a" not in lose


# --- modules as patterns ------------------------------------------------------------------------


def test_skip_and_groups_take_the_modules_themselves():
    by_name = assl.Pruner(_edsr(), X, ratio=0.5, skip=["body.0.body.0", "body.1.body.0"])
    model = _edsr()
    by_module = assl.Pruner(model, X, ratio=0.5, skip=[model.body[0].body[0], model.body[1].body[0]])
    assert by_module.removed == by_name.removed and by_module.removed["body.0.body.0"] == 0
    one = _edsr()  # one module, as one glob is one string
    alone = assl.Pruner(_edsr(), X, ratio=0.5, skip="body.0.body.0").removed
    assert assl.Pruner(one, X, ratio=0.5, skip=one.body[0].body[0]).removed == alone
    group = next(g for g in by_name.graph.groups if len(g.layers) > 1)  # the residual stream
    model = _edsr()
    mixed = [model.get_submodule(group.layers[0]), *group.layers[1:]]  # a module and globs in one group
    assert assl.Pruner(model, X, ratio=0.5, groups=[mixed]).aligned == by_name.aligned


def test_a_module_name_is_matched_literally():
    class Odd(nn.Module):  # ModuleDict keys holding glob characters
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleDict({k: nn.Conv2d(3 if k == "a*" else 8, 8, 3, padding=1) for k in ("a*", "ab")})
            self.out = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.convs["ab"](torch.relu(self.convs["a*"](x)))))

    model = Odd()
    no_align = assl.Schedule.for_steps(100, align=False)
    pruner = assl.Pruner(model, X, ratio=0.5, skip=[model.convs["a*"]], schedule=no_align)  # "convs.a*" takes both
    assert pruner.removed["convs.a*"] == 0 and pruner.removed["convs.ab"] == 4


def test_a_module_outside_the_model_is_named_in_the_error():
    model, other = _edsr(), _edsr()
    with pytest.raises(assl.PatternError, match=r"skip: the module Conv2d\(8, 8, .* is not inside the EDSR"):
        assl.Pruner(model, X, ratio=0.5, skip=[other.body[0].body[0]])
    with pytest.raises(assl.PatternError, match=r"groups\[0\]: the module Conv2d\(3, 8"):
        assl.Pruner(model, X, ratio=0.5, groups=[[model.head[0], other.head[0]]])
    with pytest.raises(assl.PatternError, match="is the model itself"):
        assl.Pruner(model, X, ratio=0.5, skip=[model])
    assert not any(n.endswith("parametrizations") for n, _ in model.named_modules())  # untouched


# --- warnings the user must act on --------------------------------------------------------------


class _Cat(nn.Module):
    """Two layers concatenated onto a third's channels: each of them must keep one channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


def _slim_now() -> nn.Module:
    """Slim after one step: early (in the align phase), with the chosen channels still alive."""
    pruner = assl.Pruner(_edsr(), X, ratio=0.5, schedule=assl.Schedule.for_steps(40))
    pruner.step()
    return pruner.slim()


def _step_unaligned() -> None:
    """A schedule with an align phase on a model with no group to align: said at the first step."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 3, 3))
    assl.Pruner(model, X, ratio=0.5, schedule=assl.Schedule.for_steps(99)).step()


def _slim_unstepped() -> nn.Module:
    return assl.Pruner(_edsr(), X, ratio=0.5, schedule=assl.Schedule.for_steps(40)).slim()


WARNED = [
    (lambda: assl.Pruner(_edsr(), X, ratio=0.5, skip=["tail.0"]), "skip pattern 'tail.0' changes nothing"),
    (_step_unaligned, "align steps are skipped"),
    (_slim_unstepped, "slim() before any step was counted"),
    (_slim_now, "slimming in phase align"),
    (_slim_now, "slimming changed the output on the example inputs"),
    (lambda: assl.Pruner(_Cat(), X, ratio=0.75).prune_now(), "group a: only 2 of 3 units can go"),
]


@pytest.mark.parametrize("call, said", WARNED)
def test_what_the_user_must_act_on_is_an_assl_warning_at_their_line(call, said):
    with pytest.warns(assl.ASSLWarning) as caught:
        call()
    assert any(said in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert all(w.filename == __file__ for w in caught if w.category is assl.ASSLWarning)  # not inside assl
    with warnings.catch_warnings():
        warnings.simplefilter("error", assl.ASSLWarning)  # what -W error::assl.ASSLWarning does
        with pytest.raises(assl.ASSLWarning):
            call()


# --- one name, one contract ---------------------------------------------------------------------


def test_apply_plan_slims_in_place_and_slimmed_copy_leaves_the_model():
    model = _edsr()
    graph = assl.trace(model, X)
    plan = random_plan(graph, 0.5, seed=1)
    masked = assl.masked_copy(model, graph, plan)
    before = snapshot(model)
    small = assl.slimmed_copy(model, graph, plan, X)
    assert_same(before, snapshot(model))
    assert small is not model and sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    same = assl.apply_plan(model, graph, plan)
    assert same is model
    torch.testing.assert_close(model(X), masked(X), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(small(X), masked(X), rtol=1e-4, atol=1e-5)


def test_the_deprecated_slim_still_slims_in_place_and_warns():
    model = _edsr()
    graph = assl.trace(model, X)
    plan = random_plan(graph, 0.5, seed=2)
    expected = assl.slimmed_copy(model, graph, plan, X)
    with pytest.warns(DeprecationWarning, match="apply_plan"):
        out = assl.slim(model, graph, plan)
    assert out is model
    torch.testing.assert_close(model(X), expected(X))


def test_budget_takes_its_own_argument_and_the_old_form_warns():
    target = assl.Budget(params=sum(p.numel() for p in _edsr().parameters()) * 2 // 3)
    a = assl.Pruner(_edsr(), X, budget=target, skip=["*tail*"])
    with pytest.warns(DeprecationWarning, match="budget="):
        b = assl.Pruner(_edsr(), X, ratio=target, skip=["*tail*"])  # type: ignore[arg-type]
    assert a.removed == b.removed and any(a.removed.values())


def test_approximate_norms_is_stored_under_its_own_name():
    pruner = assl.Pruner(_edsr(), X, ratio=0.5)
    assert pruner.approximate_norms is False
    with pytest.warns(DeprecationWarning, match="approximate_norms"):
        assert pruner.approximate is False


@pytest.mark.parametrize("old, new", sorted(assl._compat.MOVED_MODULES.items()))
def test_old_module_names_import_with_a_deprecation_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the real module keeps its own identity
    sys.modules.pop(old, None)


def test_old_names_still_reach_their_objects():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from assl.budget import Budget
        from assl.io import load, save
        from assl.patterns import PatternError
        from assl.pruner import Pruner
        from assl.schedule import Schedule
    assert (Budget, load, save, PatternError, Pruner, Schedule) == (
        assl.Budget,
        assl.load,
        assl.save,
        assl.PatternError,
        assl.Pruner,
        assl.Schedule,
    )


# --- persistence at the level of dicts ----------------------------------------------------------


def test_slim_state_dict_round_trip_through_a_larger_checkpoint():
    model = ResNet()
    graph = assl.trace(model, torch.randn(2, 3, 16, 16))
    small = assl.slimmed_copy(model, graph, random_plan(graph, 0.5, seed=3), torch.randn(2, 3, 16, 16))
    checkpoint = {"epoch": 3, "slim": assl.slim_state_dict(small)}
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    fresh = ResNet()
    out = assl.load_slim_state_dict(fresh, back["slim"])
    assert out is fresh
    small.eval(), fresh.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x), small(x))


def test_load_slim_state_dict_refuses_a_changed_dict_and_leaves_the_model():
    model = _edsr()
    graph = assl.trace(model, X)
    small = assl.slimmed_copy(model, graph, random_plan(graph, 0.5, seed=4), X)
    record = assl.slim_state_dict(small)
    tampered = copy.deepcopy(record)
    name = next(iter(tampered["state_dict"]))
    tampered["state_dict"][name] = tampered["state_dict"][name] + 1
    fresh = _edsr(1)
    before = snapshot(fresh)
    with pytest.raises(assl.CheckpointError, match="digest"):
        assl.load_slim_state_dict(fresh, tampered)
    assert_same(before, snapshot(fresh))


def test_save_and_load_are_the_dict_functions_around_a_file(tmp_path):
    model = _edsr()
    graph = assl.trace(model, X)
    small = assl.slimmed_copy(model, graph, random_plan(graph, 0.5, seed=5), X)
    assl.save(small, tmp_path / "s.pt")
    on_disk = torch.load(tmp_path / "s.pt", weights_only=True)
    in_memory = assl.slim_state_dict(small)
    assert on_disk["sha256"] == in_memory["sha256"] and on_disk["sizes"] == in_memory["sizes"]
