"""Recurrent sections on convolutions: [crnn], [conv_lstm], and [history].

Time in darknet's batch
-----------------------
These layers read the network batch ``N`` as ``steps = time_steps`` (from
``[net]``, default 1; AlexeyAB raises a value < 1 to 1, see
:func:`~darknet_py.layers.sequence.time_steps`) consecutive time steps of
``B = N / steps`` sequences:
samples ``[t*B, (t+1)*B)`` are time step ``t`` (``make_*_layer`` divides the
batch by ``steps``; ``parse_net_options`` multiplies the mini-batch by
``time_steps``, so darknet's batch always divides).  The forward loops over the
steps; every convolution inside runs on one step at a time (``l.batch = B``),
so in training its batch norm takes the statistics of that step and updates the
rolling ones once per step.

State between calls
-------------------
Darknet keeps the recurrent state in the layer between forward calls.  Here it
is a non-persistent buffer (not in ``state_dict``), ``None`` meaning zeros;
:meth:`reset_state` clears it, and a change of ``B`` or of the map size restarts
it from zeros (darknet would reallocate).  The step split and the carried state
are :class:`~darknet_py.layers.sequence.SequenceLayer`'s, shared with
``recurrent.py``.  What each CPU forward does with it:

* ``[crnn]`` (both darknets): in eval the state carries over from call to call.
  In training ``forward_crnn_layer`` zeroes ``l.state`` first and writes step
  ``t``'s state to slot ``t+1`` of its buffer, so every training call starts
  from zeros and leaves the carried state (slot 0) at zero.
* ``[conv_lstm]`` (AlexeyAB): ``h`` and ``c`` carry over in training and eval
  alike (only darknet's training loops call ``free_state_conv_lstm``, outside
  the layer: :meth:`reset_state` here).
* ``[history]`` (AlexeyAB): the last step's output carries over, in both modes.

The sub-convolutions are :class:`~darknet_py.layers.conv.Convolutional`
modules (``make_convolutional_layer`` with the section's geometry) and their
tensors are stored in the weights file in darknet's order: ``[crnn]``
input_layer, self_layer, output_layer; ``[conv_lstm]`` vf, vi, vo (only with
``peephole=1``), wf, wi, wg, wo, uf, ui, ug, uo -- each as a convolution:
biases, [scales, rolling mean, rolling variance], weights.

Training: autograd differentiates the forward.  Darknet's own CPU backward of
these layers differs from that gradient (e.g. ``[conv_lstm]`` passes no
gradient from ``h`` to the previous step, ``[crnn]`` rebuilds the shortcut
state without it, ``[history]`` passes back only the current input's block),
so the layers say ``exact_backward = False`` and the exact-darknet trainer
refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..activations import get_activation
from ..builder import BuildContext, register
from ..cfg import Section
from ..init import INITIALISERS
from .common import activation_for, c_div, unsupported
from .conv import Convolutional
from .sequence import SequenceLayer, positive

__all__ = ["CRNN", "ConvLSTM", "History", "fix_nan_and_inf", "constrain"]


# ----------------------------------------------------------------- shared helpers

@dataclass(frozen=True)
class Geometry:
    """What every sub-convolution of a section shares (``make_convolutional_layer`` args)."""

    size: int
    stride: int
    dilation: int
    padding: int
    groups: int

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """darknet's (undilated) output size of the convolution."""
        return (c_div(h + 2 * self.padding - self.size, self.stride) + 1,
                c_div(w + 2 * self.padding - self.size, self.stride) + 1)


_GEOMETRY_KEYS = ("size", "stride", "dilation", "pad", "padding", "groups")


def ab_geometry(sec: Section, ctx: BuildContext) -> Geometry:
    """The convolution options AlexeyAB's ``parse_crnn`` / ``parse_conv_lstm`` read."""
    size, stride, dilation = (positive(sec, key) for key in ("size", "stride", "dilation"))
    padding = size // 2 if sec["pad"] else sec["padding"]
    if padding < 0:
        raise sec.error(f"padding={padding}: expected an integer >= 0", "padding")
    if sec["xnor"]:
        # calculate_binary_weights visits only top-level [convolutional] layers, so the
        # sub-layers take the float XNOR path, whose binarize_weights(l.weights, l.n,
        # l.nweights, ...) reads and writes n times past the weights: undefined
        raise unsupported(sec, ctx, "xnor=1: AlexeyAB's CPU forward binarizes the "
                          "sub-convolutions' weights past the end of their buffers "
                          "(undefined result)", "xnor")
    groups = max(1, sec["groups"])  # make_convolutional_layer: "if (groups < 1) groups = 1;"
    return Geometry(size, stride, dilation, padding, groups)


def _geometry_key(sec: Section) -> str:
    """The option to blame for a convolution that changes the map size."""
    return next((k for k in ("stride", "size", "padding", "pad", "dilation") if k in sec), "size")


def require_same_size(sec: Section, g: Geometry, h: int, w: int, why: str) -> None:
    """darknet's recurrent convolutions must keep the map size (``why`` says what breaks)."""
    out = g.out_hw(h, w)
    if out != (h, w):
        raise sec.error(f"size={g.size}, stride={g.stride}, padding={g.padding} turn the {h}x{w} "
                        f"map into {out[0]}x{out[1]}; expected a convolution that keeps the map "
                        f"size ({why})", _geometry_key(sec))


def require_groups(sec: Section, g: Geometry, channels: dict[str, int]) -> None:
    if any(n % g.groups for n in channels.values()):
        listed = ", ".join(f"{k} ({n})" for k, n in channels.items())
        raise sec.error(f"groups={g.groups}: expected a divisor of {listed}", "groups")


def sub_conv(sec: Section, ctx: BuildContext, part: str, in_shape: tuple[int, int, int],
             filters: int, g: Geometry) -> Convolutional:
    """One ``make_convolutional_layer`` of a recurrent section, darknet-initialised.

    ``Tensor[B, in_c, h, w] -> Tensor[B, filters, h', w']``; its errors name
    ``[section:part]`` at the section's lines."""
    options = {"filters": filters, "size": g.size, "stride": g.stride, "stride_x": -1,
               "stride_y": -1, "dilation": g.dilation, "pad": 0, "padding": g.padding,
               "groups": g.groups, "xnor": 0, "antialiasing": 0,
               "activation": sec["activation"], "batch_normalize": sec["batch_normalize"],
               "learning_rate": sec["learning_rate"], "stopbackward": 0}
    given = {k: sec.line_of(k) for k in _GEOMETRY_KEYS + ("activation", "batch_normalize")
             if k in sec}
    part_sec = Section("convolutional", sec.line, options, given=given, file=sec.file,
                       name=f"{sec.name or sec.type}:{part}")
    part_ctx = BuildContext(ctx.index, in_shape, ctx.shapes, ctx.layers, ctx.net, ctx.dialect,
                            ctx.file, ctx.batch)
    conv = Convolutional(part_sec, part_ctx)
    with torch.no_grad():
        INITIALISERS["convolutional"](conv)
    return conv


def fix_nan_and_inf(x: Tensor) -> Tensor:
    """AlexeyAB ``fix_nan_and_inf_cpu`` on one step's buffer: a NaN or inf at flat
    index ``i`` of ``x`` (``Tensor[B, C, H, W]``, C order) becomes ``1.0f / i``
    (``inf`` at index 0)."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return x
    index = torch.arange(x.numel(), dtype=x.dtype, device=x.device).view(x.shape)
    return torch.where(bad, 1.0 / index, x)


def constrain(x: Tensor, alpha: float) -> Tensor:
    """``constrain_cpu``: ``fminf(alpha, fmaxf(-alpha, x))`` (a NaN becomes ``-alpha``'s clamp)."""
    a = x.new_tensor(alpha)
    return torch.fmin(a, torch.fmax(-a, x))


# ----------------------------------------------------------------- [crnn]

class CRNN(SequenceLayer):
    """``[crnn]``: a recurrent layer whose three transforms are convolutions.

    ``Tensor[N, c, h, w] -> Tensor[N, output, h, w]``, ``N = steps*B``.  Per step::

        state = (state if shortcut else 0) + input_layer(x_t) + self_layer(state)
        y_t = output_layer(state)

    (each a convolution + BN/bias + ``activation``; the sums in darknet's order).
    pjreddie: 3x3, stride 1, pad 1, ``hidden_filters``/``output_filters``, and
    its ``parse_crnn`` passes the input's width as the layer's height and the
    height as its width: the ``[c][h][w]`` input is read as ``[c][w][h]`` and the
    output shape is ``(output, w, h)``.  AlexeyAB: ``size``, ``stride``,
    ``dilation``, ``pad``/``padding``, ``groups``, ``xnor``, ``hidden``,
    ``output``; the convolution must keep the map size (darknet asserts it).
    ``xnor=1`` is refused (AlexeyAB's CPU path for it is undefined, see
    :func:`ab_geometry`).
    """

    type = "crnn"
    STATES = ("state",)
    # training: forward_crnn_layer zeroes slot 0 of l.state and writes later slots
    reset_in_training = True

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        if ctx.dialect == "alexeyab":
            hidden, output = positive(sec, "hidden"), positive(sec, "output")
            g = ab_geometry(sec, ctx)
            gh, gw = h, w
        else:
            hidden, output = positive(sec, "hidden_filters"), positive(sec, "output_filters")
            g = Geometry(size=3, stride=1, dilation=1, padding=1, groups=1)
            gh, gw = w, h  # parse_crnn: make_crnn_layer(batch, params.w, params.h, ...)
        activation_for(sec, ctx)
        require_groups(sec, g, {"input channels": c, "hidden": hidden, "output": output})
        require_same_size(sec, g, gh, gw, "darknet asserts that the hidden state and the "
                          "input of output_layer have the same size")
        super().__init__(sec, ctx, (output, gh, gw))
        self.hidden, self.shortcut = hidden, bool(sec["shortcut"])
        self.map_shape = (c, gh, gw)
        self.input_layer = sub_conv(sec, ctx, "input_layer", (c, gh, gw), hidden, g)
        self.self_layer = sub_conv(sec, ctx, "self_layer", (hidden, gh, gw), hidden, g)
        self.output_layer = sub_conv(sec, ctx, "output_layer", (hidden, gh, gw), output, g)

    def _parts(self) -> list[tuple[str, Convolutional]]:
        return [("input_layer", self.input_layer), ("self_layer", self.self_layer),
                ("output_layer", self.output_layer)]

    def darknet_tensors(self) -> list[tuple[str, Tensor]]:
        return [(f"{part}.{name}", t) for part, conv in self._parts()
                for name, t in conv.darknet_tensors()]

    def forward(self, x: Tensor) -> Tensor:
        seq = self._split(x, self.map_shape)
        _, gh, gw = self.map_shape
        state = self._carried("state", (seq.shape[1], self.hidden, gh, gw), x)
        outs = []
        for x_t in seq:
            from_input = self.input_layer(x_t)
            from_self = self.self_layer(state)
            state = (state + from_input if self.shortcut else from_input) + from_self
            outs.append(self.output_layer(state))
        self._keep([state])
        return torch.stack(outs).reshape(x.shape[0], *self.out_shape)

    def flops(self) -> float:
        return sum(conv.flops() for _, conv in self._parts())


# ----------------------------------------------------------------- [conv_lstm]

#: the sub-convolutions of [conv_lstm] in darknet's file order (V only with peephole=1)
PEEPHOLE_GATES = ("vf", "vi", "vo")
STATE_GATES = ("wf", "wi", "wg", "wo")
INPUT_GATES = ("uf", "ui", "ug", "uo")


class ConvLSTM(SequenceLayer):
    """AlexeyAB ``[conv_lstm]``, its CPU forward: ``Tensor[N, c, h, w] -> Tensor[N, output, h, w]``.

    Per step, with ``u* = U*(x_t)``, ``w* = W*(h)`` and (``peephole=1``) ``v* = V*(c)``
    (each a convolution + BN/bias + ``activation``)::

        f = logistic(wf + uf [+ vf(c)]);  i = logistic(wi + ui [+ vi(c)])
        g = tanh(wg + ug);  c = f*c + i*g
        o = logistic(wo + uo [+ vo(c)]);  h = tanh(c) * o      # vo sees the new c
        c = constrain(c, state_constrain) if state_constrain
        c, h = fix_nan_and_inf(c), fix_nan_and_inf(h);  y_t = h

    ``tanh`` is darknet's ``2/(1+exp(-2x))-1``.  The CPU forward ignores
    ``lstm_activation``, ``shortcut`` and ``time_normalizer`` (GPU only);
    ``bottleneck=1`` exists only on the GPU and is refused, and so is ``xnor=1``
    (see :func:`ab_geometry`).
    """

    type = "conv_lstm"
    STATES = ("h_state", "c_state")

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        output = positive(sec, "output")
        g = ab_geometry(sec, ctx)
        activation_for(sec, ctx)
        if sec["bottleneck"]:
            raise unsupported(sec, ctx, "bottleneck=1 exists only in darknet's GPU forward (its "
                              "CPU forward would feed wf a half-size input and read the unbuilt "
                              "wi/wg/wo)", "bottleneck")
        require_groups(sec, g, {"input channels": c, "output": output})
        require_same_size(sec, g, h, w, "the W and V convolutions read the output-sized state as "
                          "an input-sized map")
        super().__init__(sec, ctx, (output, h, w))
        self.output, self.peephole = output, bool(sec["peephole"])
        self.state_constrain = sec["state_constrain"]
        self.map_shape = (c, h, w)
        self.mini_batch = ctx.net["batch"] // max(1, ctx.net["subdivisions"])
        self.logistic = get_activation("logistic", "alexeyab")
        self.tanh = get_activation("tanh", "alexeyab")
        for name in self.gate_names:
            in_c = c if name in INPUT_GATES else output
            setattr(self, name, sub_conv(sec, ctx, name, (in_c, h, w), output, g))

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The sub-convolutions in darknet's file order."""
        return (PEEPHOLE_GATES if self.peephole else ()) + STATE_GATES + INPUT_GATES

    def darknet_tensors(self) -> list[tuple[str, Tensor]]:
        return [(f"{gate}.{name}", t) for gate in self.gate_names
                for name, t in getattr(self, gate).darknet_tensors()]

    def _step(self, x_t: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One step: ``(Tensor[B, c, h, w], h, c) -> (h, c)``, both ``Tensor[B, output, h, w]``."""
        f = self.wf(h) + self.uf(x_t)
        i = self.wi(h) + self.ui(x_t)
        if self.peephole:
            f = f + self.vf(c)
            i = i + self.vi(c)
        g = self.wg(h) + self.ug(x_t)
        f, i, g = self.logistic(f), self.logistic(i), self.tanh(g)
        c = f * c + i * g
        o = self.wo(h) + self.uo(x_t)
        if self.peephole:
            o = o + self.vo(c)
        h = self.tanh(c) * self.logistic(o)
        if self.state_constrain:
            c = constrain(c, float(self.state_constrain))
        return fix_nan_and_inf(h), fix_nan_and_inf(c)

    def forward(self, x: Tensor) -> Tensor:
        seq = self._split(x, self.map_shape)
        shape = (seq.shape[1], *self.out_shape)
        h = self._carried("h_state", shape, x)
        c = self._carried("c_state", shape, x)
        outs = []
        for x_t in seq:
            h, c = self._step(x_t, h, c)
            outs.append(h)
        self._keep([h, c])
        return torch.stack(outs).reshape(x.shape[0], *self.out_shape)

    def flops(self) -> float:
        convs = sum(getattr(self, name).flops() for name in self.gate_names)
        per_element = 12 if self.peephole else 9
        return convs + per_element * self.out_shape[0] * self.out_shape[1] * self.out_shape[2] \
            * self.mini_batch / 1e9


# ----------------------------------------------------------------- [history]

class History(SequenceLayer):
    """AlexeyAB ``[history]``: ``Tensor[N, c, h, w] -> Tensor[N, c*history_size, h, w]``.

    With ``time_steps > 1`` each output is a shift register of the last
    ``history_size`` inputs of its sequence, newest first: channels
    ``[k*c, (k+1)*c)`` hold the input of ``k`` steps ago (zeros before the first
    call; the last step's output carries over to the next call).  With
    ``time_steps = 1`` darknet copies the ``N*c*h*w`` input values flat to the
    start of the output buffer and leaves the rest 0, so sample 0's output holds
    the first ``history_size`` samples' inputs and later samples get zeros.
    """

    type = "history"
    STATES = ("history",)

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        size = positive(sec, "history_size")
        super().__init__(sec, ctx, (c * size, h, w))
        self.history_size = size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.steps == 1:
            rest = x.new_zeros(n * (self.history_size - 1) * x[0].numel())
            return torch.cat([x.reshape(-1), rest]).view(n, *self.out_shape)
        seq = self._split(x, self.in_shape)
        keep = self.in_shape[0] * (self.history_size - 1)
        prev = self._carried("history", (seq.shape[1], *self.out_shape), x)
        outs = []
        for x_t in seq:
            prev = torch.cat([x_t, prev[:, :keep]], dim=1)
            outs.append(prev)
        self._keep([prev])
        return torch.stack(outs).reshape(n, *self.out_shape)


register("crnn")(CRNN)
register("conv_lstm")(ConvLSTM)
register("history")(History)
