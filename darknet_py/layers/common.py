"""Helpers the section builders of several layer families share: C integer division,
the activation of a section, and the error for a feature a layer does not support."""
from __future__ import annotations

from ..activations import get_activation
from ..builder import BuildContext
from ..cfg import Section
from ..errors import UnsupportedLayerError


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def activation_for(sec: Section, ctx: BuildContext, key: str = "activation"):
    name = sec[key]
    try:
        return get_activation(name, ctx.dialect)
    except KeyError:
        raise sec.error(f"unknown activation {name!r} for {ctx.dialect} darknet", key) from None


def unsupported(sec: Section, ctx: BuildContext, message: str, key: str | None = None
                ) -> UnsupportedLayerError:
    line = sec.line_of(key) if key else sec.line
    return UnsupportedLayerError(f"layer {ctx.index} [{sec.name or sec.type}]: {message}",
                                 sec.file, line)
