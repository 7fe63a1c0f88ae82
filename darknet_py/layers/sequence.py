"""What darknet's recurrent sections share: [rnn], [gru], [lstm] (``recurrent.py``)
and [crnn], [conv_lstm], [history] (``conv_recurrent.py``).

Each reads the network batch ``N`` as ``steps`` (``[net] time_steps``)
consecutive time steps of ``B = N / steps`` sequences, samples ``[t*B, (t+1)*B)``
being time step ``t`` (darknet's ``make_*_layer`` divide the batch by the
steps; its [net] batch is ``batch/subdivisions * time_steps``, always a
multiple), and keeps a state from one forward call to the next.
:class:`SequenceLayer` holds these parts; the modules add the sub-layers and
the step formulas.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor

from ..builder import BuildContext
from ..cfg import Section
from ..errors import InputError
from .base import DarknetLayer

__all__ = ["time_steps", "positive", "SequenceLayer"]


def time_steps(ctx: BuildContext) -> int:
    """``[net] time_steps`` as the dialect uses it.

    AlexeyAB raises a value < 1 to 1 (``parse_network_cfg_custom``: ``if
    (net.time_steps < 1) net.time_steps = 1;`` before ``params.time_steps =
    net.time_steps``, which every ``parse_*`` of these sections passes on);
    pjreddie passes it on unchanged and its ``make_*_layer`` divide the batch by
    it (0: a crash), so a value < 1 is an error there."""
    steps = ctx.net["time_steps"]
    if steps < 1:
        if ctx.dialect == "alexeyab":
            return 1
        raise ctx.net.error(f"time_steps={steps}: expected an integer >= 1 (pjreddie darknet "
                            f"divides the batch by it)", "time_steps")
    return steps


def positive(sec: Section, key: str, what: str = "") -> int:
    """``sec[key]``, which must be >= 1 (``what``: what the value is, for the message)."""
    value = sec[key]
    if value < 1:
        expected = f"the {what}, an integer >= 1" if what else "an integer >= 1"
        raise sec.error(f"{key}={value}: expected {expected}", key)
    return value


class SequenceLayer(DarknetLayer):
    """A layer whose batch is ``steps`` time steps and which carries state between calls.

    ``STATES`` names the carried states: non-persistent buffers (not in
    ``state_dict``), ``None`` until a forward stores one and after
    :meth:`reset_state`; a state whose shape no longer fits (another ``B`` or
    map size: darknet would reallocate) counts as none, i.e. zeros.  With
    ``reset_in_training``, a training forward starts from zeros and leaves the
    states zero (darknet's training forward zeroes ``l.state`` and writes the
    steps to the following slots).  Darknet never back-propagates across calls:
    the states are stored detached.
    """

    STATES: ClassVar[tuple[str, ...]] = ()
    #: darknet's own backward of these layers is not reproduced (autograd differentiates
    #: the forward): train/darknet_grad.py refuses mode="exact" for them
    exact_backward: ClassVar[bool] = False
    #: the state is zeroed at the start of every training forward (and left zero)
    reset_in_training: ClassVar[bool] = False

    def __init__(self, sec: Section, ctx: BuildContext, out_shape: tuple[int, int, int]):
        super().__init__(sec, ctx, out_shape)
        self.steps = time_steps(ctx)
        for name in self.STATES:
            self.register_buffer(name, None, persistent=False)

    def reset_state(self) -> None:
        """Forget the carried state: the next forward starts from zeros."""
        for name in self.STATES:
            setattr(self, name, None)

    def _split(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``Tensor[N, ...] -> Tensor[steps, N/steps, *shape]`` (darknet's step-major batch)."""
        n = x.shape[0]
        if n % self.steps:
            sec, s = self.section, self.steps
            raise InputError(f"{sec.file}:{sec.line}: layer {self.index} [{sec.name or sec.type}] "
                             f"runs time_steps={s} steps per batch: the batch ({n}) must be a "
                             f"multiple of {s} (darknet reads a batch as [net] time_steps={s} steps "
                             f"of batch/time_steps sequences)")
        return x.reshape(self.steps, n // self.steps, *shape)

    def _carried(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The carried state ``name`` of ``shape`` on ``like``'s dtype and device; zeros
        when there is none, when its shape changed, or in training for layers that
        reset there."""
        stored = getattr(self, name)
        if (stored is None or tuple(stored.shape) != tuple(shape)
                or (self.training and self.reset_in_training)):
            return like.new_zeros(shape)
        return stored.to(dtype=like.dtype, device=like.device)

    def _keep(self, states: Sequence[Tensor]) -> None:
        """Store the last step's states (in ``STATES`` order), detached; zeros in
        training for layers that reset there."""
        for name, value in zip(self.STATES, states):
            if self.training and self.reset_in_training:
                value = torch.zeros_like(value)
            setattr(self, name, value.detach())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, time_steps={self.steps}"
