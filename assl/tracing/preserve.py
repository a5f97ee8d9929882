"""What ``trace()`` leaves as it found it: every parameter and buffer, bit for bit.

Running the model changes state in place: BatchNorm running statistics and
``num_batches_tracked`` in train mode, the power-iteration vectors of spectral norm (``_u``/``_v``
of the parametrization, ``weight_u``/``weight_v`` of the legacy hook), the weight attribute a
legacy hook rebuilds, whatever a forward writes into its own tensors. :class:`Preserved` copies
them all before the trace and puts back whatever changed afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from .._reparam import legacy_hooks

__all__ = ["Preserved"]


class Preserved:
    """A copy of the tensors of ``model`` that :meth:`restore` puts back where they changed."""

    def __init__(self, model: nn.Module) -> None:
        self._slots: list[tuple[dict, str, torch.Tensor]] = []
        self._attrs: list[tuple[nn.Module, str, object]] = []
        copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for m in model.modules():
                for table in (m._parameters, m._buffers):
                    for key, t in table.items():
                        if t is None:
                            continue
                        self._slots.append((table, key, t))
                        if id(t) not in copies:
                            copies[id(t)] = (t, t.detach().clone())
                for hook in legacy_hooks(m):
                    self._attrs.append((m, hook.name, m.__dict__.get(hook.name)))
        self._copies = list(copies.values())

    def restore(self) -> None:
        """Put every tensor object and value back as it was when this copy was taken."""
        with torch.no_grad():
            for table, key, t in self._slots:
                if table.get(key) is not t:
                    table[key] = t
            for t, copy in self._copies:  # kernels that update buffers need not bump their version
                if t.shape != copy.shape or t.dtype != copy.dtype:
                    t.data = copy
                elif not torch.equal(t, copy):
                    t.copy_(copy)
            for m, name, value in self._attrs:
                m.__dict__[name] = value
