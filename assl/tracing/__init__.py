"""Tracing: run the model once on real inputs and find which channels are coupled.

``tracer`` runs the model and asks a rule for every layer (``layer_rules``) and torch operation
(``elementwise``, ``spatial``, ``shape_rules``) how it moves channel labels (``channels``); the
rules see the tracer only through the ``protocol``. ``build`` turns the result into the plain
:class:`~assl.Graph`, which imports nothing of this package.
"""

from .tracer import trace

__all__ = ["trace"]
