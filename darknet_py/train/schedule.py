"""Darknet's learning-rate schedule (``get_current_rate`` of both darknets).

``LRSchedule.from_net(net_section, dialect)`` reads the [net] keys once;
``get_lr(batch_num, schedule)`` is then a pure function of the batch number
(``seen // (mini_batch * subdivisions)``, taken after the passes of the update
incremented ``seen``).  Every policy reproduces darknet's float arithmetic:
the [net] numbers are C ``float``s, ``pow``/``exp``/``cos`` run in double and
the result is rounded to float32 (the returned Python float is exactly a
float32 value).

* burn-in (both): ``batch_num < burn_in`` -> ``lr * (batch_num/burn_in)^power``
* ``constant``: ``lr``
* ``step``: ``lr * scale^(batch_num // step)``
* ``steps``: ``lr`` times every ``scales[i]`` whose ``steps[i] <= batch_num``
* ``exp``: ``lr * gamma^batch_num``
* ``poly``: ``lr * (1 - batch_num/max_batches)^power``
* ``sigmoid``: ``lr / (1 + exp(gamma*(batch_num - step)))``
* ``random``: ``lr * u^power`` with ``u`` uniform in [0, 1] (the one impure policy)
* ``sgdr`` (AlexeyAB only): cosine from ``lr`` to ``learning_rate_min`` over cycles of
  ``sgdr_cycle`` batches (default ``max_batches``) growing ``sgdr_mult`` times

pjreddie's batch number is unsigned (``size_t``): with ``sigmoid`` before
``step`` the difference wraps around and the rate is 0 (for gamma > 0), and a
negative entry of ``steps`` is never reached.  Both quirks are reproduced.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..cfg import Section
from ..errors import CfgError

f32 = np.float32
_SIZE_T = 2 ** 64


def _f(x: float) -> float:
    """Round to float32 (darknet stores every rate in a C float)."""
    return float(f32(x))


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _pow(base: float, exponent: float) -> float:
    """C's ``pow``: NaN (not an exception) for a negative base and fractional exponent."""
    try:
        return math.pow(base, exponent)
    except (ValueError, OverflowError):
        if base < 0 and not float(exponent).is_integer():
            return math.nan
        return math.inf


@dataclass(frozen=True)
class LRSchedule:
    """The [net] keys ``get_current_rate`` reads, as darknet holds them (floats are float32)."""

    dialect: str
    policy: str
    learning_rate: float
    burn_in: int = 0
    power: float = 4.0
    step: int = 1
    scale: float = 1.0
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    gamma: float = 1.0
    max_batches: int = 0
    learning_rate_min: float = 1e-5
    sgdr_cycle: int = 0
    sgdr_mult: int = 2

    @classmethod
    def from_net(cls, net: Section, dialect: str) -> "LRSchedule":
        """Read ``net`` (a typed [net] section); a key darknet would misuse is a CfgError."""
        policy = str(net["policy"])
        if policy not in POLICIES or (policy == "sgdr" and dialect != "alexeyab"):
            known = ", ".join(p for p in POLICIES if dialect == "alexeyab" or p != "sgdr")
            raise net.error(f"unknown learning-rate policy={policy!r} for {dialect} darknet "
                            f"(known: {known}); darknet would silently use 'constant'", "policy")
        steps = tuple(int(s) for s in (net.get("steps") or ()))
        scales = tuple(_f(s) for s in (net.get("scales") or ()))
        if policy == "steps":
            if not steps or not scales:
                raise net.error("policy=steps needs both steps= and scales=", "policy")
            if len(scales) < len(steps):
                raise net.error(f"steps= has {len(steps)} entries but scales= only {len(scales)}",
                                "scales")
            scales = scales[:len(steps)]
        if policy == "step" and int(net.get("step", 1)) <= 0:
            raise net.error(f"policy=step needs step > 0 (got {net.get('step')})", "step")
        if policy == "poly" and int(net.get("max_batches", 0)) <= 0:
            raise net.error("policy=poly needs max_batches > 0", "max_batches")
        cycle = int(net["sgdr_cycle"]) if "sgdr_cycle" in net else int(net.get("max_batches", 0))
        mult = int(net.get("sgdr_mult", 2))
        if policy == "sgdr" and (cycle <= 0 or mult < 1):
            raise net.error(f"policy=sgdr needs sgdr_cycle (or max_batches) > 0 and sgdr_mult >= 1 "
                            f"(got {cycle} and {mult})", "policy")
        burn_in = int(net.get("burn_in", 0))
        if burn_in < 0:
            raise net.error(f"burn_in must be >= 0 (got {burn_in})", "burn_in")
        return cls(dialect=dialect, policy=policy, learning_rate=_f(net["learning_rate"]),
                   burn_in=burn_in, power=_f(net.get("power", 4.0)),
                   step=int(net.get("step", 1)), scale=_f(net.get("scale", 1.0)),
                   steps=steps, scales=scales, gamma=_f(net.get("gamma", 1.0)),
                   max_batches=int(net.get("max_batches", 0)),
                   learning_rate_min=_f(net.get("learning_rate_min", 1e-5)),
                   sgdr_cycle=cycle, sgdr_mult=mult)


Policy = Callable[[LRSchedule, int, Callable[[], float]], float]
POLICIES: dict[str, Policy] = {}


def policy(name: str) -> Callable[[Policy], Policy]:
    """Register the rate function of policy ``name`` (a duplicate is a bug)."""
    def deco(fn: Policy) -> Policy:
        if name in POLICIES:
            raise RuntimeError(f"learning-rate policy {name!r} registered twice")
        POLICIES[name] = fn
        return fn
    return deco


@policy("constant")
def _constant(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    return s.learning_rate


@policy("step")
def _step(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    return _f(s.learning_rate * _pow(s.scale, b // s.step))


@policy("steps")
def _steps(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    rate = f32(s.learning_rate)
    for step, scale in zip(s.steps, s.scales):
        if step < 0 and s.dialect == "pjreddie":
            step += _SIZE_T  # compared as size_t: never reached
        if step > b:
            break
        rate = rate * f32(scale)
    return float(rate)


@policy("exp")
def _exp_policy(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    return _f(s.learning_rate * _pow(s.gamma, b))


@policy("poly")
def _poly(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    base = f32(1) - f32(b) / f32(s.max_batches)
    return _f(s.learning_rate * _pow(float(base), s.power))


@policy("sigmoid")
def _sigmoid(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    diff = b - s.step
    if diff < 0 and s.dialect == "pjreddie":
        diff += _SIZE_T  # size_t arithmetic in pjreddie's get_current_rate
    arg = f32(s.gamma) * f32(diff)
    return _f(s.learning_rate * (1.0 / (1.0 + _exp(float(arg)))))


@policy("random")
def _random(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    return _f(s.learning_rate * _pow(float(f32(rng())), s.power))


@policy("sgdr")
def _sgdr(s: LRSchedule, b: int, rng: Callable[[], float]) -> float:
    start, cycle = 0, s.sgdr_cycle
    while start + cycle < b:
        start += cycle
        cycle *= s.sgdr_mult
    spread = float(f32(s.learning_rate) - f32(s.learning_rate_min))
    phase = float(f32(b - start)) * 3.14159265 / cycle
    return _f(s.learning_rate_min + 0.5 * spread * (1.0 + math.cos(phase)))


def get_lr(batch_num: int, schedule: LRSchedule | Section, dialect: str | None = None,
           rng: Callable[[], float] | None = None) -> float:
    """Darknet's learning rate at ``batch_num`` (a float32 value).

    ``schedule`` is an :class:`LRSchedule` or a typed [net] section (then
    ``dialect`` is required).  ``rng`` draws the uniform number of
    ``policy=random`` (default :func:`random.random`).
    """
    if isinstance(schedule, Section):
        if dialect is None:
            raise ValueError("get_lr(batch_num, section) needs the dialect")
        schedule = LRSchedule.from_net(schedule, dialect)
    b = int(batch_num)
    if b < 0:
        raise ValueError(f"batch_num must be >= 0, got {batch_num}")
    if b < schedule.burn_in:
        base = f32(b) / f32(schedule.burn_in)
        return _f(schedule.learning_rate * _pow(float(base), schedule.power))
    return POLICIES[schedule.policy](schedule, b, rng or random.random)


def check_net_keys(net: Section, dialect: str) -> None:
    """Raise a CfgError for [net] training keys darknet_py cannot honour exactly."""
    if int(net.get("adam", 0)):
        raise CfgError("[net] adam=1: darknet_py trains with darknet's SGD only (darknet's CPU "
                       "build has no Adam either)", net.file, net.line_of("adam"))
