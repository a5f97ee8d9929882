"""Channel counts read from shapes: followed where they are sizes, their channels pinned where they are numbers.

Each form below used to go through ``slim()`` silently wrong (the slimmed model computing with the
smaller count): ``h * c ** -0.5`` differed from the masked model by 17%, ``h / c`` by 23%,
``h * c`` by 37%, ``if c == 8`` by 45%, and a forward returning ``(y, c)`` returned 4 instead of 8.
Now the channels counted stay, the reason names the line, and a Pruner with nothing left refuses
and leaves the model as it was.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from util import assert_same, max_rel_err, snapshot

import assl
from assl.tracing.sizes import SizeFloat, SizeInt

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


class _Net(nn.Module):
    """stem -> a -> ``fn(h)`` -> b: ``fn`` uses the channel count of ``a``'s output."""

    def __init__(self, fn):
        super().__init__()
        torch.manual_seed(0)
        self.fn = fn
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        out = self.fn(torch.relu(self.a(torch.relu(self.stem(x)))))
        return (self.b(out[0]), out[1]) if isinstance(out, tuple) else self.b(out)


def _branch(h):
    if h.shape[1] == 8:
        h = h * 2
    return h


NUMBERS = {
    "pow": lambda h: h * h.shape[1] ** -0.5,
    "div": lambda h: h / h.shape[1],
    "mul": lambda h: h * h.shape[1],
    "float_mul": lambda h: h * (h.shape[1] * 0.5),
    "condition": _branch,
    "output": lambda h: (h, h.shape[1]),
    "int": lambda h: h * int(h.size(1)),
    "sqrt": lambda h: h / math.sqrt(h.size(1)),
    "parity": lambda h: h * 2 if h.shape[1] % 2 else h,
    "full": lambda h: h + torch.full((1,), h.shape[1]),
    "tensor": lambda h: h * torch.tensor(float(h.shape[1] // 2)),
    "numel": lambda h: h * (h.numel() / h.shape[0]) ** -0.5,
}


@pytest.mark.parametrize("form", list(NUMBERS))
def test_a_channel_count_used_as_a_number_pins_its_group_and_names_the_line(form):
    model = _Net(NUMBERS[form]).eval()
    graph = assl.trace(model, X)
    g = graph.group("a")
    assert g.num_prunable == 0, form
    why = g.reasons[0]
    assert "channel count" in why and ("test_sizes.py:" in why or form == "output"), why
    assert graph.group("stem").num_prunable == 8  # only the group whose count is used
    before = snapshot(model)
    with pytest.raises(ValueError, match="nothing to prune"):
        assl.Pruner(model, X, ratio={"a": 0.5})
    assert_same(before, snapshot(model))


def test_the_issues_forms_would_have_changed_the_output():
    """What pinning prevents: the forward computed with the slimmed count differs from the masked one."""
    for form, expected in (("pow", 0.17), ("div", 0.23), ("mul", 0.37), ("condition", 0.45)):
        model = _Net(NUMBERS[form]).eval()
        graph = assl.trace(_Net(lambda h: h).eval(), X)  # the same layers without the number
        plan = {"a": [0, 2, 4, 6]}
        masked = assl.masked_copy(model, graph, plan)
        small = assl.apply_plan(copy.deepcopy(model), graph, plan)
        assert max_rel_err(masked, small, X) > expected / 4, form


SIZES = {
    "reshape": lambda h: h.view(h.size(0), h.shape[1], -1).view(*h.shape),
    "zeros": lambda h: h + torch.zeros(h.shape[0], h.shape[1], 1, 1),
    "new_zeros": lambda h: h + h.new_zeros(h.shape[0], h.size(1), *h.shape[2:]),
    "zeros_like": lambda h: torch.zeros_like(h) + h,
    "ones_like_times": lambda h: torch.ones_like(h) * h,
    "equal_counts": lambda h: h * 2 if h.shape[1] == h.shape[1] else h,
    "shape_equal": lambda h: h + 1 if h.shape != h.shape else h,
    "chunk": lambda h: torch.cat(torch.chunk(h, 2, dim=1)[::-1], 1),
}


@pytest.mark.parametrize("form", list(SIZES))
def test_a_channel_count_used_as_a_size_follows_slimming_exactly(form):
    model = _Net(SIZES[form]).eval()
    graph = assl.trace(model, X)
    g = graph.group("a")
    assert g.num_prunable == g.size == (4 if form == "chunk" else 8), g.reasons
    plan = {"a": [1, 3] if form == "chunk" else [0, 3, 5]}
    masked = assl.masked_copy(model, graph, plan)
    assl.apply_plan(model, graph, plan)
    for x in (X, torch.randn(1, 3, 7, 5)):
        assert max_rel_err(masked, model, x) < 1e-5


def test_equal_counts_of_two_tensors_are_tied_and_different_ones_pinned():
    class Two(nn.Module):
        def __init__(self, width_b):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, width_b, 1)
            self.c, self.d = nn.Conv2d(8, 3, 1), nn.Conv2d(width_b, 3, 1)

        def forward(self, x):
            p, q = torch.relu(self.a(x)), torch.relu(self.b(x))
            scale = 2.0 if p.shape[1] == q.shape[1] else 1.0
            return self.c(p) * scale + self.d(q)

    graph = assl.trace(Two(8), X)
    assert graph.group("a") is graph.group("b") and graph.group("a").num_prunable == 8
    graph = assl.trace(Two(6), X)  # 8 != 6 now, but 8 - 2 == 6 after slimming: both stay
    assert graph.group("a").num_prunable == 0 and graph.group("b").num_prunable == 0
    assert "compared by `==`" in graph.group("a").reasons[0]


def test_a_layer_attribute_compared_to_the_count_it_matches_is_tied():
    class Checked(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1)

        def forward(self, x):
            h = self.a(x)
            assert h.shape[1] == self.bn.num_features == self.b.in_channels
            return self.b(torch.relu(self.bn(h)))

    model = Checked().eval()
    graph = assl.trace(model, X)
    assert graph.group("a").num_prunable == 8
    assl.apply_plan(model, graph, {"a": [1, 2]})
    model(X)  # the attributes followed: the assertion holds in the slimmed model
    assert model.bn.num_features == 6


def test_sizes_are_plain_numbers_outside_a_trace():
    n = SizeInt(8, ())
    assert type(n * 0.5) is SizeFloat and n * 0.5 == 4.0 and type(n**-0.5) is SizeFloat
    assert isinstance(math.floor(n / 3), SizeInt) and math.floor(n / 3) == 2
    assert {n: 1}[8] == 1 and hash(n) == hash(8)  # usable as a key like the int it is
    assert type(copy.deepcopy(n / 2)) is float


def test_torchs_own_code_reading_a_layers_sizes_pins_nothing():
    class Logged(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.dw, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 3, 1)
            self.seen: list[str] = []

        def forward(self, x):
            self.seen.append(repr(self))  # extra_repr compares `groups != 1`: torch's code, not the model's
            return self.b(torch.relu(self.dw(torch.relu(self.a(x)))))

    graph = assl.trace(Logged(), X)
    assert graph.group("a").num_prunable == 8
