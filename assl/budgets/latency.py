"""Latency tables: how each layer's time depends on its widths, measured on the target device.

A :class:`LatencyTable` holds, for every convolution, transposed convolution and Linear layer
whose weight pruning can cut, its time on the device at a grid of (input, output) widths: a
stand-alone copy of the layer, called on an input of the shape the model gives it. The model's
latency after pruning is predicted as the sum of its layers' times (bilinear in the grid) plus
the rest of the measured dense latency (activations, norms, additions, framework overhead),
scaled with the activations the timed layers write.

The table is plain data (numbers, strings, lists, dicts): measure it once on the machine the model
will run on, :meth:`LatencyTable.save` it, and pass it to ``assl.Budget(..., table=...)`` on the
training machine.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._inputs import tensors
from .._slim import slimmed_copy
from ..errors import ArgumentError, CheckpointError
from ..graph import Graph
from ..layers import output_dim
from ..tracing import trace
from .timing import device_of, in_eval, interleaved, model_call, replica, timeable

__all__ = ["LatencyTable", "detect_step", "input_shapes", "measure_latency", "relative_noise", "timed_layers"]

logger = logging.getLogger("assl")

FORMAT = 1
STEPS = (32, 16, 8, 4, 2)
"""Candidate hardware steps of ``round_to="auto"``, largest first."""
EVIDENCE = 10.0
"""How much lower a step's Bayesian information criterion must be than the smooth curve's."""


@dataclass
class LatencyTable:
    """Measured layer times of one model on one device and dtype; plain data.

    Attributes:
        device: Where it was measured (``"cpu"``, ``"cuda:0"``, ...).
        dtype: The floating dtype of the model's weights.
        dense: Seconds of one call of the dense model on the example inputs (median).
        step: Width step of the device's latency curve found by the probe (1: none found).
        layers: Layer name -> ``{"weight": dense weight shape, "out_dim": the weight dimension of
            output channels, "in": input widths, "out": output widths, "calls": [signature index
            per call]}``.
        signatures: Per signature, seconds at every (input, output) width pair of its grid.
        probe: The output widths and seconds the step was read from.
        calibration: Whole-model measurements of uniformly narrowed copies, each ``{"removed":
            {group: units}, "seconds": s}``: what the layers' times leave over (activations,
            norms, per-op overhead) is fitted to them as a fixed part plus a part that scales with
            the activations.
        inputs: The shapes of the tensors of the example inputs it was measured on.
        noise: The timing noise of the whole-model measurements, relative: a robust standard
            deviation over rounds of the dense model's seconds and of each narrowed copy's share
            of them (the largest). Targets that close to a prediction cannot be told apart from it.
    """

    device: str
    dtype: str
    dense: float
    step: int
    layers: dict[str, dict[str, Any]]
    signatures: list[list[list[float]]]
    probe: dict[str, list[float]] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[list[int]] = field(default_factory=list)
    noise: float = 0.0
    format: int = FORMAT

    @classmethod
    def measure(
        cls,
        model: nn.Module,
        example_inputs: Any,
        *,
        step: int | str = "auto",
        max_points: int = 12,
        rounds: int = 5,
        min_time: float = 2e-3,
        graph: Graph | None = None,
    ) -> LatencyTable:
        """Time ``model``'s prunable layers on the device and dtype of ``example_inputs``.

        The model runs in eval mode under ``torch.inference_mode``; its training flags, weights
        and buffers are left as they were.

        Args:
            model: The dense model.
            example_inputs: What it is called with at deployment (batch included).
            step: Width step of the grid; ``"auto"`` reads it from a probe of the largest layer.
            max_points: At most this many widths per dimension (a coarser step above it).
            rounds: Interleaved rounds per measurement (medians are kept).
            min_time: Seconds each timed sample lasts at least.
            graph: The model's :func:`assl.trace` on these inputs, if at hand (saves a trace).

        Raises:
            ValueError: The device cannot be timed, or bad arguments.
        """
        if not (step == "auto" or (isinstance(step, int) and step >= 1)):
            raise ArgumentError(f"step must be 'auto' or an int >= 1, got {step!r}")
        if not isinstance(max_points, int) or max_points < 2:
            raise ArgumentError(f"max_points must be an int >= 2, got {max_points!r}")
        device = device_of(model, example_inputs)
        timeable(device)
        graph = graph if graph is not None else trace(model, example_inputs)
        timed = timed_layers(graph)
        with in_eval(model):
            inputs = _layer_inputs(model, example_inputs, timed)
            probe: dict[str, list[float]] = {}
            if step == "auto":
                step, probe = _probe(model, timed, inputs, device, rounds, min_time)
            sizes = {g.name: g.size for g in graph.groups}
            least = {g.name: max(1, g.size - g.num_prunable) for g in graph.groups}
            grids = {g: widths_grid(sizes[g], least[g], int(step), max_points) for g in sizes}
            layers, signatures = _measure_layers(model, timed, inputs, grids, max_points, device, rounds, min_time)
            dense, calibration, noise = _calibrate(model, example_inputs, graph, int(step), device, rounds, min_time)
        dtype = next((str(p.dtype) for p in model.parameters() if p.is_floating_point()), "torch.float32")
        table = cls(str(device), dtype.replace("torch.", ""), dense, int(step), layers, signatures, probe, calibration)
        table.inputs, table.noise = input_shapes(example_inputs), noise
        logger.info(
            "latency table: %d layers, %d signatures, dense %.3f ms (noise %.1f%%)",
            len(layers), len(signatures), dense * 1e3, 100 * noise,
        )  # fmt: skip
        return table

    def to_dict(self) -> dict[str, Any]:
        """The table as plain data (what :meth:`save` writes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        """The table from :meth:`to_dict`'s data, every field checked.

        Raises:
            CheckpointError: Not a latency table, one of another format, or a field of the wrong
                type or value (named: a negative time, a call of a signature that is not there,
                a grid that does not match its timings, ...).
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise CheckpointError(f"not a latency table of format {FORMAT} (found {found!r}): measure it again")
        try:
            table = cls(**dict(data))
        except TypeError as e:
            raise CheckpointError(f"not a latency table: {e}") from None
        _check_table(table)
        return table

    def save(self, path: str | Path) -> None:
        """Write the table to ``path`` (``torch.save`` of plain data, loadable with weights_only)."""
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save` (with ``weights_only=True``).

        Raises:
            CheckpointError: The file is not one :meth:`save` wrote (empty, truncated, text, a
                pickled object) or its table does not check out (the file and the field named).
            OSError: The file cannot be opened.
        """
        try:
            data = torch.load(path, weights_only=True)
        except OSError:
            raise
        except Exception as e:
            text = str(e).strip().splitlines()
            why = f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
            raise CheckpointError(
                f"{str(path)!r} is not a latency table file that LatencyTable.save wrote ({why})"
            ) from None
        try:
            return cls.from_dict(data)
        except CheckpointError as e:
            raise CheckpointError(f"{str(path)!r}: {e}") from None


def _check_table(t: LatencyTable) -> None:
    """Raise unless every field of ``t`` has the type and the values :meth:`LatencyTable.measure` gives."""

    def bad(field: str, value: Any, want: str) -> CheckpointError:
        return CheckpointError(f"not a valid latency table: {field} is {_short(value)}, it must be {want}")

    for name in ("device", "dtype"):
        if not isinstance(getattr(t, name), str):
            raise bad(name, getattr(t, name), "a str")
    if not _seconds(t.dense) or t.dense <= 0:
        raise bad("dense", t.dense, "a finite number of seconds > 0")
    if not _int(t.step) or t.step < 1:
        raise bad("step", t.step, "an int >= 1")
    if not isinstance(t.signatures, list):
        raise bad("signatures", t.signatures, "a list of grids of seconds")
    for i, grid in enumerate(t.signatures):
        rows = grid if isinstance(grid, list) and grid else None
        if rows is None or not all(isinstance(r, list) and len(r) == len(rows[0]) and r for r in rows):
            raise bad(f"signatures[{i}]", grid, "a non-empty list of equally long lists of seconds")
        for j, line in enumerate(rows):
            for k, v in enumerate(line):
                if not _seconds(v):
                    raise bad(f"signatures[{i}][{j}][{k}]", v, "a finite number of seconds >= 0")
    if not isinstance(t.layers, dict):
        raise bad("layers", t.layers, "a dict of layer name -> timings")
    for name, row in t.layers.items():
        where = f"layers[{name!r}]"
        if not isinstance(name, str) or not isinstance(row, dict):
            raise bad(where, row, "a dict with 'weight', 'out_dim', 'in', 'out' and 'calls'")
        missing = [k for k in ("weight", "out_dim", "in", "out", "calls") if k not in row]
        if missing:
            raise CheckpointError(f"not a valid latency table: {where} has no {', '.join(map(repr, missing))}")
        weight = row["weight"]
        if not isinstance(weight, list) or len(weight) < 2 or not all(_int(d) and d > 0 for d in weight):
            raise bad(f"{where}['weight']", weight, "the weight's shape, a list of ints > 0")
        if row["out_dim"] not in (0, 1) or not _int(row["out_dim"]):
            raise bad(f"{where}['out_dim']", row["out_dim"], "0 or 1")
        for key in ("in", "out"):
            widths = row[key]
            if (
                not isinstance(widths, list)
                or not widths
                or not all(_seconds(w) and w > 0 for w in widths)
                or any(b <= a for a, b in zip(widths, widths[1:]))
            ):
                raise bad(f"{where}[{key!r}]", widths, "a non-empty increasing list of widths > 0")
        calls = row["calls"]
        if not isinstance(calls, list) or not all(_int(c) and 0 <= c < len(t.signatures) for c in calls):
            raise bad(f"{where}['calls']", calls, f"a list of indices of signatures (0 to {len(t.signatures) - 1})")
        for c in calls:
            shape = (len(t.signatures[c]), len(t.signatures[c][0]))
            if shape != (len(row["in"]), len(row["out"])):
                raise CheckpointError(
                    f"not a valid latency table: signatures[{c}] (called by {where}) has {shape[0]} x {shape[1]} "
                    f"timings, its grid {len(row['in'])} x {len(row['out'])} widths"
                )
    if not isinstance(t.probe, dict) or set(t.probe) - {"widths", "seconds"}:
        raise bad("probe", t.probe, "a dict with 'widths' and 'seconds' (or empty)")
    if t.probe:
        widths, seconds = t.probe.get("widths"), t.probe.get("seconds")
        if not isinstance(widths, list) or not isinstance(seconds, list) or len(widths) != len(seconds):
            raise bad("probe", t.probe, "equally long lists of 'widths' and 'seconds'")
        if not all(_seconds(v) for v in [*widths, *seconds]):
            raise bad("probe", t.probe, "finite numbers >= 0")
    if not isinstance(t.calibration, list):
        raise bad("calibration", t.calibration, "a list of {'removed': {group: units}, 'seconds': s}")
    for i, c in enumerate(t.calibration):
        removed = c.get("removed") if isinstance(c, dict) else None
        if not isinstance(removed, dict) or not all(
            isinstance(g, str) and _int(k) and k >= 0 for g, k in removed.items()
        ):
            raise bad(f"calibration[{i}]['removed']", removed, "a dict of group name -> units >= 0")
        if not _seconds(c.get("seconds")) or c["seconds"] <= 0:
            raise bad(f"calibration[{i}]['seconds']", c.get("seconds"), "a finite number of seconds > 0")
    if not isinstance(t.inputs, list) or not all(
        isinstance(shape, list) and all(_int(d) and d >= 0 for d in shape) for shape in t.inputs
    ):
        raise bad("inputs", t.inputs, "a list of shapes (lists of ints >= 0)")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seconds(v: Any) -> bool:
    """A finite real number >= 0."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


Shares = dict[str, tuple[tuple[int, ...], int, dict[int, dict[str, float]]]]
"""Layer -> (dense weight shape, output positions, {weight dim: {group: channels per unit}})."""


def timed_layers(graph: Graph) -> Shares:
    """The layers a table times: those with a weight dimension that a prunable group cuts."""
    prunable = {g.name for g in graph.groups if g.num_prunable}
    out = {}
    for name, (shape, positions, dims) in graph.weight_shares().items():
        dims = {d: {g: s for g, s in shares.items() if g in prunable} for d, shares in dims.items()}
        dims = {d: shares for d, shares in dims.items() if shares}
        if dims:
            out[name] = (shape, positions, dims)
    return out


def input_shapes(example_inputs: Any) -> list[list[int]]:
    """The shapes of the tensors in ``example_inputs``, in order."""
    return [list(t.shape) for t in tensors(example_inputs)]


def measure_latency(model: nn.Module, example_inputs: Any, *, rounds: int = 7, min_time: float = 2e-3) -> float:
    """Median seconds of one call of ``model`` on ``example_inputs``, in eval mode, no gradients.

    Raises:
        ValueError: The device cannot be timed.
    """
    device = device_of(model, example_inputs)
    with in_eval(model):
        samples = interleaved([model_call(model, example_inputs)], device, rounds=rounds, min_time=min_time)
    return float(np.median(samples))


def widths_grid(size: int, least: int, step: int, max_points: int) -> list[int]:
    """Widths of one group to measure: multiples of ``step`` (coarser when there are more than
    ``max_points``), plus the smallest and the full width."""
    if size <= least:
        return [size]
    k = math.ceil(len(range(step, size + 1, step)) / max_points)
    coarse = step * max(1, k)
    widths = {w for w in range(coarse, size + 1, coarse) if w >= least} | {least, size}
    return sorted(widths)


def detect_step(widths: list[int], seconds: np.ndarray) -> int:
    """The width step of a measured latency curve: 1, or a ``p`` of :data:`STEPS`.

    A step ``p`` means the curve is flat on each run of widths ``(p(j-1), pj]`` and jumps between
    them, so a width in between costs what the next multiple costs. Each ``p`` is fitted as one
    level per run, the no-step hypothesis as a quadratic in the width, and the fit with the lowest
    Bayesian information criterion wins, a step only with strong evidence (a criterion lower by
    :data:`EVIDENCE`): noise alone does not make a step, and a finer step than the true one pays
    for its extra levels.
    """
    w = np.asarray(widths, dtype=float)
    t = np.asarray(seconds, dtype=float)
    n = len(w)

    def bic(residual: np.ndarray, params: int) -> float:
        return n * math.log(max(float(residual @ residual) / n, 1e-300)) + params * math.log(n)

    if n < 8:
        return 1
    best = (bic(t - np.polyval(np.polyfit(w, t, 2), w), 3) - EVIDENCE, 1)
    for p in STEPS:
        runs = np.ceil(w / p)
        levels = np.unique(runs)
        if len(levels) < 3:
            continue
        fit = np.array([t[runs == r].mean() for r in runs])
        best = min(best, (bic(t - fit, len(levels)), p), key=lambda b: b[0])
    return best[1]


def _calibrate(
    model: nn.Module, example_inputs: Any, graph: Graph, step: int, device: torch.device, rounds: int, min_time: float
) -> tuple[float, list[dict[str, Any]], float]:
    """Seconds of the dense model, of copies whose every prunable group keeps 1/2 and 1/4, and the
    relative noise of those measurements (see :attr:`LatencyTable.noise`)."""
    copies, removed = [model], []
    for keep in (0.5, 0.25):
        cut = {}
        for g in graph.groups:
            width = max(g.size - g.num_prunable, 1, step * round(keep * g.size / step))
            if width < g.size:
                cut[g.name] = g.pick(range(g.size), g.size - width)
        if cut and cut not in removed:
            copies.append(slimmed_copy(model, graph, cut, example_inputs, check=False).eval())
            removed.append(cut)
    samples = interleaved([model_call(m, example_inputs) for m in copies], device, rounds=rounds, min_time=min_time)
    seconds = np.median(samples, axis=0)
    calibration = [
        {"removed": {g: len(u) for g, u in r.items()}, "seconds": float(t)} for r, t in zip(removed, seconds[1:])
    ]
    return float(seconds[0]), calibration, relative_noise(samples)


def relative_noise(samples: np.ndarray) -> float:
    """Robust relative standard deviation over rounds (rows) of the first column and of every
    other column's ratio to it, the largest: 1.4826 median absolute deviations over the median."""
    samples = np.asarray(samples, dtype=float)
    columns = [samples[:, 0], *(samples[:, i] / samples[:, 0] for i in range(1, samples.shape[1]))]
    spreads = [1.4826 * float(np.median(np.abs(c - np.median(c)))) / float(np.median(c)) for c in columns]
    return max(spreads, default=0.0)


def _layer_inputs(model: nn.Module, example_inputs: Any, names: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
    """The input of every call of each named layer on ``example_inputs``."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for n in names:

        def grab(_m: nn.Module, args: tuple, n: str = n) -> None:
            if args and isinstance(args[0], torch.Tensor):  # a call by keyword is left to the rest
                seen[n].append(args[0].detach())

        handles.append(model.get_submodule(n).register_forward_pre_hook(grab))
    try:
        with torch.inference_mode():
            model_call(model, example_inputs)()
    finally:
        for h in handles:
            h.remove()
    return seen


def _dims(module: nn.Module) -> tuple[int, int]:
    out = output_dim(module)
    return 1 - out, out


def _dim_grid(size: int, shares: Mapping[str, float], grids: Mapping[str, list[int]], max_points: int) -> list[int]:
    """The sizes at which one weight dimension is measured, from the grids of its groups."""
    if not shares:
        return [size]
    if len(shares) == 1:
        ((g, s),) = shares.items()
        fixed = size - s * grids[g][-1]
        return sorted({max(1, round(fixed + s * w)) for w in grids[g]})
    least = size - sum(s * (grids[g][-1] - grids[g][0]) for g, s in shares.items())
    return sorted({max(1, round(v)) for v in np.linspace(least, size, max_points)})


def _measure_layers(
    model: nn.Module,
    timed: Shares,
    inputs: Mapping[str, list[torch.Tensor]],
    grids: Mapping[str, list[int]],
    max_points: int,
    device: torch.device,
    rounds: int,
    min_time: float,
) -> tuple[dict[str, dict[str, Any]], list[list[list[float]]]]:
    layers: dict[str, dict[str, Any]] = {}
    keys: dict[tuple, int] = {}
    todo: list[tuple[nn.Module, torch.Tensor, list[int], list[int]]] = []
    for name, (shape, _, shares) in timed.items():
        m = model.get_submodule(name)
        d_in, d_out = _dims(m)
        grid_in = _dim_grid(shape[d_in], shares.get(d_in, {}), grids, max_points)
        grid_out = _dim_grid(shape[d_out], shares.get(d_out, {}), grids, max_points)
        calls = []
        for x in inputs[name]:
            key = (repr(m), tuple(x.shape), tuple(grid_in), tuple(grid_out))
            if key not in keys:
                keys[key] = len(todo)
                todo.append((m, x, grid_in, grid_out))
            calls.append(keys[key])
        layers[name] = {"weight": list(shape), "out_dim": d_out, "in": grid_in, "out": grid_out, "calls": calls}
    signatures = []
    for i, (m, x, grid_in, grid_out) in enumerate(_bar(todo, "timing layers")):
        built = [replica(m, a, b, x) for a in grid_in for b in grid_out]
        calls_ = [functools.partial(layer, xi) for layer, xi in built]
        seconds = np.median(interleaved(calls_, device, rounds=rounds, min_time=min_time, seed=i), axis=0)
        signatures.append(seconds.reshape(len(grid_in), len(grid_out)).tolist())
        del built, calls_
    return layers, signatures


def _bar(items: list, what: str) -> Any:
    """``items`` with a progress bar on a terminal when tqdm is installed; a log line either way."""
    logger.info("latency table: %s (%d shapes)", what, len(items))
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=what, unit="shape", disable=not sys.stderr.isatty(), leave=False)


def _probe(
    model: nn.Module,
    timed: Shares,
    inputs: Mapping[str, list[torch.Tensor]],
    device: torch.device,
    rounds: int,
    min_time: float,
) -> tuple[int, dict[str, list[float]]]:
    """Time copies of the layer with the most MACs at output widths 16..96 (whatever its own width)
    and read the step off the curve."""
    best = None
    for name, (shape, positions, shares) in timed.items():
        m = model.get_submodule(name)
        d_in, d_out = _dims(m)
        if d_out in shares and inputs[name]:  # a wide input first: a stem reading 3 channels has no steps
            key = (shape[d_in] >= 16, positions * math.prod(shape))
            if best is None or key > best[0]:
                best = (key, name, shape[d_in], shape[d_out])
    if best is None:
        return 1, {}
    _, name, w_in, _ = best
    widths = list(range(16, 97))  # the device's step, not the layer's: narrow widths, where a step costs most
    x = inputs[name][0]
    built = [replica(model.get_submodule(name), w_in, w, x) for w in widths]
    samples = interleaved(
        [functools.partial(layer, xi) for layer, xi in built], device, rounds=max(rounds, 9), min_time=min_time
    )
    seconds = np.median(samples, axis=0)
    step = detect_step(widths, seconds)
    logger.info("latency probe on %s: widths %d..%d, step %d", name, widths[0], widths[-1], step)
    return step, {"widths": [float(w) for w in widths], "seconds": seconds.tolist()}
