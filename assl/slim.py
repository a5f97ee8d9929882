"""Exact physical slimming: cut the planned channels out of the model's tensors, in place.

``slim`` removes, for every unit a plan names, the producers' output rows and biases, the
per-channel parameters and buffers that follow them (normalization, PReLU, depthwise convs) and
the matching input channels of every consumer. ``masked_copy`` builds the reference it must
equal: a copy of the dense model with the same channels zeroed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ._inputs import call_args, tensors
from .errors import ASSLError, PlanError
from .graph import Graph, Plan
from .layers import resize

__all__ = ["masked_copy", "max_rel_err", "slim", "slimmed_copy", "tolerance"]

logger = logging.getLogger("assl")


def _fold(m: nn.Module) -> None:
    """Replace every parametrization of ``m`` by the plain tensor it computes.

    ``parametrize.remove_parametrizations`` deletes the property from the dynamically made
    ``Parametrized*`` class, which deep copies of the module share: folding a copy that way
    breaks the original. This fold leaves the class alone and only switches ``m`` back to it.
    """
    if not parametrize.is_parametrized(m):
        return
    folded: dict[str, tuple[torch.Tensor, bool, bool]] = {}
    with torch.no_grad():
        plists = cast(nn.ModuleDict, m.parametrizations)
        for name, plist in plists.items():
            original = cast(torch.Tensor, plist.original if hasattr(plist, "original") else plist.original0)
            value = getattr(m, name).detach().clone()
            folded[name] = (value, isinstance(original, nn.Parameter), bool(original.requires_grad))
    m.__class__ = m.__class__.__bases__[0]
    del m._modules["parametrizations"]
    for name, (value, is_param, requires_grad) in folded.items():
        if is_param:
            m.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
        else:
            m.register_buffer(name, value)


def _new_tensors(model: nn.Module, graph: Graph, plan: Plan) -> dict[str, dict[str, torch.Tensor]]:
    """Compute every cut tensor without touching the model; raise if the model changed."""
    by_tensor: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for e, keep in graph.cuts(plan):
        by_tensor[(e.module, e.tensor)].append((e.dim, keep))
    out: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for (mod_name, t_name), cuts in by_tensor.items():
        try:
            m = model.get_submodule(mod_name)
        except AttributeError as e:
            raise PlanError(f"the model has no module {mod_name!r} any more; trace it again") from e
        t = getattr(m, t_name, None)
        if not isinstance(t, torch.Tensor):
            raise PlanError(f"`{mod_name}.{t_name}` is gone from the model; trace it again")
        new = t.detach()
        changed = False
        for dim, keep in cuts:
            if new.shape[dim] != keep.shape[0]:
                raise PlanError(
                    f"`{mod_name}.{t_name}` has {t.shape[dim]} entries on dim {dim} but was traced with "
                    f"{keep.shape[0]}: the model changed since trace() (already slimmed?); trace it again"
                )
            if not keep.all():
                idx = torch.from_numpy(np.flatnonzero(keep)).to(new.device)
                new = new.index_select(dim, idx)
                changed = True
        if changed:
            out[mod_name][t_name] = new
    return out


def slim(model: nn.Module, graph: Graph, plan: Plan) -> nn.Module:
    """Physically remove the channels ``plan`` names, in place, and return ``model``.

    Modules keep their class, name and forward; their tensors shrink and their size attributes
    (``in_channels``, ``out_channels``, ``groups``, ``num_features``, ...) follow. Weight
    parametrizations of the traced layers are folded into plain weights first. Slimmed tensors
    are new ``Parameter`` objects: build the optimizer after slimming.

    Args:
        model: The model that was traced.
        graph: Its graph from :func:`assl.trace`.
        plan: Group name (or any producer layer of the group) -> unit indices to remove.

    Returns:
        ``model`` itself, slimmed.

    Raises:
        PlanError: The plan does not fit the graph, or the model changed since it was traced.
            The model is untouched then.

    Example:
        >>> graph = assl.trace(model, x)
        >>> assl.slim(model, graph, {"body.0.conv1": [0, 5, 7]})
    """
    new = _new_tensors(model, graph, plan)  # every check happens before the first change
    with torch.no_grad():
        for mod_name in graph.modules:
            m = model.get_submodule(mod_name)
            _fold(m)
            for t_name, t in new.get(mod_name, {}).items():
                if t_name in m._parameters:
                    old = m._parameters[t_name]
                    requires_grad = old.requires_grad if old is not None else True
                    m._parameters[t_name] = nn.Parameter(t, requires_grad=requires_grad)
                elif t_name in m._buffers:
                    m._buffers[t_name] = t
                else:
                    setattr(m, t_name, t)
            resize(m)
    removed = sum(len(v) for v in graph.validate(plan).values())
    logger.info("slimmed %d channel units out of %d groups", removed, len(graph.validate(plan)))
    return model


def masked_copy(model: nn.Module, graph: Graph, plan: Plan) -> nn.Module:
    """A copy of ``model`` with the planned channels zeroed instead of removed.

    Zeroed are the producers' weight rows and biases and the per-channel parameters after them
    (normalization weight, bias and running mean, depthwise rows); weight parametrizations of
    traced layers are folded first. ``slim`` with the same plan computes the same function.

    Raises:
        PlanError: The plan does not fit the graph.
    """
    cuts = graph.cuts(plan)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for mod_name in graph.modules:
            _fold(masked.get_submodule(mod_name))
        for e, keep in cuts:
            if e.role != "zero" or keep.all():
                continue
            t = getattr(masked.get_submodule(e.module), e.tensor)
            idx = torch.from_numpy(np.flatnonzero(~keep)).to(t.device)
            t.index_fill_(e.dim, idx, 0)
    return masked


def slimmed_copy(model: nn.Module, graph: Graph, plan: Plan, example_inputs: Any, *, check: bool = True) -> nn.Module:
    """A slimmed deep copy of ``model``; with ``check``, proven equal to the masked model first.

    Raises:
        ASSLError: The slimmed copy differs from the masked model on ``example_inputs`` beyond
            float tolerance; ``model`` is untouched.
    """
    small = slim(copy.deepcopy(model), graph, plan)
    if check:
        err = max_rel_err(masked_copy(model, graph, plan), small, example_inputs)
        if not err <= tolerance(small):
            raise ASSLError(
                f"the slimmed model differs from the masked model by {err:.3g} (relative) on the example "
                f"inputs; the model is untouched. Please report this with the model's code."
            )
    return small


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """Turn off TF32: cuDNN and cuBLAS use it by default, with a 10-bit mantissa."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def tolerance(model: nn.Module) -> float:
    """The largest relative difference a correct slimming shows in ``model``'s precision."""
    dtypes = {p.dtype for p in model.parameters()}
    return 1e-4 if dtypes <= {torch.float32, torch.float64} else 2e-2


def max_rel_err(reference: nn.Module, model: nn.Module, inputs: Any) -> float:
    """Largest ``|reference - model|`` over all outputs, relative to each output's scale.

    Both run in eval mode, without gradients and without TF32, on ``inputs`` given as to
    :func:`assl.trace`; their training flags are restored afterwards.
    """
    args, kwargs = call_args(inputs)
    modes = [[m.training for m in net.modules()] for net in (reference, model)]
    reference.eval()
    model.eval()
    try:
        with torch.no_grad(), _exact_float32():
            xs, ys = list(tensors(reference(*args, **kwargs))), list(tensors(model(*args, **kwargs)))
    finally:
        for net, flags in zip((reference, model), modes):
            for m, t in zip(net.modules(), flags):
                m.training = t
    if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys)):
        return math.inf
    errs = [float((x.float() - y.float()).abs().max() / x.float().abs().max().clamp_min(1e-12)) for x, y in zip(xs, ys)]
    return max(errs, default=0.0)
