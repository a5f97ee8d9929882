"""Exact physical slimming: cut the planned channels out of the model's tensors, in place.

``apply_plan`` removes, for every unit a plan names, the producers' output rows and biases, the
per-channel parameters and buffers that follow them (normalization, PReLU, depthwise convs) and
the matching input channels of every consumer. ``masked_copy`` builds the reference it must
equal: a copy of the dense model with the same channels zeroed. Both go through ``reparam`` for a
weight that a legacy weight-norm or spectral-norm hook rebuilds, so the hook keeps working.
"""

from __future__ import annotations

import contextlib
import functools
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
from ._reparam import copy_model, cut, legacy_hook, refresh, value
from .errors import ASSLError, PlanError
from .graph import Graph, Plan
from .layers import resize

__all__ = ["apply_plan", "masked_copy", "max_rel_err", "slimmed_copy", "tolerance"]

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
            folded[name] = (value(m, name).clone(), isinstance(original, nn.Parameter), bool(original.requires_grad))
    m.__class__ = m.__class__.__bases__[0]
    del m._modules["parametrizations"]
    for name, (plain, is_param, requires_grad) in folded.items():
        if is_param:
            m.register_parameter(name, nn.Parameter(plain, requires_grad=requires_grad))
        else:
            m.register_buffer(name, plain)


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
        t = getattr(m, t_name, None) if not parametrize.is_parametrized(m, t_name) else value(m, t_name)
        if not isinstance(t, torch.Tensor):
            raise PlanError(f"`{mod_name}.{t_name}` is gone from the model; trace it again")
        for dim, keep in cuts:
            if t.shape[dim] != keep.shape[0]:
                raise PlanError(
                    f"`{mod_name}.{t_name}` has {t.shape[dim]} entries on dim {dim} but was traced with "
                    f"{keep.shape[0]}: the model changed since trace() (already slimmed?); trace it again"
                )
        active = [(dim, keep) for dim, keep in cuts if not keep.all()]
        hook = legacy_hook(m, t_name)
        if hook is not None:  # cut what the hook rebuilds the tensor from
            if active:
                out[mod_name].update(_guarded(mod_name, functools.partial(cut, m, hook, active, zero=False)))
            continue
        new = t.detach()
        for dim, keep in active:
            new = new.index_select(dim, torch.from_numpy(np.flatnonzero(keep)).to(new.device))
        if active:
            out[mod_name][t_name] = new
    return out


def _guarded(module: str, compute: Any) -> Any:
    """``compute()``, with any error it raises turned into an ASSLError naming ``module``."""
    try:
        return compute()
    except ASSLError:
        raise
    except Exception as e:
        raise ASSLError(
            f"slimming `{module}` failed ({type(e).__name__}: {e}); the model is left as it was. Please "
            f"report this with the model's code"
        ) from e


def _module_state(m: nn.Module) -> tuple[type, dict, dict, dict, dict]:
    return m.__class__, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)


def _put_back(m: nn.Module, state: tuple[type, dict, dict, dict, dict]) -> None:
    cls, attrs, params, buffers, modules = state
    m.__class__ = cls
    m.__dict__.clear()
    m.__dict__.update(attrs)
    for table, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules)):
        table.clear()
        table.update(saved)


def apply_plan(model: nn.Module, graph: Graph, plan: Plan) -> nn.Module:
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
        ASSLError: Changing a module failed (named); every module is put back as it was.

    Example:
        >>> graph = assl.trace(model, x)
        >>> assl.apply_plan(model, graph, {"body.0.conv1": [0, 5, 7]})
    """
    new = _new_tensors(model, graph, plan)  # every check happens before the first change
    saved = {name: _module_state(model.get_submodule(name)) for name in graph.modules}
    try:
        with torch.no_grad():
            for mod_name in graph.modules:
                _guarded(mod_name, functools.partial(_apply, model.get_submodule(mod_name), new.get(mod_name, {})))
    except ASSLError:
        for name, state in saved.items():  # whatever went wrong, the model goes back as it was
            _put_back(model.get_submodule(name), state)
        raise
    removed = sum(len(v) for v in graph.validate(plan).values())
    logger.info("slimmed %d channel units out of %d groups", removed, len(graph.validate(plan)))
    return model


def _apply(m: nn.Module, new: dict[str, torch.Tensor]) -> None:
    """Fold ``m``'s parametrizations, put in its cut tensors and update its size attributes."""
    _fold(m)
    for t_name, t in new.items():
        if t_name in m._parameters:
            old = m._parameters[t_name]
            requires_grad = old.requires_grad if old is not None else True
            m._parameters[t_name] = nn.Parameter(t, requires_grad=requires_grad)
        elif t_name in m._buffers:
            m._buffers[t_name] = t
        else:
            setattr(m, t_name, t)
    refresh(m)  # the tensors legacy hooks rebuild, at their new sizes
    resize(m)


def masked_copy(model: nn.Module, graph: Graph, plan: Plan) -> nn.Module:
    """A copy of ``model`` with the planned channels zeroed instead of removed.

    Zeroed are the producers' weight rows and biases and the per-channel parameters after them
    (normalization weight, bias and running mean, depthwise rows); weight parametrizations of
    traced layers are folded first. ``apply_plan`` with the same plan computes the same function.

    Raises:
        PlanError: The plan does not fit the graph.
    """
    cuts = graph.cuts(plan)
    masked = copy_model(model)
    with torch.no_grad():
        for mod_name in graph.modules:
            _fold(masked.get_submodule(mod_name))
        for e, keep in cuts:
            if e.role != "zero" or keep.all():
                continue
            m = masked.get_submodule(e.module)
            hook = legacy_hook(m, e.tensor)
            if hook is not None:  # zero through the tensors the hook rebuilds it from
                for t_name, t in cut(m, hook, [(e.dim, keep)], zero=True).items():
                    getattr(m, t_name).copy_(t)
                refresh(m)
                continue
            t = getattr(m, e.tensor)
            idx = torch.from_numpy(np.flatnonzero(~keep)).to(t.device)
            t.index_fill_(e.dim, idx, 0)
    return masked


def slimmed_copy(model: nn.Module, graph: Graph, plan: Plan, example_inputs: Any, *, check: bool = True) -> nn.Module:
    """A slimmed deep copy of ``model``; with ``check``, proven equal to the masked model first.

    What :meth:`assl.Pruner.slim` returns, for a plan of your own: ``model`` is left as it is.

    Args:
        model: The model that was traced.
        graph: Its graph from :func:`assl.trace`.
        plan: Group name (or any producer layer of the group) -> unit indices to remove.
        example_inputs: What the model is called with, to compare the copy with the masked model.
        check: Compare the copy with :func:`masked_copy` on ``example_inputs`` (off only for
            inexact plans, such as pruning through a GroupNorm with ``approximate_norms``).

    Returns:
        A new module: ``model``'s classes and forward code with smaller tensors.

    Raises:
        PlanError: The plan does not fit the graph.
        ASSLError: The slimmed copy differs from the masked model on ``example_inputs`` beyond
            float tolerance, or building or running it fails (naming the module); ``model`` is
            untouched.

    Example:
        >>> graph = assl.trace(model, x)
        >>> small = assl.slimmed_copy(model, graph, {"body.0.conv1": [0, 5, 7]}, x)
    """
    small = apply_plan(_guarded("the model", functools.partial(copy_model, model)), graph, plan)
    if check:
        masked = _guarded("the model", lambda: masked_copy(model, graph, plan))
        with _failing_layer(masked) as in_masked, _failing_layer(small) as in_small:
            try:
                err = max_rel_err(masked, small, example_inputs)
            except Exception as e:
                which, where = ("the masked reference", in_masked) if in_masked else ("the slimmed model", in_small)
                raise ASSLError(
                    f"{which} fails in `{where[-1] if where else type(small).__name__}` on the example inputs "
                    f"({type(e).__name__}: {e}); the model is untouched. Its forward code may depend on the "
                    f"channel count in a way the tracer does not see: please report this with the model's code"
                ) from e
        if not err <= tolerance(small):
            raise ASSLError(
                f"the slimmed model differs from the masked model by {err:.3g} (relative) on the example "
                f"inputs; the model is untouched. Please report this with the model's code."
            )
    return small


@contextlib.contextmanager
def _failing_layer(model: nn.Module) -> Iterator[list[str]]:
    """Yield the names of the modules whose forward is running: after an error, where it happened."""
    stack: list[str] = []
    names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}

    def enter(m: nn.Module, args: Any) -> None:
        stack.append(names.get(id(m), type(m).__name__))

    def leave(m: nn.Module, args: Any, out: Any) -> None:
        if stack:
            stack.pop()

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


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
