"""Darknet's random helpers (utils.c), drawn from a numpy Generator.

Darknet draws from C's ``rand()``; we cannot (and do not want to) reproduce
that stream, but we draw the same distributions with the same argument rules
(a reversed range is swapped, ``rand_scale`` is ``x`` or ``1/x`` with equal
odds), so a seeded run is reproducible and darknet's ranges are kept.
"""
from __future__ import annotations

import numpy as np


def rand_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi]; the bounds are swapped when ``hi < lo`` (darknet's rule)."""
    if hi < lo:
        lo, hi = hi, lo
    return lo + float(rng.random()) * (hi - lo)


def rand_scale(rng: np.random.Generator, s: float) -> float:
    """``x`` or ``1/x`` (equal odds) with ``x`` uniform between 1 and ``s``."""
    scale = rand_uniform(rng, 1.0, s)
    return scale if rng.integers(2) else 1.0 / scale


def rand_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive; swapped when ``hi < lo`` (darknet's ``rand_int``)."""
    if hi < lo:
        lo, hi = hi, lo
    return int(rng.integers(lo, hi + 1))


def coin(rng: np.random.Generator) -> bool:
    """``rand() % 2``."""
    return bool(rng.integers(2))
