"""The pruning method: ASSL driven by the user's training loop.

``pruner`` wires the parts for the user: ``_resolve`` turns ratio, skip and groups into the units
each traced group loses; ``_selection`` places the scales (``_scales``) and chooses units;
``_penalty`` and ``_alignment`` are the two terms of the method; ``schedule`` holds the phase
lengths; ``_liveness``, ``_report`` and ``_state`` tell and save the progress; ``_distillation``
holds the frozen dense copy a pruned network can be distilled from.
"""

from ._distillation import Teacher, distillation_loss
from .pruner import Progress, Pruner
from .schedule import Schedule

__all__ = ["Progress", "Pruner", "Schedule", "Teacher", "distillation_loss"]
