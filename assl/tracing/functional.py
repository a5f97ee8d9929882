"""Layers whose class replaces the forward of their torch class, traced through the calls they make.

A subclass of a convolution, Linear or normalization that computes its output in its own forward
(timm's ``BatchNormAct2d``: ``F.batch_norm`` then an activation; a weight-standardized convolution
with a per-filter gain: ``F.conv2d`` of a standardized weight) is not observed whole: the tracer
follows the torch calls of its forward like any other code. These rules give ``F.conv*d``,
``F.conv_transpose*d``, ``F.linear``, ``F.batch_norm``, ``F.instance_norm``, ``F.group_norm``,
``F.layer_norm`` and ``F.prelu`` the channel rules of the layers: their tensor arguments may be the
layer's parameters, or tensors computed from them (:mod:`.derived`), and those are cut with the
channels. The producer of a convolution or Linear call is the layer whose ``weight`` runs along its
output channels.

While such a layer runs, its size attributes (``out_channels``, ``num_features``, ...) are
:class:`~.sizes.SizeInt` that count its weight's dimension (``parameters.size_attributes``), so that
``self.weight.reshape(1, self.out_channels, -1)`` is known to follow slimming, which updates them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..layers import CONV, DECONV
from .channels import Value
from .derived import Binding
from .layer_rules import ParamAxes, conv_call, layer_norm_call, linear_call, norm_call, prelu_call
from .param_rules import derive
from .protocol import Opaque, Tracer, arg
from .sizes import SizeInt

__all__ = ["FUNCTIONAL_RULES"]

FunctionalRule = Any


def _fixed_out(tr: Tracer, out: Any, cd: int, why: str, name: str) -> None:
    """Channels of ``out`` along ``cd`` that stay for ``why``, carrying it to whatever they meet."""
    if isinstance(out, torch.Tensor) and 0 <= cd < out.ndim:
        labels = tr.nodes.new(out.shape[cd])
        tr.fix(labels, why)
        tr.put(out, Value(cd, labels, np.zeros(out.shape[cd], dtype=bool)), name)


def _pin_input(tr: Tracer, x: Any, why: str) -> None:
    v = tr.get(x)
    if v is not None:
        tr.fix(v.labels, why)


def _opaque_call(tr: Tracer, layer: str | None, name: str, x: Any, out: Any, cd: int, why: str) -> None:
    """A call the tracer cannot follow: the channels it reads and makes stay."""
    reason = f"`{layer}` is opaque: {why}" if layer else f"`{name}` is not followed: {why}"
    if layer:
        tr.opaque_layer(layer, why)
    _pin_input(tr, x, reason)
    _fixed_out(tr, out, cd, reason, name)


def _leaf_modules(tr: Tracer, t: Any) -> list[str]:
    d = tr.derived(t) if isinstance(t, torch.Tensor) else None
    return sorted({m for m, _ in d.leaves}) if d is not None else []


def _owner(tr: Tracer, w: torch.Tensor, out_dim: int, kind: type | tuple[type, ...]) -> str | None:
    """The layer whose ``weight`` runs along dim ``out_dim`` of ``w`` as its output dimension."""
    d = tr.derived(w)
    if d is None or out_dim >= d.ndim:
        return None
    for module, tensor, dim in sorted(d.axes[out_dim]):
        m = tr.module(module)
        if tensor != "weight" or not isinstance(m.weight, torch.Tensor):
            continue
        transposed = isinstance(m, DECONV)
        if isinstance(m, kind) and dim == (1 if transposed else 0):
            return module
    return None


def _param(tr: Tracer, t: Any, dim: int, size: int, *, zeroed: bool = True, values: bool = True) -> Binding:
    """``t`` (a parameter, or computed from parameters) bound along ``dim`` to ``size`` channels."""
    if not isinstance(t, torch.Tensor):
        return Binding([], None, None)
    if tr.get(t) is not None:
        return Binding([], None, "a tensor computed from the input is used as a parameter")
    b = tr.bind(t, dim, zeroed=zeroed, values=values)
    if b is None:
        if dim < t.ndim and t.shape[dim] == size and size > 1:
            return Binding([], None, "a per-channel tensor that is not a parameter")
        return Binding([], None, None)
    return b


def _input_dim(tr: Tracer, w: torch.Tensor, dim: int, layer: str) -> Binding:
    """The weight's input-channel dim: cut (never zeroed) with the input channels, or why it cannot be."""
    if w.shape[dim] == 1:
        return Binding([], None, None)
    b = _param(tr, w, dim, w.shape[dim], values=False)
    if b.axes or b.why:
        return b
    why = tr.cannot_cut((layer, "weight", dim)) or f"its dim {dim} is not a parameter dimension the tracer follows"
    return Binding([], None, why)


# --- convolutions and Linear ---------------------------------------------------------------


def _conv(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    if tr.get(x) is None and tr.derived(x) is not None:  # a convolution of parameters
        derive(tr, name, func, args, kwargs, out)
        return
    if not isinstance(w, torch.Tensor) or tr.derived(w) is None or not isinstance(out, torch.Tensor):
        raise Opaque
    bias = arg(args, kwargs, 2, "bias")
    groups = arg(args, kwargs, 6, "groups", 1)
    transposed = name.startswith("conv_transpose")
    spatial = w.ndim - 2
    cd = x.ndim - spatial - 1
    out_dim = 1 if transposed else 0
    d = tr.derived(w)
    assert d is not None
    layer = _owner(tr, w, out_dim, DECONV if transposed else (*CONV, nn.Module))
    modules = _leaf_modules(tr, w)
    if d.why:
        _opaque_call(tr, layer or (modules[0] if modules else None), name, x, out, cd, d.why)
        return
    if layer is None:
        why = (
            f"`{name}` is given a weight whose output dimension is not the `weight` of a "
            f"{'transposed ' if transposed else ''}convolution layer "
            f"(computed from {', '.join(modules) or 'constants'})"
        )
        _opaque_call(tr, modules[0] if modules else None, name, x, out, cd, why)
        return
    m = tr.module(layer)
    c_in, c_out = x.shape[cd], out.shape[cd]
    depthwise = groups > 1 and c_in // groups == 1
    if groups > 1 and not isinstance(m, _ConvNd):
        _opaque_call(tr, layer, name, x, out, cd, f"a grouped `{name}` on the weight of `{layer}`, not a convolution")
        return
    if depthwise and not (isinstance(groups, SizeInt) and groups.axes):
        why = f"a depthwise `{name}` whose groups ({groups}) are written in the code, not read from `{layer}.groups`"
        _opaque_call(tr, layer, name, x, out, cd, why)
        return
    in_dim = 0 if transposed else 1
    w_out = _param(tr, w, out_dim, w.shape[out_dim])
    w_in = _input_dim(tr, w, in_dim, layer) if not depthwise else Binding([], None, None)
    b = _param(tr, bias, 0, c_out)
    v_in = tr.get(x)
    zero = _zero(b, c_out, bias is None)
    if depthwise:  # weight rows (dim 0 for both kinds) follow the input channels
        rows = w_out if not transposed else _param(tr, w, 0, w.shape[0])
        pins = [r.why for r in (rows, b) if r.why]
        weight: tuple[ParamAxes, ParamAxes] = (rows.axes, [])
        # an output channel is zero where its input channel is zero or its filter is zeroed
        quiet = np.repeat(v_in.zero, c_out // c_in) if v_in is not None else np.zeros(c_out, dtype=bool)
        filters = _zero(rows, w.shape[0], False)
        zero = zero & (quiet | (filters if not transposed else np.repeat(filters, c_out // c_in)))
    else:
        pins = [r.why for r in (w_out, b) if r.why]
        weight = (w_out.axes, w_in.axes) if not transposed else (w_in.axes, w_out.axes)
        filters = _zero(w_out, w.shape[out_dim], False)
        zero = zero & (np.tile(filters, groups) if transposed else filters)
    tr.note_read(x, None)
    conv_call(
        tr,
        layer,
        x,
        out,
        transposed=transposed,
        spatial=spatial,
        groups=groups,
        weight=weight,
        bias=b.axes,
        out_zero=zero,
    )
    tr.produced(out, layer)
    if w_in.why and v_in is not None:
        tr.fix(v_in.labels, f"`{layer}` reads its input channels through a weight: {w_in.why}")
    if pins:
        v = tr.get(out)
        if v is not None:
            tr.fix(v.labels, f"`{layer}` computes its output channels from {pins[0]}")


def _linear(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    if tr.get(x) is None and tr.derived(x) is not None:
        derive(tr, name, func, args, kwargs, out)
        return
    if not isinstance(w, torch.Tensor) or tr.derived(w) is None or w.ndim != 2 or not isinstance(out, torch.Tensor):
        raise Opaque
    d = tr.derived(w)
    assert d is not None
    layer = _owner(tr, w, 0, nn.Module)
    modules = _leaf_modules(tr, w)
    if d.why or layer is None:
        why = d.why or f"`linear` is given a weight whose rows are not the `weight` of a layer ({', '.join(modules)})"
        _opaque_call(tr, layer or (modules[0] if modules else None), name, x, out, out.ndim - 1, why)
        return
    n_out = out.shape[-1]
    w_out = _param(tr, w, 0, w.shape[0])
    w_in = _input_dim(tr, w, 1, layer)
    b = _param(tr, arg(args, kwargs, 2, "bias"), 0, n_out)
    zero = np.ones(n_out, dtype=bool)
    for r in (w_out, b):
        if r.zero is not None and len(r.zero) == n_out:
            zero &= r.zero
    v_before = tr.get(x)
    tr.note_read(x, None)
    linear_call(tr, layer, x, out, weight=(w_out.axes, w_in.axes), bias=b.axes, out_zero=zero)
    tr.produced(out, layer)
    if w_in.why and v_before is not None:
        tr.fix(v_before.labels, f"`{layer}` reads its input features through a weight: {w_in.why}")
    pins = [r.why for r in (w_out, b) if r.why]
    if pins:
        v = tr.get(out)
        if v is not None:
            tr.fix(v.labels, f"`{layer}` computes its output features from {pins[0]}")


# --- normalizations ------------------------------------------------------------------------


def _norm_owner(tr: Tracer, *params: Any) -> str | None:
    """The layer whose own ``weight`` (or running mean) the call reads directly, if any."""
    for t in params:
        d = tr.derived(t) if isinstance(t, torch.Tensor) else None
        if d is not None and d.expr.leaf is not None:
            return d.expr.leaf[0]
    return None


def _traced_input(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> Value | None:
    """The labels of a per-channel op's input ``args[0]``; when it carries no traced channels but is
    computed from parameters alone (a standardized weight), the op's output is derived from it."""
    v = tr.get(args[0])
    if v is None and tr.derived(args[0]) is not None:
        derive(tr, name, func, args, kwargs, out)
    return v


def _batch_norm(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = _traced_input(tr, name, func, args, kwargs, out)
    if v is None:
        return
    if not isinstance(out, torch.Tensor):
        raise Opaque
    rm, rv = arg(args, kwargs, 1, "running_mean"), arg(args, kwargs, 2, "running_var")
    w, b = arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias")
    instance = name == "instance_norm"
    batch_stats = bool(arg(args, kwargs, 5, "use_input_stats" if instance else "training", instance))
    cd = 1 if x.ndim >= 2 else 0
    size = x.shape[cd]
    bound = {
        "running_mean": _param(tr, rm, 0, size),
        "running_var": _param(tr, rv, 0, size, zeroed=False),
        "weight": _param(tr, w, 0, size),
        "bias": _param(tr, b, 0, size),
    }
    uses_batch = batch_stats or rm is None
    normalized_zero = v.zero & (uses_batch | _zero(bound["running_mean"], size, rm is None))
    zero = normalized_zero | (_zero(bound["weight"], size, False) if w is not None else False)
    zero = zero & _zero(bound["bias"], size, b is None)
    owner = _norm_owner(tr, w, rm, b, rv)
    tr.note_read(x, owner if owner is not None and _owns_affine(tr, owner, w, b) else None)
    params = [a for r in bound.values() for a in r.axes]
    norm_call(tr, owner, x, out, cd=cd, groups=None, params=params, out_zero=zero)
    _pin_params(tr, out, owner or name, bound.values())


def _zero(b: Binding, size: int, absent: bool) -> np.ndarray:
    if absent:
        return np.ones(size, dtype=bool)
    return b.zero if b.zero is not None and len(b.zero) == size else np.zeros(size, dtype=bool)


def _owns_affine(tr: Tracer, owner: str, w: Any, b: Any) -> bool:
    """Whether ``w`` and ``b`` are ``owner``'s own ``weight`` and ``bias`` Parameters (a norm carrier)."""
    m = tr.module(owner)
    return w is not None and w is getattr(m, "weight", None) and b is getattr(m, "bias", None)


def _pin_params(tr: Tracer, out: torch.Tensor, layer: str, bound: Any) -> None:
    whys = [r.why for r in bound if r.why]
    if whys:
        v = tr.get(out)
        if v is not None:
            tr.fix(v.labels, f"`{layer}` computes these channels from {whys[0]}")


def _group_norm(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = _traced_input(tr, name, func, args, kwargs, out)
    if v is None:
        return
    given = arg(args, kwargs, 1, "num_groups")
    groups = int(given)
    w, b = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    cd = 1
    size = x.shape[cd]
    owner = _norm_owner(tr, w, b)
    layer = tr.module(owner) if owner is not None else None
    if not (isinstance(layer, nn.GroupNorm) and given is layer.__dict__.get("num_groups")) and groups < size:
        # slimming updates a GroupNorm's num_groups; one written in the code would not follow
        _pin_input(tr, x, f"`{owner or name}` normalizes groups of channels whose number is not its `num_groups`")
    bound = {"weight": _param(tr, w, 0, size), "bias": _param(tr, b, 0, size)}
    zero = _zero(bound["weight"], size, False) if w is not None else np.zeros(size, dtype=bool)
    zero = zero & _zero(bound["bias"], size, b is None)
    tr.note_read(x, owner if owner is not None and _owns_affine(tr, owner, w, b) else None)
    params = [a for r in bound.values() for a in r.axes]
    norm_call(tr, owner, x, out, cd=cd, groups=groups, params=params, out_zero=zero)
    _pin_params(tr, out, owner or name, bound.values())


def _layer_norm(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = _traced_input(tr, name, func, args, kwargs, out)
    if v is None:
        return
    shape = arg(args, kwargs, 1, "normalized_shape")
    n = 1 if isinstance(shape, int) else len(shape)
    w, b = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    owner = _norm_owner(tr, w, b) or name
    tr.note_read(x, None)
    if v.dim < x.ndim - n or not tr.approximate_norms or n != 1:
        layer_norm_call(
            tr, owner, x, out, normalized=n, weight=[] if w is not None else None, bias=[] if b is not None else None
        )
        return
    bw, bb = _param(tr, w, 0, v.size), _param(tr, b, 0, v.size)
    zero = _zero(bw, v.size, False) if w is not None else np.zeros(v.size, dtype=bool)
    zero = zero & _zero(bb, v.size, b is None)
    layer_norm_call(
        tr, owner, x, out, normalized=n, weight=bw.axes if w is not None else None, bias=bb.axes, out_zero=zero
    )
    _pin_params(tr, out, owner, (bw, bb))


def _prelu(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    v = _traced_input(tr, name, func, args, kwargs, out)
    if v is None:
        return
    if not isinstance(w, torch.Tensor) or w.numel() == 1:
        tr.put(out, v, name)
        return
    cd = 1 if x.ndim >= 2 else 0
    bw = _param(tr, w, 0, x.shape[cd], zeroed=False)
    prelu_call(tr, _norm_owner(tr, w) or name, x, out, weight=bw.axes)
    _pin_params(tr, out, _norm_owner(tr, w) or name, (bw,))


FUNCTIONAL_RULES: dict[str, FunctionalRule] = {}
FUNCTIONAL_RULES.update({n: _conv for n in ("conv1d", "conv2d", "conv3d")})
FUNCTIONAL_RULES.update({n: _conv for n in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")})
FUNCTIONAL_RULES["linear"] = _linear
FUNCTIONAL_RULES.update({n: _batch_norm for n in ("batch_norm", "instance_norm")})
FUNCTIONAL_RULES["group_norm"] = _group_norm
FUNCTIONAL_RULES["layer_norm"] = _layer_norm
FUNCTIONAL_RULES["prelu"] = _prelu
