"""[rnn], [gru], [lstm] of both darknets.

The forward is compared with a float32 numpy transcription of darknet's CPU
forward (``forward_rnn_layer`` / ``forward_gru_layer`` / ``forward_lstm_layer``
and ``forward_connected_layer`` of each fork, with their state buffers kept
between calls), over two inference calls (the state carries over) and two
training calls (batch-statistics BN, rolling updates; [rnn] restarts from a
zero state).  Weights files are built by hand in darknet's order
(``save_connected_weights`` per sub-layer, ``load_weights_upto``'s sub-layer
order of each fork) and must land in the right tensors and save back byte for
byte; the zoo's recurrent cfgs build, run and round-trip their weights.
"""
from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

from darknet_py import Darknet
from darknet_py.errors import CfgError, UnsupportedLayerError
from darknet_py.layers.recurrent import GRU, LSTM, RNN
from darknet_py.train.darknet_grad import install

from tests.conftest import CONFORMANCE

F32 = np.float32
DIALECTS = ("pjreddie", "alexeyab")
STEPS, SEQS, INPUTS, OUTPUTS = 3, 2, 5, 4


# ----------------------------------------------------------------- cfgs

def cfg_text(kind: str, dialect: str, steps: int = STEPS, **opts) -> str:
    """A [net] of ``INPUTS`` inputs and one recurrent layer (``opts`` = its options)."""
    opts = {"output": OUTPUTS, **opts}   # output= on the line after the header
    body = "".join(f"{k}={v}\n" for k, v in opts.items())
    return f"[net]\ninputs={INPUTS}\nbatch={steps * SEQS}\ntime_steps={steps}\n\n[{kind}]\n{body}"


# (kind, dialect, options): both values of every option that changes the forward
CASES = [
    ("rnn", "pjreddie", {"activation": "leaky"}),
    ("rnn", "pjreddie", {"activation": "tanh", "batch_normalize": 1, "shortcut": 1}),
    ("rnn", "alexeyab", {"activation": "leaky", "hidden": 3}),
    ("rnn", "alexeyab", {"activation": "leaky", "hidden": 6, "batch_normalize": 1, "shortcut": 1,
                         "logistic": 1}),
    ("rnn", "alexeyab", {"activation": "tanh", "hidden": 3, "batch_normalize": 1, "logistic": 2}),
    ("gru", "pjreddie", {}),
    ("gru", "pjreddie", {"batch_normalize": 1, "tanh": 1}),
    ("gru", "alexeyab", {}),
    ("gru", "alexeyab", {"batch_normalize": 1}),
    ("lstm", "pjreddie", {}),
    ("lstm", "pjreddie", {"batch_normalize": 1}),
    ("lstm", "alexeyab", {}),
    ("lstm", "alexeyab", {"batch_normalize": 1}),
]
CASE_IDS = [f"{k}-{d}-" + ",".join(f"{a}={b}" for a, b in o.items()) for k, d, o in CASES]


def randomize_(model: Darknet, seed: int = 0) -> None:
    """Random weights, biases, BN scales and rolling statistics (variance > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith(("rolling_variance", "scales")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("weights", "biases", "rolling_mean")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.6)


# ----------------------------------------------------------------- darknet in numpy (float32)

def _dbl(fn):
    """A pjreddie activation: a double expression rounded to float once."""
    return lambda x: fn(x.astype(np.float64)).astype(F32)


ACT = {
    "pjreddie": {
        "linear": lambda x: x,
        "logistic": _dbl(lambda x: 1.0 / (1.0 + np.exp(-x))),
        "loggy": _dbl(lambda x: 2.0 / (1.0 + np.exp(-x)) - 1.0),
        "tanh": _dbl(lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1)),
        "leaky": _dbl(lambda x: np.where(x > 0, x, 0.1 * x)),
    },
    "alexeyab": {
        "linear": lambda x: x,
        "logistic": lambda x: F32(1) / (F32(1) + np.exp(-x)),
        "loggy": lambda x: F32(2) / (F32(1) + np.exp(-x)) - F32(1),
        "tanh": lambda x: F32(2) / (F32(1) + np.exp(F32(-2) * x)) - F32(1),
        "leaky": lambda x: np.where(x > 0, x, F32(0.1) * x),
    },
}
#: (on the rolling value, on the batch statistic) of a [connected] layer's BN update
ROLL = {"pjreddie": (F32(0.99), F32(0.01)), "alexeyab": (F32(0.95), F32(0.05))}


def connected(p: dict, x: np.ndarray, act: str, train: bool, dialect: str) -> np.ndarray:
    """forward_connected_layer on ``x[batch][inputs]``; updates ``p``'s rolling statistics."""
    out = (x @ p["weights"].T).astype(F32)
    if "scales" in p:
        if train:
            n = out.shape[0]
            mean = (out.sum(0, dtype=F32) * F32(1.0 / n)).astype(F32)
            var = (((out - mean) ** 2).sum(0, dtype=F32) / F32(n - 1)).astype(F32)
            a, b = ROLL[dialect]
            p["rolling_mean"] = (p["rolling_mean"] * a + b * mean).astype(F32)
            p["rolling_variance"] = (p["rolling_variance"] * a + b * var).astype(F32)
        else:
            mean, var = p["rolling_mean"], p["rolling_variance"]
        if dialect == "pjreddie":   # (x - mean)/(sqrt(var) + .000001f), a double expression
            out = ((out - mean) / (np.sqrt(var.astype(np.float64)) + float(F32(1e-6)))).astype(F32)
        else:                       # (x - mean)/sqrtf(var + .00001f)
            out = (out - mean) / np.sqrt(var + F32(1e-5))
        out = out * p["scales"]
    return ACT[dialect][act](out + p["biases"]).astype(F32)


def params(layer) -> dict[str, dict[str, np.ndarray]]:
    """Each sub-layer's tensors as numpy copies."""
    subs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in layer.darknet_tensors():
        sub, field = name.split(".")
        subs.setdefault(sub, {})[field] = t.detach().numpy().copy()
    return subs


class DarknetRef:
    """The C forwards, written as loops over darknet's buffers (``mem``: the layer's
    own state buffers, kept between calls like darknet's ``l.state``/``l.h_cpu``)."""

    def __init__(self, kind: str, dialect: str, opts: dict, p: dict, steps: int):
        self.kind, self.dialect, self.opts, self.p, self.steps = kind, dialect, opts, p, steps
        self.mem: dict[str, np.ndarray] = {}

    def __call__(self, x: np.ndarray, train: bool) -> np.ndarray:
        batch = x.shape[0] // self.steps
        return getattr(self, self.kind)(x.reshape(x.shape[0], -1), batch, train)

    def _buf(self, name: str, batch: int, size: int) -> np.ndarray:
        if name not in self.mem:
            self.mem[name] = np.zeros((batch, size), F32)   # calloc in make_*_layer
        return self.mem[name]

    def rnn(self, x, batch, train):
        o, d, p = self.opts, self.dialect, self.p
        hidden = o["hidden"] if d == "alexeyab" else o["output"]
        act = o.get("activation", "logistic")
        self_act = {1: "logistic", 2: "loggy"}.get(o.get("logistic", 0) if d == "alexeyab" else 0, act)
        base = self._buf("state", batch, hidden)
        if train:
            base[:] = 0
        slots = [base]          # training: l.state moves to a new slot every step
        state = base
        outs = []
        for i in range(self.steps):
            xi = x[i * batch:(i + 1) * batch]
            inp = connected(p["input_layer"], xi, act, train, d)
            slf = connected(p["self_layer"], state, self_act, train, d)
            old = state
            if train:
                state = np.empty_like(old)
                slots.append(state)
            if o.get("shortcut", 0):
                state[:] = old
            else:
                state[:] = 0
            state += inp
            state += slf
            outs.append(connected(p["output_layer"], state, act, train, d))
        return np.concatenate(outs)

    def gru(self, x, batch, train):
        o, d, p = self.opts, self.dialect, self.p
        n = o["output"]
        state = self._buf("state", batch, n)
        h_act = "tanh" if d == "pjreddie" and o.get("tanh", 0) else "logistic"
        outs = []
        for i in range(self.steps):
            xi = x[i * batch:(i + 1) * batch]
            wz = connected(p["wz"], state, "linear", train, d)
            wr = connected(p["wr"], state, "linear", train, d)
            uz = connected(p["uz"], xi, "linear", train, d)
            ur = connected(p["ur"], xi, "linear", train, d)
            uh = connected(p["uh"], xi, "linear", train, d)
            z = ACT[d]["logistic"](uz + wz)
            r = ACT[d]["logistic"](ur + wr)
            forgot = state * r
            wh = connected(p["wh"], forgot, "linear", train, d)
            h = ACT[d][h_act](uh + wh)
            out = (z * state + (F32(1) - z) * h).astype(F32)     # weighted_sum_cpu
            state[:] = out
            outs.append(out)
        return np.concatenate(outs)

    def lstm(self, x, batch, train):
        d, p = self.dialect, self.p
        n = self.opts["output"]
        h, c = self._buf("h_cpu", batch, n), self._buf("c_cpu", batch, n)
        outs = []
        for i in range(self.steps):
            xi = x[i * batch:(i + 1) * batch]
            w = {g: connected(p["w" + g], h, "linear", train, d) for g in "figo"}
            u = {g: connected(p["u" + g], xi, "linear", train, d) for g in "figo"}
            f = ACT[d]["logistic"](w["f"] + u["f"])
            ig = ACT[d]["logistic"](w["i"] + u["i"])
            g = ACT[d]["tanh"](w["g"] + u["g"])
            og = ACT[d]["logistic"](w["o"] + u["o"])
            temp = ig * g
            c *= f
            c += temp
            h[:] = ACT[d]["tanh"](c) * og
            outs.append(h.copy())
        return np.concatenate(outs)


def close(ours: torch.Tensor, ref: np.ndarray, what: str) -> None:
    got = ours.detach().reshape(ref.shape).numpy()
    err = np.abs(got - ref) / (1 + np.abs(ref))
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() < 1e-5, (f"{what}: first worst difference at {worst}: ours {got[worst]!r}, "
                              f"darknet {ref[worst]!r}")


# ----------------------------------------------------------------- forward = darknet's

@pytest.mark.parametrize("kind,dialect,opts", CASES, ids=CASE_IDS)
def test_forward_matches_darknet_loop(kind, dialect, opts):
    model = Darknet(cfg_text(kind, dialect, **opts), dialect=dialect)
    randomize_(model)
    layer = model.module_list[0]
    ref = DarknetRef(kind, dialect, {"output": OUTPUTS, **opts}, params(layer), STEPS)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(STEPS * SEQS, INPUTS, 1, 1, generator=g) for _ in range(4)]
    model.eval()
    with torch.no_grad():
        for k in range(2):   # the state of call 1 feeds call 2
            close(model(xs[k])[0], ref(xs[k].numpy(), train=False), f"inference call {k + 1}")
    model.train()
    for k in range(2, 4):
        close(model(xs[k])[0], ref(xs[k].numpy(), train=True), f"training call {k - 1}")
    for sub, tensors in params(layer).items():   # rolling statistics after the training calls
        for name in ("rolling_mean", "rolling_variance"):
            if name in tensors:
                close(torch.from_numpy(tensors[name]), ref.p[sub][name], f"{sub}.{name}")
    for name, buf in (("state", "state"), ("state", "h_cpu"), ("cell", "c_cpu")):
        if buf in ref.mem:
            close(getattr(layer, name), ref.mem[buf], f"carried {name}")


def test_rnn_state_carries_in_inference_and_restarts_in_training():
    model = Darknet(cfg_text("rnn", "pjreddie", activation="tanh"), dialect="pjreddie")
    randomize_(model)
    layer = model.module_list[0]
    x = torch.randn(STEPS * SEQS, INPUTS, 1, 1)
    model.eval()
    with torch.no_grad():
        first, second = model(x)[0], model(x)[0]
    assert not torch.equal(first, second)            # the state carried over
    assert layer.state.shape == (SEQS, OUTPUTS) and layer.state.abs().sum() > 0
    layer.reset_state()
    with torch.no_grad():
        assert torch.equal(model(x)[0], first)
    model.train()
    a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b) and torch.equal(a, first)   # every training call starts from zero
    assert layer.state.abs().sum() == 0                  # ... and leaves the state zero


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gru_lstm_state_carries_in_training_too(kind):
    model = Darknet(cfg_text(kind, "alexeyab"), dialect="alexeyab").train()
    randomize_(model)
    x = torch.randn(STEPS * SEQS, INPUTS, 1, 1)
    assert not torch.equal(model(x)[0], model(x)[0])
    model.module_list[0].reset_state()
    model.eval()
    with torch.no_grad():
        y = model(x)[0]
    model.module_list[0].reset_state()
    model.train()
    assert torch.equal(model(x)[0], y)   # no BN: training and inference agree from the same state


def test_batch_size_change_restarts_the_state():
    model = Darknet(cfg_text("lstm", "pjreddie"), dialect="pjreddie").eval()
    randomize_(model)
    layer = model.module_list[0]
    with torch.no_grad():
        model(torch.randn(STEPS * SEQS, INPUTS, 1, 1))
        assert layer.state.shape == (SEQS, OUTPUTS) and layer.cell.shape == (SEQS, OUTPUTS)
        x = torch.randn(STEPS * 5, INPUTS, 1, 1)
        y = model(x)[0]
        assert layer.state.shape == (5, OUTPUTS)
        layer.reset_state()
        assert torch.equal(model(x)[0], y)


def test_state_is_not_a_parameter_and_names_are_readable():
    model = Darknet(cfg_text("gru", "alexeyab", batch_normalize=1), dialect="alexeyab")
    keys = set(model.state_dict())
    assert "module_list.0.uz.weights" in keys and "module_list.0.wh.rolling_variance" in keys
    assert not any(k.endswith((".state", ".cell")) for k in keys)
    rnn = Darknet(cfg_text("rnn", "pjreddie"), dialect="pjreddie")
    assert "module_list.0.input_layer.weights" in set(rnn.state_dict())


def test_batch_must_be_a_multiple_of_time_steps():
    model = Darknet(cfg_text("rnn", "alexeyab"), dialect="alexeyab")
    with pytest.raises(ValueError, match=r"layer 0 \[rnn\] runs time_steps=3 steps per batch: the "
                                         r"batch \(4\) must be a multiple of 3"):
        model(torch.zeros(4, INPUTS, 1, 1))


def test_stacked_layers_and_autograd():
    text = (f"[net]\ninputs={INPUTS}\ntime_steps=2\n\n[rnn]\noutput=6\nhidden=5\nactivation=leaky\n"
            f"batch_normalize=1\n\n[gru]\noutput=3\n\n[lstm]\noutput=4\nbatch_normalize=1\n\n"
            f"[connected]\noutput=2\nactivation=linear\n")
    model = Darknet(text, dialect="alexeyab").train()
    assert model.shapes == [(6, 1, 1), (3, 1, 1), (4, 1, 1), (2, 1, 1)]
    model(torch.randn(2 * 3, INPUTS, 1, 1))[0].square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------- exact trainer

@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_exact_trainer_refuses_recurrent_layers(kind):
    model = Darknet(cfg_text(kind, "pjreddie", batch_normalize=1), dialect="pjreddie")
    with pytest.raises(UnsupportedLayerError, match=rf"<string>:6: layer 0 \[{kind}\]: the exact darknet "
                                                    rf"backward \(mode='exact'\) does not support"):
        install(model, "exact")
    backward = install(model, "autograd")
    assert backward.mode == "autograd"


# ----------------------------------------------------------------- weights

#: (kind, dialect) -> sub-layers in the order of load_weights_upto (and save_weights_upto)
FILE_ORDER = {
    ("rnn", "pjreddie"): ["input_layer", "self_layer", "output_layer"],
    ("rnn", "alexeyab"): ["input_layer", "self_layer", "output_layer"],
    ("gru", "pjreddie"): ["wz", "wr", "wh", "uz", "ur", "uh"],
    # input_z_layer, input_r_layer, input_h_layer, state_z_layer, state_r_layer, state_h_layer
    ("gru", "alexeyab"): ["uz", "ur", "uh", "wz", "wr", "wh"],
    ("lstm", "pjreddie"): ["wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"],
    ("lstm", "alexeyab"): ["wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"],
}
HIDDEN = 3


def _sizes(kind: str, dialect: str, sub: str) -> tuple[int, int]:
    """(inputs, outputs) of a sub-layer of the ``weights_model`` networks."""
    if kind == "rnn":
        h = HIDDEN if dialect == "alexeyab" else OUTPUTS
        return {"input_layer": (INPUTS, h), "self_layer": (h, h), "output_layer": (h, OUTPUTS)}[sub]
    return (INPUTS if sub[0] == "u" else OUTPUTS, OUTPUTS)


def weights_model(kind: str, dialect: str, bn: int) -> Darknet:
    opts = {"batch_normalize": bn}
    if kind == "rnn" and dialect == "alexeyab":
        opts["hidden"] = HIDDEN
    return Darknet(cfg_text(kind, dialect, **opts), dialect=dialect)


WEIGHT_CASES = [(k, d, bn, tr) for (k, d) in FILE_ORDER for bn in (0, 1) for tr in (False, True)]


@pytest.mark.parametrize("kind,dialect,bn,transposed", WEIGHT_CASES,
                         ids=[f"{k}-{d}-bn{b}{'-transposed' if t else ''}" for k, d, b, t in WEIGHT_CASES])
def test_hand_built_file_lands_where_darknet_reads_it(tmp_path, kind, dialect, bn, transposed):
    """save_connected_weights per sub-layer: biases, weights [outputs][inputs] (transposed:
    [inputs][outputs] when minor > 1000), scales, rolling mean, rolling variance."""
    chunks, expected = [], {}
    start = 0
    for sub in FILE_ORDER[(kind, dialect)]:
        n_in, n_out = _sizes(kind, dialect, sub)
        fields = [("biases", n_out), ("weights", n_out * n_in)]
        if bn:
            fields += [("scales", n_out), ("rolling_mean", n_out), ("rolling_variance", n_out)]
        for name, count in fields:
            vals = np.arange(start, start + count, dtype=F32)
            start += count
            chunks.append(vals)
            if name == "weights":
                vals = vals.reshape(n_in, n_out).T if transposed else vals.reshape(n_out, n_in)
            expected[f"{sub}.{name}"] = vals
    header = struct.pack("<iiiI", 0, 1001, 0, 7) if transposed else struct.pack("<iiiQ", 0, 2, 0, 7)
    if transposed and dialect == "alexeyab":   # AlexeyAB reads a 64-bit seen whenever major*10+minor >= 2
        header = struct.pack("<iiiQ", 0, 1001, 0, 7)
    path = tmp_path / "hand.weights"
    path.write_bytes(header + np.concatenate(chunks).astype("<f4").tobytes())
    model = weights_model(kind, dialect, bn)
    report = model.load_weights(path)
    assert report.floats_read == start and not report.partial
    layer = model.module_list[0]
    for name, want in expected.items():
        sub, field = name.split(".")
        np.testing.assert_array_equal(getattr(getattr(layer, sub), field).detach().numpy(), want,
                                      err_msg=name)
    model.save_weights(tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("kind,dialect", list(FILE_ORDER), ids=[f"{k}-{d}" for k, d in FILE_ORDER])
def test_save_load_save_is_byte_identical(tmp_path, kind, dialect):
    model = weights_model(kind, dialect, 1)
    randomize_(model, seed=3)
    model.save_weights(tmp_path / "a.weights")
    other = weights_model(kind, dialect, 1)
    other.load_weights(tmp_path / "a.weights")
    other.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    for (n1, t1), (n2, t2) in zip(model.state_dict().items(), other.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1


def test_dontloadscales_does_not_reach_the_sub_layers(tmp_path):
    """darknet sets dontloadscales on the outer layer; load_connected_weights reads the sub-layer's (0)."""
    model = weights_model("gru", "pjreddie", 1)
    randomize_(model)
    model.save_weights(tmp_path / "a.weights")
    text = cfg_text("gru", "pjreddie", batch_normalize=1, dontloadscales=1)
    other = Darknet(text, dialect="pjreddie")
    other.load_weights(tmp_path / "a.weights")
    assert torch.equal(other.module_list[0].uh.rolling_variance, model.module_list[0].uh.rolling_variance)


# ----------------------------------------------------------------- bad options

def _cfg_file(tmp_path, text: str):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_output_must_be_positive(tmp_path, kind, dialect):
    path = _cfg_file(tmp_path, cfg_text(kind, dialect, output=0))
    with pytest.raises(CfgError, match=re.escape(f"{path}:7: [{kind}]: output=0: expected the number "
                                                 f"of outputs, an integer >= 1")):
        Darknet(path, dialect=dialect)


def test_alexeyab_hidden_must_be_positive(tmp_path):
    path = _cfg_file(tmp_path, cfg_text("rnn", "alexeyab", hidden=0))
    with pytest.raises(CfgError, match=re.escape(f"{path}:8: [rnn]: hidden=0: expected the hidden "
                                                 f"size, an integer >= 1")):
        Darknet(path, dialect="alexeyab")


def test_time_steps_below_one(tmp_path):
    path = _cfg_file(tmp_path, cfg_text("lstm", "pjreddie", steps=0))
    with pytest.raises(CfgError, match=re.escape(f"{path}:4: [net]: time_steps=0: expected an "
                                                 f"integer >= 1")):
        Darknet(path, dialect="pjreddie")
    # AlexeyAB's parse_network_cfg_custom raises it to 1
    assert Darknet(path, dialect="alexeyab").module_list[0].steps == 1


# ----------------------------------------------------------------- the zoo

ZOO = CONFORMANCE / "zoo"
ZOO_RECURRENT = ["pjreddie/rnn.cfg", "pjreddie/gru.cfg", "pjreddie/rnn.train.cfg",
                 "alexeyab/rnn.cfg", "alexeyab/gru.cfg", "alexeyab/rnn.train.cfg",
                 "alexeyab/lstm.train.cfg"]


@pytest.mark.parametrize("name", ZOO_RECURRENT)
def test_zoo_cfg_builds_runs_and_round_trips(tmp_path, name):
    path = ZOO / name
    if not path.is_file():
        pytest.skip(f"zoo cfg {path} not found")
    dialect = name.split("/")[0]
    model = Darknet(path, dialect=dialect).eval()
    steps = model.module_list[0].steps
    assert steps == model.net["time_steps"]
    with torch.no_grad():
        (y,) = model(torch.randn(steps, *model.input_shape))
    assert y.shape == (steps, *model.shapes[-1]) and torch.isfinite(y).all()
    model.save_weights(tmp_path / "a.weights")
    other = Darknet(path, dialect=dialect)
    report = other.load_weights(tmp_path / "a.weights")
    assert report.layers_loaded == len(model.module_list) and not report.partial
    other.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()


def test_layer_classes_are_registered():
    from darknet_py.builder import BUILDERS
    assert BUILDERS["rnn"] is RNN and BUILDERS["gru"] is GRU and BUILDERS["lstm"] is LSTM


def test_model_reset_state_reaches_every_recurrent_layer():
    from darknet_py import Darknet, parse_cfg
    text = ("[net]\nbatch=2\ninputs=3\ntime_steps=1\n\n[rnn]\noutput=4\nhidden=4\nactivation=leaky\n\n"
            "[rnn]\noutput=2\nhidden=2\nactivation=leaky\n")
    m = Darknet(parse_cfg(text, dialect="pjreddie")).eval()
    x = torch.rand(2, 3, 1, 1)
    with torch.no_grad():
        first = m(x)[-1]
        second = m(x)[-1]         # the state carried over: another result
        m.reset_state()
        again = m(x)[-1]          # from zeros again: the first result
    assert not torch.equal(first, second) and torch.equal(first, again)
