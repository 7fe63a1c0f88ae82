"""darknet's learning-rate schedule (``get_current_rate``), every policy.

Expected values are worked out here from darknet's C expressions: the [net]
numbers are C floats (np.float32), ``pow``/``exp``/``cos`` run in double and
the result is stored in a float.  The train cases' rates come from darknet.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from darknet_py import CfgError, parse_cfg
from darknet_py.train import LRSchedule, get_lr
from tests.conftest import manifest_or_empty

f32 = np.float32
LAYER = "[convolutional]\nfilters=1\nsize=1\nactivation=linear\n"


def schedule(net_lines: str, dialect: str = "pjreddie") -> LRSchedule:
    cfg = parse_cfg(f"[net]\nwidth=32\nheight=32\nchannels=3\n{net_lines}\n{LAYER}",
                    dialect=dialect, name="sched.cfg")
    return LRSchedule.from_net(cfg.net, dialect)


def c_float(x: float) -> float:
    return float(f32(x))


LR = c_float(0.001)  # learning_rate=0.001 as darknet's float


def test_burn_in_power() -> None:
    s = schedule("learning_rate=0.001\nburn_in=1000\npolicy=constant")
    # (float)500/1000 = 0.5; pow(0.5, 4) = 0.0625 in double; times the float lr
    assert get_lr(500, s) == c_float(LR * 0.0625)
    assert get_lr(0, s) == 0.0
    b = float(f32(1) / f32(3))        # (float)1/3 rounded to float first
    s3 = schedule("learning_rate=0.001\nburn_in=3\npower=2\npolicy=constant")
    assert get_lr(1, s3) == c_float(LR * b * b)
    # batch_num == burn_in is no longer in burn-in (strict <)
    assert get_lr(1000, s) == LR
    assert get_lr(999, s) == c_float(LR * (float(f32(999) / f32(1000)) ** 4))


def test_constant() -> None:
    s = schedule("learning_rate=0.01\npolicy=constant")
    assert get_lr(0, s) == get_lr(12345, s) == c_float(0.01)


def test_step() -> None:
    s = schedule("learning_rate=0.1\npolicy=step\nstep=100\nscale=0.5")
    assert get_lr(99, s) == c_float(0.1)
    assert get_lr(250, s) == c_float(c_float(0.1) * 0.25)   # 250//100 = 2 halvings
    assert get_lr(1000, s) == c_float(c_float(0.1) * 0.5 ** 10)


def test_steps_float32_chain_and_boundary() -> None:
    s = schedule("learning_rate=0.01\npolicy=steps\nsteps=100,200,300\nscales=.1,.1,10")
    lr, tenth = f32(0.01), f32(0.1)
    assert get_lr(99, s) == float(lr)
    assert get_lr(100, s) == float(lr * tenth)           # steps[i] > batch_num is strict
    assert get_lr(250, s) == float(lr * tenth * tenth)   # multiplied in float32, in order
    assert get_lr(300, s) == float(lr * tenth * tenth * f32(10))
    assert get_lr(300, s) != c_float(0.01)              # 0.01*0.1*0.1*10 is not 0.01 in float32


def test_exp() -> None:
    s = schedule("learning_rate=0.01\npolicy=exp\ngamma=0.99")
    g = float(f32(0.99))
    assert get_lr(10, s) == c_float(c_float(0.01) * g ** 10)


def test_poly() -> None:
    s = schedule("learning_rate=0.01\npolicy=poly\nmax_batches=1000\npower=2")
    # 1 - (float)250/1000 = 0.75 exactly
    assert get_lr(250, s) == c_float(c_float(0.01) * 0.75 ** 2)
    base = float(f32(1) - f32(333) / f32(1000))
    assert get_lr(333, s) == c_float(c_float(0.01) * base ** 2)
    assert get_lr(1000, s) == 0.0


def test_sigmoid_both_dialects() -> None:
    lines = "learning_rate=0.01\npolicy=sigmoid\ngamma=0.1\nstep=50"
    for dialect in ("pjreddie", "alexeyab"):
        s = schedule(lines, dialect)
        arg = float(f32(0.1) * f32(10))                  # gamma*(60-50) in float
        assert get_lr(60, s) == c_float(c_float(0.01) * (1.0 / (1.0 + math.exp(arg))))
    ab = schedule(lines, "alexeyab")
    arg = float(f32(0.1) * f32(-10))
    assert get_lr(40, ab) == c_float(c_float(0.01) / (1.0 + math.exp(arg)))
    # pjreddie's batch_num is a size_t: 40 - 50 wraps to 2^64 - 10, exp overflows, rate 0
    assert get_lr(40, schedule(lines, "pjreddie")) == 0.0


def test_random_uses_the_rng() -> None:
    s = schedule("learning_rate=0.01\npolicy=random\npower=2")
    assert get_lr(7, s, rng=lambda: 0.5) == c_float(c_float(0.01) * 0.25)


def test_sgdr_alexeyab() -> None:
    s = schedule("learning_rate=0.01\nlearning_rate_min=0.001\npolicy=sgdr\nmax_batches=100",
                 "alexeyab")
    assert s.sgdr_cycle == 100 and s.sgdr_mult == 2      # cycle defaults to max_batches
    lr, lo = c_float(0.01), c_float(0.001)
    spread = float(f32(0.01) - f32(0.001))

    def expect(b: int, start: int, cycle: int) -> float:
        return c_float(lo + 0.5 * spread * (1 + math.cos((b - start) * 3.14159265 / cycle)))

    assert get_lr(0, s) == lr
    assert get_lr(50, s) == expect(50, 0, 100)
    assert get_lr(100, s) == expect(100, 0, 100)         # (0 + 100) < 100 is false: end of cycle 1
    assert abs(get_lr(100, s) - lo) < 1e-9
    assert get_lr(150, s) == expect(150, 100, 200)       # second cycle is twice as long
    s2 = schedule("learning_rate=0.01\npolicy=sgdr\nmax_batches=100\nsgdr_cycle=10\nsgdr_mult=1",
                  "alexeyab")
    assert get_lr(25, s2) == c_float(c_float(1e-5) + 0.5 * float(f32(0.01) - f32(1e-5))
                                     * (1 + math.cos(5 * 3.14159265 / 10)))


@pytest.mark.parametrize("lines, key, match", [
    ("policy=cosine", "policy", "unknown learning-rate policy='cosine'"),
    ("policy=steps\nsteps=100", "policy", "needs both steps= and scales="),
    ("policy=steps\nsteps=100,200\nscales=.1", "scales", "steps= has 2 entries but scales= only 1"),
    ("policy=poly", "max_batches", "needs max_batches > 0"),
])
def test_bad_schedules_name_file_and_line(lines: str, key: str, match: str) -> None:
    with pytest.raises(CfgError, match=match) as info:
        schedule(lines)
    assert info.value.file == "sched.cfg"
    text = f"[net]\nwidth=32\nheight=32\nchannels=3\n{lines}\n"
    expected_line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(key + "=")) \
        if key + "=" in text else 1
    assert info.value.line == expected_line


def test_sgdr_is_alexeyab_only() -> None:
    with pytest.raises(CfgError, match="pjreddie"):
        schedule("policy=sgdr\nmax_batches=10", "pjreddie")


def test_rates_are_float32_values() -> None:
    s = schedule("learning_rate=0.00261\nburn_in=1000\npolicy=steps\nsteps=400000,450000\n"
                 "scales=.1,.1")
    for b in (0, 1, 17, 999, 1000, 400000, 460000):
        r = get_lr(b, s)
        assert r == float(f32(r))


_TRAIN = manifest_or_empty().get("train_cases", {}).get("cases", {})


@pytest.mark.parametrize("name", sorted(_TRAIN))
def test_train_case_rates_are_darknets(name: str, conformance, manifest) -> None:
    case = manifest["train_cases"]["cases"][name]
    cfg = parse_cfg(conformance / case["cfg"])
    s = LRSchedule.from_net(cfg.net, cfg.dialect)
    for step in case["schedule"]:
        assert get_lr(step["batch_num"], s) == float(f32(step["learning_rate"]))
