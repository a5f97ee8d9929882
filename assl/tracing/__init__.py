"""Tracing: run the model once on real inputs and find which channels are coupled.

``tracer`` runs the model and asks a rule for every layer (``layer_rules``) and torch operation
(``elementwise``, ``spatial``, ``shape_rules``, ``size_rules``, and ``functional`` for the ``F.*``
calls of layers with a forward of their own) how it moves channel labels (``channels``); the rules
see the tracer only through the ``protocol``. Tensors computed from parameters alone are followed
by ``param_rules`` as ``derived`` values (``parameters`` keeps what the tracer knows of them), and
sizes read from traced tensors by ``sizes``. ``build`` turns the result into the plain
:class:`~assl.Graph`, which imports nothing of this package.
"""

from .tracer import trace

__all__ = ["trace"]
