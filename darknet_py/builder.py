"""Section builders: one function per darknet section type, in one registry.

A builder receives the section and a :class:`BuildContext` carrying what
darknet's ``size_params`` carries (the running input shape, the index, the
shapes of earlier layers) and returns the layer module with its output shape
computed by darknet's formulas.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .cfg import Section
from .errors import CfgError

if TYPE_CHECKING:
    from .layers.base import DarknetLayer

Shape = tuple[int, int, int]  # (c, h, w)


@dataclass
class BuildContext:
    """Darknet's size params while the network is built."""

    index: int
    in_shape: Shape
    shapes: list[Shape]                 # output shapes of layers [0, index)
    layers: list["DarknetLayer"]        # the modules built so far
    net: Section
    dialect: str
    file: str
    batch: int = 1
    extra: dict = field(default_factory=dict)

    def resolve(self, sec: Section, key: str, raw: int) -> int:
        """An absolute layer index from a cfg index (negative = relative)."""
        idx = self.index + raw if raw < 0 else raw
        if not 0 <= idx < self.index:
            raise sec.error(f"{key}={raw} refers to layer {idx}, outside layers 0..{self.index - 1} "
                            f"that precede layer {self.index}", key)
        return idx


Builder = Callable[[Section, BuildContext], "DarknetLayer"]
BUILDERS: dict[str, Builder] = {}

def register(*types: str) -> Callable[[Builder], Builder]:
    """Register a builder for section ``types``; a duplicate registration is a bug."""
    def deco(fn: Builder) -> Builder:
        for t in types:
            if t in BUILDERS:
                raise RuntimeError(f"builder for [{t}] registered twice")
            BUILDERS[t] = fn
        return fn
    return deco


def build_layer(sec: Section, ctx: BuildContext) -> "DarknetLayer":
    builder = BUILDERS.get(sec.type)
    if builder is None:
        raise CfgError(f"layer {ctx.index}: no builder for [{sec.type}]", sec.file, sec.line)
    try:
        return builder(sec, ctx)
    except (MemoryError, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, MemoryError) and "allocat" not in text and "overflow" not in text:
            raise
        # darknet's calloc fails the same way ("Calloc error"): the sizes ask for too much memory
        asked = re.search(r"allocate (\d+) bytes", text)
        why = f"{int(asked.group(1)) / 2**30:.1f} GiB" if asked else "their size overflows"
        raise CfgError(f"layer {ctx.index} [{sec.type}]: cannot allocate its parameters ({why}); "
                       f"check its sizes", sec.file, sec.line) from None
