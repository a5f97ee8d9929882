"""Integrations of the Pruner with training frameworks.

Each lives in a module of its own that imports its framework: ``import assl`` imports none of
them. ``assl.integrations.lightning`` holds the PyTorch Lightning callback
(``pip install "assl[lightning]"``).
"""
