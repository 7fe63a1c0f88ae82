"""Recurrent sections on fully connected layers: [rnn], [gru], [lstm].

Darknet runs these layers on a batch of ``steps`` consecutive time steps
(``steps`` = ``time_steps`` of [net]): the N rows of the input are
``steps`` blocks of ``B = N / steps`` sequences, block ``t`` being time step
``t`` of every sequence (darknet's ``make_*_layer`` divide the batch by the
steps; its [net] batch is ``batch/subdivisions * time_steps``, always a
multiple).  Each layer is a few [connected] sub-layers (:class:`Dense`) run
once per step on ``Tensor[B, ...]``, so their batch normalisation uses the
statistics of one step, and updates its rolling statistics once per step
(``rolling = a*rolling + b*batch_stat`` with darknet's [connected] factors:
pjreddie 0.99/0.01, AlexeyAB's ``forward_connected_layer`` 0.95/0.05).
The output is ``Tensor[N, outputs, 1, 1]`` in the same step-major order.

The state darknet keeps in the layer (``l.state``, ``l.h_cpu``/``l.c_cpu``)
survives from one forward call to the next: it is a buffer here, of shape
``[B, n]`` (``None`` before the first call), detached after each call (darknet
never back-propagates across calls), cleared by
:meth:`~darknet_py.layers.sequence.SequenceLayer.reset_state` and restarted
from zeros whenever B changes (the step split and the state are
:class:`~darknet_py.layers.sequence.SequenceLayer`'s, shared with
``conv_recurrent.py``).  What the CPU forward functions do with it:

* [rnn], both forks: a training forward starts from a zero state (``if
  (state.train) fill_cpu(..., l.state)``) and leaves the layer's state zero
  (the steps write the following slots of ``l.state``); an inference
  forward starts from the state the previous one left and keeps its last.
  pjreddie allocates one slot only and its training forward writes past it;
  we compute what the code means, not its heap overflow.
* [gru], [lstm]: never reset, in training or inference.

Formulas per step (x the step's input, h the state, each sub-layer being
``activation(BN-or-bias(W @ input))``):

* [rnn]: ``s = (shortcut ? h : 0) + input_layer(x) + self_layer(h)`` (added
  in that order), ``out = output_layer(s)``, ``h = s``.  input/output layers
  use ``activation``; the self layer too, except in AlexeyAB for
  ``logistic=1`` (logistic) and ``logistic=2`` (loggy).  pjreddie's hidden
  size is ``output`` (it reads no ``hidden=``); AlexeyAB reads ``hidden=``
  (default 1).
* [gru]: ``z = logistic(uz(x) + wz(h))``, ``r = logistic(ur(x) + wr(h))``,
  ``hh = act(uh(x) + wh(h*r))``, ``out = z*h + (1-z)*hh`` (``weighted_sum_cpu``),
  ``h = out``; ``act`` is tanh for pjreddie's ``tanh=1``, else logistic
  (AlexeyAB's ``#ifdef USET`` is not defined where gru_layer.c is compiled).
  All six sub-layers are linear.
* [lstm]: ``f, i, o = logistic(w*(h) + u*(x))``, ``g = tanh(wg(h) + ug(x))``,
  ``c = c*f + i*g``, ``h = tanh(c)*o``, ``out = h``.  All eight sub-layers are
  linear.

Weights files store the sub-layers one after another, each as darknet's
``save_connected_weights`` (biases, weights [outputs][inputs], then scales,
rolling mean, rolling variance with batch_normalize), transposed like a
[connected] matrix when the header's major or minor is > 1000; in this order:

* [rnn]: input_layer, self_layer, output_layer;
* [gru]: pjreddie wz, wr, wh, uz, ur, uh; AlexeyAB (``input_z_layer`` ... =
  uz ...) uz, ur, uh, wz, wr, wh;
* [lstm]: pjreddie wi, wf, wo, wg, ui, uf, uo, ug; AlexeyAB wf, wi, wg, wo,
  uf, ui, ug, uo.

The outer layer's ``dontloadscales`` does not reach the sub-layers (darknet
sets it on the outer layer only), so it changes nothing here.  The exact
darknet trainer (``darknet_grad``, ``mode="exact"``) does not support these
layers (``exact_backward = False``); autograd differentiates the forward.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import Activation, get_activation
from ..builder import BuildContext, register
from ..cfg import Section
from .common import activation_for
from .conv import _BNMixin
from .norm import CONNECTED_ROLLING, batch_stats, normalize, update_rolling
from .sequence import SequenceLayer, positive, time_steps



class Dense(_BNMixin, nn.Module):
    """One [connected] sub-layer: ``Tensor[B, inputs] -> Tensor[B, outputs]``,
    ``activation(BN(x @ weights.T) + biases)`` (no BN: ``x @ weights.T + biases``).

    In training mode BN uses the batch statistics (unbiased variance) of the B
    rows and updates the rolling ones as darknet's [connected] layer does."""

    def __init__(self, inputs: int, outputs: int, activation: Activation,
                 batch_normalize: bool, dialect: str):
        super().__init__()
        self.inputs, self.outputs = inputs, outputs
        self.activation = activation
        self.dialect = dialect
        self.rolling_factors = CONNECTED_ROLLING[dialect]
        self.weights = nn.Parameter(torch.empty(outputs, inputs))
        self._init_bn(outputs, batch_normalize)
        with torch.no_grad():   # make_connected_layer: sqrt(2/inputs) * U(-1, 1)
            scale = math.sqrt(2.0 / inputs)
            self.weights.uniform_(-scale, scale)

    def darknet_tensors(self, prefix: str) -> list[tuple[str, Tensor]]:
        """save_connected_weights' order: biases, weights, then the BN tensors."""
        out = [("biases", self.biases), ("weights", self.weights), *self._bn_tensors()]
        return [(prefix + name, t) for name, t in out]

    def _batchnorm(self, y: Tensor) -> Tensor:
        """``Tensor[B, outputs]``: (y - mean) / std * scales, darknet's normalize_cpu then scale_bias."""
        if not self.training:
            return normalize(y, self.rolling_mean, self.rolling_variance, self.dialect) * self.scales
        mean, var = batch_stats(y)
        update_rolling(self, mean.detach(), var.detach())
        return normalize(y, mean, var, self.dialect) * self.scales

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weights)
        if self.batch_normalize:
            y = self._batchnorm(y)
        return self.activation(y + self.biases)

    def extra_repr(self) -> str:
        return f"{self.inputs} -> {self.outputs}, batch_normalize={int(self.batch_normalize)}"


class RecurrentLayer(SequenceLayer):
    """What [rnn], [gru] and [lstm] share beyond :class:`SequenceLayer` (the split
    into time steps and the carried states, ``STATES``: ``Tensor[B, state_size]``
    each): the sub-layers that read the step input (``INPUT_LAYERS``) and the
    weights-file order (``FILE_ORDER``, per dialect: names of :class:`Dense`
    sub-modules).

    The input sub-layers do not depend on the state: unless they normalise with
    batch statistics (training with batch_normalize: per step), they run once on
    all steps, one matrix product instead of ``steps`` (the same values row by row).
    """

    STATES: ClassVar[tuple[str, ...]] = ("state",)
    INPUT_LAYERS: ClassVar[tuple[str, ...]] = ()
    FILE_ORDER: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, sec: Section, ctx: BuildContext, outputs: int, state_size: int):
        super().__init__(sec, ctx, (outputs, 1, 1))
        c, h, w = ctx.in_shape
        self.inputs, self.outputs = c * h * w, outputs
        self.batch_normalize = bool(sec["batch_normalize"])
        self.state_size = state_size

    def darknet_tensors(self) -> list[tuple[str, Tensor]]:
        return [t for name in self.FILE_ORDER[self.dialect]
                for t in getattr(self, name).darknet_tensors(name + ".")]

    def _input_terms(self, xs: Tensor) -> list[dict[str, Tensor]]:
        """Per step, the outputs ``Tensor[B, n]`` of the ``INPUT_LAYERS`` on
        ``xs: Tensor[steps, B, inputs]``."""
        if self.training and self.batch_normalize:
            return [{n: getattr(self, n)(xt) for n in self.INPUT_LAYERS} for xt in xs]
        steps, b, _ = xs.shape
        whole = {n: getattr(self, n)(xs.reshape(steps * b, -1)).view(steps, b, -1)
                 for n in self.INPUT_LAYERS}
        return [{n: y[t] for n, y in whole.items()} for t in range(steps)]

    def forward(self, x: Tensor) -> Tensor:
        xs = self._split(x, (self.inputs,))
        b = xs.shape[1]
        states = [self._carried(name, (b, self.state_size), x) for name in self.STATES]
        outs = []
        for u in self._input_terms(xs):
            y, states = self.step(u, states)
            outs.append(y)
        self._keep(states)
        return torch.cat(outs).view(x.shape[0], self.outputs, 1, 1)

    def step(self, u: dict[str, Tensor], states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One time step: ``u`` the input sub-layers' outputs on the step's input
        (``Tensor[B, n]`` by name), ``states`` the carried ``Tensor[B, state_size]``
        -> (``Tensor[B, outputs]``, the new states)."""
        raise NotImplementedError


class RNN(RecurrentLayer):
    """[rnn]: input_layer (inputs -> hidden), self_layer (hidden -> hidden),
    output_layer (hidden -> outputs); see the module docstring."""

    type = "rnn"
    FILE_ORDER = {d: ("input_layer", "self_layer", "output_layer") for d in ("pjreddie", "alexeyab")}
    INPUT_LAYERS = ("input_layer",)
    reset_in_training = True

    def __init__(self, sec: Section, ctx: BuildContext):
        ab = ctx.dialect == "alexeyab"
        outputs = positive(sec, "output", "number of outputs")
        hidden = positive(sec, "hidden", "hidden size") if ab else outputs
        super().__init__(sec, ctx, outputs, hidden)
        bn, act = self.batch_normalize, activation_for(sec, ctx)
        self_act = act
        if ab and sec["logistic"] in (1, 2):   # make_rnn_layer's `log`
            self_act = get_activation("logistic" if sec["logistic"] == 1 else "loggy", ctx.dialect)
        self.hidden = hidden
        self.shortcut = bool(sec["shortcut"])
        self.input_layer = Dense(self.inputs, hidden, act, bn, ctx.dialect)
        self.self_layer = Dense(hidden, hidden, self_act, bn, ctx.dialect)
        self.output_layer = Dense(hidden, outputs, act, bn, ctx.dialect)

    def step(self, u: dict[str, Tensor], states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        (h,) = states
        new = u["input_layer"]
        if self.shortcut:
            new = h + new
        new = new + self.self_layer(h)
        return self.output_layer(new), [new]


def _add_gates(layer: "RecurrentLayer", gates: str) -> None:
    """Per gate ``g``: a linear Dense ``u<g>`` (inputs -> outputs, on the step input) and
    ``w<g>`` (outputs -> outputs, on the state), batch-normalised as the section says."""
    linear = get_activation("linear", layer.dialect)
    for gate in gates:
        setattr(layer, "u" + gate, Dense(layer.inputs, layer.outputs, linear, layer.batch_normalize,
                                         layer.dialect))
        setattr(layer, "w" + gate, Dense(layer.outputs, layer.outputs, linear, layer.batch_normalize,
                                         layer.dialect))


class GRU(RecurrentLayer):
    """[gru]: uz, ur, uh (inputs -> outputs, on x) and wz, wr, wh (outputs ->
    outputs, on the state), all linear; see the module docstring."""

    type = "gru"
    FILE_ORDER = {"pjreddie": ("wz", "wr", "wh", "uz", "ur", "uh"),
                  "alexeyab": ("uz", "ur", "uh", "wz", "wr", "wh")}
    INPUT_LAYERS = ("uz", "ur", "uh")

    def __init__(self, sec: Section, ctx: BuildContext):
        outputs = positive(sec, "output", "number of outputs")
        super().__init__(sec, ctx, outputs, outputs)
        _add_gates(self, "zrh")
        self.logistic = get_activation("logistic", ctx.dialect)
        use_tanh = ctx.dialect == "pjreddie" and bool(sec["tanh"])
        self.candidate_activation = get_activation("tanh" if use_tanh else "logistic", ctx.dialect)

    def step(self, u: dict[str, Tensor], states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        (h,) = states
        z = self.logistic(u["uz"] + self.wz(h))
        r = self.logistic(u["ur"] + self.wr(h))
        hh = self.candidate_activation(u["uh"] + self.wh(h * r))
        out = z * h + (1 - z) * hh
        return out, [out]


class LSTM(RecurrentLayer):
    """[lstm]: uf, ui, ug, uo (inputs -> outputs, on x) and wf, wi, wg, wo
    (outputs -> outputs, on h), all linear; states h (``state``) and the cell
    (``cell``); see the module docstring."""

    type = "lstm"
    STATES = ("state", "cell")
    FILE_ORDER = {"pjreddie": ("wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"),
                  "alexeyab": ("wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo")}
    INPUT_LAYERS = ("uf", "ui", "ug", "uo")

    def __init__(self, sec: Section, ctx: BuildContext):
        outputs = positive(sec, "output", "number of outputs")
        super().__init__(sec, ctx, outputs, outputs)
        _add_gates(self, "figo")
        self.logistic = get_activation("logistic", ctx.dialect)
        self.tanh = get_activation("tanh", ctx.dialect)

    def step(self, u: dict[str, Tensor], states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h, c = states
        f = self.logistic(self.wf(h) + u["uf"])
        i = self.logistic(self.wi(h) + u["ui"])
        g = self.tanh(self.wg(h) + u["ug"])
        o = self.logistic(self.wo(h) + u["uo"])
        c = c * f + i * g
        h = self.tanh(c) * o
        return h, [h, c]


register("rnn")(RNN)
register("gru")(GRU)
register("lstm")(LSTM)
__all__ = ["Dense", "RecurrentLayer", "RNN", "GRU", "LSTM", "CONNECTED_ROLLING", "time_steps",
           "positive"]
