"""Distillation from the dense model: a frozen copy of it and the loss that pulls a student towards it.

The dense network is in memory when pruning starts; :class:`Teacher` keeps a frozen, eval-mode
copy of it (one extra copy of its parameters and buffers) so the pruning and fine-tuning phases
can add a term that pulls the pruned network's outputs towards the dense ones. The teacher is a
plain object, not an ``nn.Module``: held as an attribute of a module, it adds nothing to that
module's ``parameters()`` or ``state_dict()``, and it outlives :meth:`Pruner.slim` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._inputs import call_args, tensors
from .._reparam import copy_model
from ..errors import ArgumentError, ArgumentTypeError
from ._scales import scale_of

__all__ = ["KINDS", "Teacher", "distillation_loss"]

KINDS = ("mse", "l1", "kl")
_ACCEPTED = "a tensor, or tuples, lists and dicts of tensors"


def distillation_loss(
    student_output: Any, teacher_output: Any, *, kind: str = "mse", temperature: float = 1.0
) -> torch.Tensor:
    """The distance from ``student_output`` to ``teacher_output``, summed over their tensors.

    Both are a tensor or the same nesting of tuples, lists and dicts of tensors (dicts matched by
    key). The teacher's tensors are detached and cast to the dtype of the student's, so the
    gradient flows to the student only.

    Args:
        student_output: What the network being trained returned.
        teacher_output: What the teacher returned for the same inputs.
        kind: ``"mse"`` (mean squared error), ``"l1"`` (mean absolute error) or ``"kl"``:
            ``temperature**2 * KL(softmax(teacher / T) || softmax(student / T))``, the softmax over
            dimension 1 (classes or channels), summed over it and averaged over every other
            position (for ``[batch, classes]`` logits that is the per-sample mean).
        temperature: The softmax temperature ``T`` of ``"kl"``; the other kinds take only 1.

    Returns:
        A scalar tensor: the sum over the outputs' tensors of each tensor's loss.

    Raises:
        ArgumentError: An unknown ``kind``, a temperature that is not positive (or not 1 for
            ``"mse"``/``"l1"``), outputs of different structure or shapes, or no tensor at all.
        ArgumentTypeError: An output holds something other than tensors, tuples, lists and dicts,
            or a tensor that is not floating point.
    """
    if kind not in KINDS:
        raise ArgumentError(f"distillation kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if not temperature > 0:
        raise ArgumentError(f"distillation temperature must be positive, got {temperature!r}")
    if kind != "kl" and temperature != 1:
        raise ArgumentError(
            f"a temperature applies to kind='kl' only, got temperature={temperature!r} with kind={kind!r}"
        )
    pairs = list(_pairs(student_output, teacher_output, "output"))
    if not pairs:
        raise ArgumentError(f"distillation needs {_ACCEPTED}; the outputs hold no tensor")
    losses = [_loss(s, t.detach().to(s.dtype), kind, temperature) for s, t in pairs]
    total = losses[0]
    for more in losses[1:]:  # added one by one: tensors of different dtypes promote
        total = total + more
    return total


def _pairs(student: Any, teacher: Any, where: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The matching tensors of two outputs of the same structure, checked."""
    for obj, whose in ((student, "student"), (teacher, "teacher")):
        if not isinstance(obj, (torch.Tensor, tuple, list, Mapping)):
            raise ArgumentTypeError(f"distillation compares {_ACCEPTED}; the {whose}'s {where} is {type(obj).__name__}")
    if isinstance(student, torch.Tensor) and isinstance(teacher, torch.Tensor):
        for t, whose in ((student, "student"), (teacher, "teacher")):
            if not t.is_floating_point():
                raise ArgumentTypeError(
                    f"distillation compares floating-point tensors; the {whose}'s {where} is {t.dtype}"
                )
        if student.shape != teacher.shape:
            raise ArgumentError(
                f"the student's {where} has shape {tuple(student.shape)}, the teacher's {tuple(teacher.shape)}"
            )
        yield student, teacher
    elif isinstance(student, (tuple, list)) and isinstance(teacher, (tuple, list)):
        if len(student) != len(teacher):
            raise ArgumentError(f"the student's {where} has {len(student)} items, the teacher's {len(teacher)}")
        for i, (s, t) in enumerate(zip(student, teacher)):
            yield from _pairs(s, t, f"{where}[{i}]")
    elif isinstance(student, Mapping) and isinstance(teacher, Mapping):
        if set(student) != set(teacher):
            raise ArgumentError(
                f"the student's {where} has keys {sorted(map(str, student))}, the teacher's {sorted(map(str, teacher))}"
            )
        for k in student:
            yield from _pairs(student[k], teacher[k], f"{where}[{k!r}]")
    else:
        raise ArgumentError(
            f"the student's {where} is a {type(student).__name__}, the teacher's a {type(teacher).__name__}"
        )


def _loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "l1":
        return F.l1_loss(student, teacher)
    if student.ndim < 2:
        raise ArgumentError(f"kind='kl' takes a softmax over dimension 1; got a tensor of shape {tuple(student.shape)}")
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    per_position = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return per_position.mean() * temperature**2


class Teacher:
    """A frozen, eval-mode copy of the dense model, to distill the pruned one from.

    Build it from the dense model *before* :class:`~assl.Pruner` inserts its scales: it copies
    the parameters and buffers (one extra copy of the weights) and never shares them with the
    model, so pruning steps, :meth:`Pruner.slim` and fine-tuning leave it unchanged. Its
    parameters do not require gradients and, the teacher being no ``nn.Module``, a module that
    holds it as an attribute does not list them in ``parameters()`` or ``state_dict()``.

    Before each call the copy moves to the device of the inputs and, when they hold a floating
    tensor, to its dtype (the copy is moved, not duplicated).

    Example:
        >>> teacher = assl.Teacher(model)                       # dense, before the Pruner
        >>> pruner = assl.Pruner(model, example, ratio=0.5)
        >>> out = model(x)
        >>> loss = task_loss(out, y) + teacher.loss(out, x, weight=0.5) + pruner.alignment_loss()

    Args:
        model: The dense network, as trained.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``.
        ArgumentError: ``model`` already holds the scales a Pruner inserts (it is no longer the
            dense function once pruning steps ran).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"Teacher takes the dense nn.Module, got {type(model).__name__}")
        scaled = [name for name, m in model.named_modules() if scale_of(m) is not None]
        if scaled:
            few = ", ".join(repr(n) for n in scaled[:3]) + (", ..." if len(scaled) > 3 else "")
            raise ArgumentError(
                f"the model already holds a Pruner's scales (on {few}): build the Teacher from the dense model "
                "before creating the Pruner (or from another instance holding the dense weights)"
            )
        self.module: nn.Module = copy_model(model).eval().requires_grad_(False)

    def __call__(self, inputs: Any) -> Any:
        """The dense model's output for ``inputs``, computed without gradients.

        Args:
            inputs: As the model is called: a tensor, a tuple/list of positional arguments or a
                dict of keyword arguments.
        """
        args, kwargs = call_args(inputs)
        self._follow(inputs)
        if self.module.training:
            self.module.eval()
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def loss(
        self,
        student_output: Any,
        inputs: Any,
        *,
        weight: float = 1.0,
        kind: str = "mse",
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``weight`` times :func:`distillation_loss` of ``student_output`` and the teacher's output on ``inputs``.

        Args:
            student_output: What the network being trained returned for ``inputs``.
            inputs: What it was called with, as for :meth:`__call__`.
            weight: The factor of the term; 0 still runs the teacher.
            kind: ``"mse"``, ``"l1"`` or ``"kl"`` (see :func:`distillation_loss`).
            temperature: The softmax temperature of ``"kl"``.

        Raises:
            ArgumentError: A negative ``weight``, or what :func:`distillation_loss` raises.
            ArgumentTypeError: What :func:`distillation_loss` raises.
        """
        if not weight >= 0:
            raise ArgumentError(f"distillation weight must be 0 or more, got {weight!r}")
        return weight * distillation_loss(student_output, self(inputs), kind=kind, temperature=temperature)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher's parameters and buffers: the dense weights, to save with a checkpoint."""
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load dense weights saved by :meth:`state_dict` (strictly: every key must match)."""
        self.module.load_state_dict(state)

    def _follow(self, inputs: Any) -> None:
        """Move the copy to the device, and floating dtype, of the first suitable input tensor."""
        found = list(tensors(inputs))
        floating = next((t for t in found if t.is_floating_point()), None)
        first = floating if floating is not None else (found[0] if found else None)
        if first is None:
            return
        held: torch.Tensor | None = next(self.module.parameters(), None)
        if held is None:
            held = next(self.module.buffers(), None)
        dtype = floating.dtype if floating is not None else None
        if held is not None and held.device == first.device and (dtype is None or held.dtype == dtype):
            return
        self.module.to(device=first.device, dtype=dtype)
