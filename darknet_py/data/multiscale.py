"""``random=1`` multi-scale training: every 10 iterations darknet picks a new
network input size (``train_detector`` in detector.c of both darknets).

* pjreddie: a square ``(rand() % 10 + 10) * 32``, i.e. 320..608 whatever the
  cfg's size, and 608 once ``current_batch + 200 > max_batches``.
* AlexeyAB: ``r = rand_scale(c)`` with ``c = 1.4`` for ``random=1`` (else the
  value of ``random``); each side ``roundl(r * init / step + 1) * step``
  (``step`` = ``[net] resize_step``, 32); a shrink that would grow a side keeps
  the initial size; the first pick of a run and every pick in the last 100
  iterations use the largest size ``roundl(c * init / step + 1) * step``;
  never below ``step``.

The ``random`` and ``resize_step`` read are the last detection layer's and the
[net]'s, as darknet reads them.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import DataError
from ..layers.heads import HEAD_TYPES
from .rng import rand_scale

#: darknet resizes when ``count++ % RESIZE_EVERY == 0``
RESIZE_EVERY = 10


def _roundl(x: float) -> int:
    """C's ``roundl``: halves away from zero."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def alexeyab_size(random_val: float, init_w: int, init_h: int, *, rand_coef: float = 1.4,
                  resize_step: int = 32, first: bool = False, iteration: int = 0,
                  max_batches: int | None = None) -> tuple[int, int]:
    """AlexeyAB's size for a drawn scale ``random_val`` (pure arithmetic;
    ``max_batches=None``: not near the end)."""
    dim_w = _roundl(random_val * init_w / resize_step + 1) * resize_step
    dim_h = _roundl(random_val * init_h / resize_step + 1) * resize_step
    if random_val < 1 and (dim_w > init_w or dim_h > init_h):
        dim_w, dim_h = init_w, init_h
    if first or (max_batches is not None and iteration > max_batches - 100):
        dim_w = _roundl(rand_coef * init_w / resize_step + 1) * resize_step
        dim_h = _roundl(rand_coef * init_h / resize_step + 1) * resize_step
    return max(dim_w, resize_step), max(dim_h, resize_step)


def pjreddie_size(k: int, *, iteration: int = 0, max_batches: int | None = None) -> tuple[int, int]:
    """pjreddie's size for a drawn ``k = rand() % 10`` (pure arithmetic)."""
    near_end = max_batches is not None and iteration + 200 > max_batches
    dim = 608 if near_end else (k + 10) * 32
    return dim, dim


def _pick_pjreddie(rng: np.random.Generator, init_w: int, init_h: int, *, random: float,
                   resize_step: int, iteration: int, max_batches: int | None,
                   first: bool) -> tuple[int, int]:
    return pjreddie_size(int(rng.integers(10)), iteration=iteration, max_batches=max_batches)


def _pick_alexeyab(rng: np.random.Generator, init_w: int, init_h: int, *, random: float,
                   resize_step: int, iteration: int, max_batches: int | None,
                   first: bool) -> tuple[int, int]:
    coef = 1.4 if random == 1.0 else float(random)
    return alexeyab_size(rand_scale(rng, coef), init_w, init_h, rand_coef=coef,
                         resize_step=resize_step, first=first, iteration=iteration,
                         max_batches=max_batches)


#: dialect -> size picker (same keyword arguments as :func:`pick_random_size`)
SIZE_PICKERS: dict[str, Callable[..., tuple[int, int]]] = {
    "pjreddie": _pick_pjreddie,
    "alexeyab": _pick_alexeyab,
}


def pick_random_size(rng: np.random.Generator, init_w: int, init_h: int, *, dialect: str,
                     random: float = 1.0, resize_step: int = 32, iteration: int = 0,
                     max_batches: int | None = None, first: bool = False) -> tuple[int, int]:
    """The (w, h) darknet ``dialect`` switches to at a resize point.

    ``init_w, init_h``: the cfg's size; ``iteration``: darknet's current batch
    (``seen / batch``); ``max_batches``: the cfg's (None: never near the end);
    ``first``: this is the first resize of the run (AlexeyAB then uses its
    largest size).
    """
    try:
        picker = SIZE_PICKERS[dialect]
    except KeyError:
        raise DataError(f"unknown dialect {dialect!r}; expected one of "
                        f"{', '.join(SIZE_PICKERS)}") from None
    return picker(rng, init_w, init_h, random=random, resize_step=resize_step,
                  iteration=iteration, max_batches=max_batches, first=first)


class MultiScaleSchedule:
    """The input size of every iteration of a run, decided darknet's way and
    reproducible: iteration ``count`` (counted from the start of this run, as
    darknet's ``count``) uses the size picked at ``count // 10 * 10`` with a
    generator seeded by ``(seed, count // 10)``, so any process (every DDP rank,
    every loader worker) computes the same size without talking to the others.
    """

    def __init__(self, init_w: int, init_h: int, *, dialect: str, random: float = 1.0,
                 resize_step: int = 32, max_batches: int | None = None, seed: int = 0,
                 start_iteration: int = 0):
        self.init_w, self.init_h = init_w, init_h
        self.dialect, self.random, self.resize_step = dialect, random, resize_step
        self.max_batches, self.seed, self.start_iteration = max_batches, seed, start_iteration
        self._cache: dict[int, tuple[int, int]] = {}

    @classmethod
    def from_cfg(cls, cfg, *, seed: int = 0, start_iteration: int = 0) -> "MultiScaleSchedule | None":
        """The schedule of a parsed cfg, or None when its last head has ``random=0``."""
        heads = [s for s in cfg.layers if s.type in HEAD_TYPES]
        random = float(heads[-1].get("random", 0) or 0) if heads else 0.0
        if not random:
            return None
        net = cfg.net
        return cls(net["width"], net["height"], dialect=cfg.dialect, random=random,
                   resize_step=int(net.get("resize_step", 32) or 32),
                   max_batches=net["max_batches"], seed=seed, start_iteration=start_iteration)

    def size(self, count: int) -> tuple[int, int]:
        block = count // RESIZE_EVERY
        if block not in self._cache:
            rng = np.random.default_rng([self.seed, block])
            self._cache[block] = pick_random_size(
                rng, self.init_w, self.init_h, dialect=self.dialect, random=self.random,
                resize_step=self.resize_step, max_batches=self.max_batches,
                iteration=self.start_iteration + block * RESIZE_EVERY, first=block == 0)
        return self._cache[block]
