"""Every activation of both darknets against an independent numpy transcription of the
C expression in each dialect's arithmetic (pjreddie: double literals, so the
expression is evaluated in float64 and rounded once; AlexeyAB: float literals,
float32 throughout), plus values worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from darknet_py.activations import ACTIVATIONS, CHANNELWISE, get_activation

F32 = np.float32
F64 = np.float64

# The names each darknet's get_activation() accepts (transcribed from activations.c).
PJ_NAMES = {"logistic", "loggy", "relu", "elu", "selu", "relie", "plse", "hardtan", "lhtan",
            "linear", "ramp", "leaky", "tanh", "stair"}
AB_NAMES = PJ_NAMES | {"swish", "mish", "hard_mish", "normalize_channels",
                       "normalize_channels_softmax", "normalize_channels_softmax_maxval",
                       "relu6", "gelu", "revleaky"}


def _grid() -> np.ndarray:
    special = [-1e30, -1000, -400, -100, -90, -88.5, -30, -20.5, -20, -19.9, -6, -4.0001, -4,
               -3.9999, -2.5, -2, -1.9999, -1.5, -1, -0.75, -0.5, -0.25, -1e-6, 0.0, 1e-6, 0.25,
               0.5, 0.75, 1, 1.0001, 1.5, 2, 2.5, 3, 3.5, 4, 4.0001, 5.9999, 6, 6.0001, 19.9, 20,
               20.5, 30, 88.5, 90, 100, 354, 356, 400, 710, 1000, 1e30]
    rng = np.random.default_rng(1234)
    return np.concatenate([np.linspace(-12, 12, 4801), rng.standard_normal(3000) * 8,
                           special]).astype(F32)


X = _grid()


def _m(cond: np.ndarray) -> np.ndarray:
    return cond.astype(F32)


# ------------------------------------------------------------ pjreddie oracles (double math)

def _pj(fn):
    def run(x):
        with np.errstate(all="ignore"):
            return fn(x).astype(F32)
    return run


PJ = {
    "linear": lambda x: x,
    "logistic": _pj(lambda x: 1.0 / (1.0 + np.exp(-x.astype(F64)))),
    "loggy": _pj(lambda x: 2.0 / (1.0 + np.exp(-x.astype(F64))) - 1),
    "relu": lambda x: x * _m(x > 0),
    "elu": _pj(lambda x: (x >= 0) * x.astype(F64) + (x < 0) * (np.exp(x.astype(F64)) - 1)),
    "selu": _pj(lambda x: (x >= 0) * 1.0507 * x.astype(F64)
                + (x < 0) * 1.0507 * 1.6732 * (np.exp(x.astype(F64)) - 1)),
    "relie": _pj(lambda x: np.where(x > 0, x.astype(F64), 0.01 * x.astype(F64))),
    "ramp": _pj(lambda x: (x * _m(x > 0)).astype(F64) + 0.1 * x.astype(F64)),
    "leaky": _pj(lambda x: np.where(x > 0, x.astype(F64), 0.1 * x.astype(F64))),
    # exp(2*x): 2*x is int*float, a float product
    "tanh": _pj(lambda x: (np.exp((2 * x).astype(F64)) - 1) / (np.exp((2 * x).astype(F64)) + 1)),
    "plse": _pj(lambda x: np.where(x < -4, 0.01 * (x + F32(4)).astype(F64),
                                   np.where(x > 4, 0.01 * (x - F32(4)).astype(F64) + 1,
                                            0.125 * x.astype(F64) + 0.5))),
    "hardtan": lambda x: np.where(x < -1, F32(-1), np.where(x > 1, F32(1), x)),
    "lhtan": _pj(lambda x: np.where(x < 0, 0.001 * x.astype(F64),
                                    np.where(x > 1, 0.001 * (x - F32(1)).astype(F64) + 1,
                                             x.astype(F64)))),
}


def _stair_oracle(x: np.ndarray, double: bool) -> np.ndarray:
    out = np.empty_like(x)
    for i, v in enumerate(x.tolist()):
        v32 = F32(v)
        n = int(np.floor(v32))
        half = np.floor(F64(v32) / 2.0) if double else np.floor(v32 / F32(2))
        if n % 2 == 0:                  # C's n%2 == 0: the same parity test
            out[i] = F32(half)
        elif double:
            out[i] = F32(F64(v32 - F32(n)) + half)
        else:
            out[i] = (v32 - F32(n)) + F32(half)
    return out


PJ["stair"] = lambda x: _stair_oracle(x, double=True)


# ------------------------------------------------------------ AlexeyAB oracles (float math)

def _ab(fn):
    def run(x):
        with np.errstate(all="ignore"):
            out = fn(x)
        assert out.dtype == F32, out.dtype
        return out
    return run


def _softplus(x):
    return np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log(np.exp(x) + F32(1))))


def _tanh_ab(x):
    return F32(2) / (F32(1) + np.exp(F32(-2) * x)) - F32(1)


def _logistic_ab(x):
    return F32(1) / (F32(1) + np.exp(-x))


AB = {
    "linear": lambda x: x,
    "logistic": _ab(_logistic_ab),
    "loggy": _ab(lambda x: F32(2) / (F32(1) + np.exp(-x)) - F32(1)),
    "relu": _ab(lambda x: x * _m(x > 0)),
    "relu6": _ab(lambda x: np.where(np.where(x > 0, x, F32(0)) < 6,
                                    np.where(x > 0, x, F32(0)), F32(6))),
    "elu": _ab(lambda x: _m(x >= 0) * x + _m(x < 0) * (np.exp(x) - F32(1))),
    "selu": _ab(lambda x: (_m(x >= 0) * F32(1.0507)) * x
                + ((_m(x < 0) * F32(1.0507)) * F32(1.6732)) * (np.exp(x) - F32(1))),
    "gelu": _ab(lambda x: (0.5 * x.astype(F64) * (F32(1) + np.tanh(
        (0.797885 * x.astype(F64) + 0.035677 * np.power(x, F32(3)).astype(F64)).astype(F32))
    ).astype(F64)).astype(F32)),
    "relie": _ab(lambda x: np.where(x > 0, x, F32(0.01) * x)),
    "ramp": _ab(lambda x: x * _m(x > 0) + F32(0.1) * x),
    "leaky": _ab(lambda x: np.where(x > 0, x, F32(0.1) * x)),
    "revleaky": _ab(lambda x: np.where(x > 0, x, F32(0.1) * x)),
    "tanh": _ab(_tanh_ab),
    "plse": _ab(lambda x: np.where(x < -4, F32(0.01) * (x + F32(4)),
                                   np.where(x > 4, F32(0.01) * (x - F32(4)) + F32(1),
                                            F32(0.125) * x + F32(0.5)))),
    "hardtan": PJ["hardtan"],
    "lhtan": _ab(lambda x: np.where(x < 0, F32(0.001) * x,
                                    np.where(x > 1, F32(0.001) * (x - F32(1)) + F32(1), x))),
    "stair": lambda x: _stair_oracle(x, double=False),
    "swish": _ab(lambda x: x * _logistic_ab(x)),
    "mish": _ab(lambda x: x * _tanh_ab(_softplus(x))),
    "hard_mish": _ab(lambda x: np.where(x > 0, x, np.where(x > -2, x * x / F32(2) + x, F32(0)))),
}

# formulas with exp/log/tanh: numpy's and torch's float32 libm may differ by an ulp,
# which cancellations (tanh near 0, x*... for large x) scale up
EXP_BASED = {"logistic", "loggy", "elu", "selu", "tanh", "swish", "mish", "gelu"}


def _inputs(name: str) -> np.ndarray:
    # stair's int n = floor(x) is undefined in C beyond the int range
    return X[np.abs(X) < 1e6] if name == "stair" else X


def _ours(dialect: str, name: str, x: np.ndarray) -> np.ndarray:
    return get_activation(name, dialect)(torch.from_numpy(x.copy())).numpy()


def _compare(ours: np.ndarray, ref: np.ndarray, x: np.ndarray, exact: bool, what: str) -> None:
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{what}: NaN positions")
    ok = ~np.isnan(ref)
    if exact:
        np.testing.assert_array_equal(ours[ok], ref[ok], err_msg=what)
        return
    a, b, xs = ours[ok].astype(F64), ref[ok].astype(F64), np.abs(x[ok].astype(F64))
    both_inf = np.isinf(a) & np.isinf(b) & (a == b)
    tol = 4 * np.spacing(np.abs(b).astype(F32)).astype(F64) + 4e-7 * np.minimum(xs + 1, 1e3)
    bad = ~both_inf & ~(np.abs(a - b) <= tol)
    assert not bad.any(), (f"{what}: first mismatch at x={x[ok][bad][0]!r}: ours {a[bad][0]!r}, "
                           f"darknet {b[bad][0]!r}")


@pytest.mark.parametrize("name", sorted(PJ))
def test_pjreddie_formula(name):
    x = _inputs(name)
    ours, ref = _ours("pjreddie", name, x), PJ[name](x)
    if name in EXP_BASED:
        # both exps are float64 calls (torch's vectorised one, numpy's libm) a few double
        # ulps apart; near 0, exp(x) - 1 cancels and scales that up past a float ulp, and
        # which exp torch runs on an element depends on the buffer's alignment.  For
        # |x| >= 0.5 nothing cancels: the float roundings of the two double results differ
        # only within ~2^-28 relative of a float rounding boundary, i.e. almost never.
        # That they agree there is what shows the formula runs in double (in float
        # the results would differ by an ulp on a large share of the inputs).
        _compare(ours, ref, x, exact=False, what=f"pjreddie {name}")
        far = ~np.isnan(ref) & (np.abs(x) >= 0.5)
        assert np.mean(ours[far] == ref[far]) > 0.999
    else:
        _compare(ours, ref, x, exact=True, what=f"pjreddie {name}")


@pytest.mark.parametrize("name", sorted(AB))
def test_alexeyab_formula(name):
    x = _inputs(name)
    _compare(_ours("alexeyab", name, x), AB[name](x), x, exact=name not in EXP_BASED,
             what=f"alexeyab {name}")


def test_names_are_the_get_activation_lists():
    assert set(ACTIVATIONS["pjreddie"]) == PJ_NAMES
    assert set(ACTIVATIONS["alexeyab"]) == AB_NAMES
    assert set(PJ) == PJ_NAMES and set(AB) | CHANNELWISE == AB_NAMES
    with pytest.raises(KeyError):
        get_activation("mish", "pjreddie")


def test_hand_values():
    def f(d, name, *v):
        return get_activation(name, d)(torch.tensor(v, dtype=torch.float32)).tolist()

    # stair: n = floor(x); even -> floor(x/2); odd -> (x - n) + floor(x/2)
    for d in ("pjreddie", "alexeyab"):
        assert f(d, "stair", 2.5, 3.5, -0.5, -1.5, 0.25, 1.25) == [1.0, 1.5, -0.5, -1.0, 0.0, 0.25]
        assert f(d, "hardtan", -3, -1, 0.5, 7) == [-1, -1, 0.5, 1]
        assert f(d, "relu", -2, 3) == [0, 3]
    assert f("alexeyab", "hard_mish", -3, -1, 0, 2) == [0, -0.5, 0, 2]
    assert f("alexeyab", "relu6", -1, 3, 9) == [0, 3, 6]
    assert f("alexeyab", "plse", -5, 0, 8) == pytest.approx([-0.01, 0.5, 1.04], abs=1e-7)
    assert f("pjreddie", "lhtan", -1, 0.5, 2) == pytest.approx([-0.001, 0.5, 1.001], abs=1e-7)
    assert f("pjreddie", "selu", 1) == [float(F32(1.0507))]
    assert f("pjreddie", "ramp", 2, -2) == [float(F32(2.2)), float(F32(-0.2))]
    # leaky differs between the dialects by one ulp on ~20% of inputs: 0.1*x in double, rounded,
    # against 0.1f*x in float
    x = -9.470809936523438  # a float32
    assert f("pjreddie", "leaky", x) == [float(F32(0.1 * x))] == [-0.9470809698104858]
    assert f("alexeyab", "leaky", x) == [float(F32(0.1) * F32(x))] == [-0.9470810294151306]
    assert f("alexeyab", "leaky", x) != f("pjreddie", "leaky", x)


def test_overflow_quirks():
    """darknet's (x>=0)*x + (x<0)*(exp(x)-1) is NaN once exp overflows; pjreddie's tanh is
    (e-1)/(e+1), NaN once exp(2x) overflows a double."""
    def f(d, name, v):
        return get_activation(name, d)(torch.tensor([v], dtype=torch.float32)).item()

    assert np.isnan(f("alexeyab", "elu", 100.0)) and f("pjreddie", "elu", 100.0) == 100.0
    assert np.isnan(f("pjreddie", "elu", 1000.0))
    assert np.isnan(f("pjreddie", "tanh", 400.0)) and f("alexeyab", "tanh", 400.0) == 1.0
    assert f("pjreddie", "tanh", 300.0) == 1.0
    assert f("alexeyab", "mish", 30.0) == 30.0  # softplus threshold 20: x itself


def _norm_oracle(x: np.ndarray, kind: str) -> np.ndarray:
    """activate_array_normalize_channels[_softmax], loop by loop (float32)."""
    b_, c_, h_, w_ = x.shape
    out = np.zeros_like(x)
    eps = F32(0.0001)
    with np.errstate(all="ignore"):
        for b in range(b_):
            for i in range(h_ * w_):
                y, xx = divmod(i, w_)
                vals = x[b, :, y, xx]
                if kind == "normalize_channels":
                    s = eps
                    for v in vals:
                        if v > 0:
                            s = F32(s + v)
                    for k, v in enumerate(vals):
                        out[b, k, y, xx] = v / s if v > 0 else F32(0)
                    continue
                mx = F32(0)
                if kind.endswith("maxval"):
                    mx = vals[0]
                    for v in vals:
                        mx = v if v > mx else mx
                s = eps
                for v in vals:
                    s = F32(s + np.exp(F32(v - mx)))
                for k, v in enumerate(vals):
                    out[b, k, y, xx] = np.exp(F32(v - mx)) / s
    return out


@pytest.mark.parametrize("name", sorted(CHANNELWISE))
def test_normalize_channels(name):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((2, 5, 3, 4)) * 3).astype(F32)
    ours = get_activation(name, "alexeyab")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _norm_oracle(x, name), rtol=2e-6, atol=1e-7)


def test_normalize_channels_by_hand():
    x = torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    got = get_activation("normalize_channels", "alexeyab")(x).flatten().tolist()
    assert got == pytest.approx([1 / 3.0001, 2 / 3.0001, 0.0], rel=1e-6)
    # softmax WITHOUT the max subtracted: exp(100) overflows float, so darknet gives
    # inf/inf = NaN and 1/inf = 0; the _maxval variant subtracts the max and stays finite
    big = torch.tensor([100.0, 0.0]).view(1, 2, 1, 1)
    no_max = get_activation("normalize_channels_softmax", "alexeyab")(big).flatten()
    assert torch.isnan(no_max[0]) and no_max[1].item() == 0.0
    mv = get_activation("normalize_channels_softmax_maxval", "alexeyab")(big).flatten()
    assert mv.tolist() == pytest.approx([1 / 1.0001, 0.0], rel=1e-6, abs=1e-30)
    small = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    assert get_activation("normalize_channels_softmax", "alexeyab")(small).flatten().tolist() == \
        pytest.approx([1 / 2.0001, 1 / 2.0001], rel=1e-6)


def test_pjreddie_leaky_gradient_is_darknets():
    """leaky_gradient(y) = (y > 0) ? 1 : .1, applied to the delta in double: g where the
    output is positive, (float)(.1 * g) elsewhere, x == 0 included (autograd of max(x, x/10)
    would give 0.55 g there)."""
    x = torch.tensor([-3.0, -1e-30, 0.0, 1e-30, 2.5], requires_grad=True)
    g = torch.tensor([0.7, 1.3, 1.0, -2.0, 0.3])
    ACTIVATIONS["pjreddie"]["leaky"](x).backward(g)
    want = [float(np.float32(0.1 * float(np.float32(v)))) for v in g[:3].tolist()] + g[3:].tolist()
    assert x.grad.tolist() == want
