"""Darknet layer modules, one small module per family; importing registers builders."""
from . import conv, pool, route, misc, heads, recurrent, conv_recurrent  # noqa: F401  (registration)
from .base import DarknetLayer

__all__ = ["DarknetLayer"]
