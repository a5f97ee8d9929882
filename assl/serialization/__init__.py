"""Persistence of slimmed models: their weights and layer sizes as one checked dict or file.

A slimmed model keeps its classes, so it is rebuilt by building the dense model and shrinking it
to the recorded sizes. :func:`slim_state_dict` and :func:`load_slim_state_dict` work on a plain
dict (for a larger checkpoint); :func:`save` and :func:`load` put that dict in a file.
"""

from ._format import FORMAT, VERSION, load, load_slim_state_dict, record, save, slim_state_dict

__all__ = ["FORMAT", "VERSION", "load", "load_slim_state_dict", "record", "save", "slim_state_dict"]
