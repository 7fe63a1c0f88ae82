"""Darknet layer modules, one small module per family; importing registers builders."""
from . import conv, pool, route, misc, heads  # noqa: F401  (registration side effects)
from .base import DarknetLayer

__all__ = ["DarknetLayer"]
