"""``Trainer``: one darknet training update (``train_network`` + ``update_network``).

An update takes ``batch`` images (the cfg's ``batch``, rounded down to a
multiple of ``subdivisions`` as darknet does) and runs ``subdivisions`` passes
in order.  Each pass: ``seen += mini_batch``; a training-mode forward (BN
batch statistics with the unbiased variance, rolling statistics updated once
per pass); the head losses on that pass's targets; a backward that adds into
darknet's update buffers.  After the last pass the rate is computed from
``seen`` (:mod:`.schedule`) and every layer gets darknet's SGD update
(:mod:`.update`: lr/batch, weight decay on weights only, momentum applied to
the buffer after the step, all in float32, bit-exact).

``mode="exact"`` (default) computes darknet's gradient, not autograd's
(:mod:`.darknet_grad`): darknet's batch-norm backward formula, the gradient
contributions darknet loses where a convolution overwrites the delta of the
layer before it, and (AlexeyAB) the deltas of [route]/[upsample] layers that
darknet never clears and that keep accumulating across passes and updates.
``mode="autograd"`` is plain autograd of the same forward: the true gradient
of darknet's loss, which darknet itself does not follow (measured with
darknet's head deltas, relative to each gradient array's max: pjreddie
yolov3-tiny 2.9e-2 off darknet's gradients in autograd mode against 6e-5 in
exact mode; AlexeyAB yolov4-tiny 5.1 (lost and accumulated deltas) against
7e-5; ``benchmarks/bench_train_step.py`` compares the speed).

Where darknet's CPU build omits a gradient we follow its GPU build, on purpose:
pjreddie's [region] head passes its gradient on (the CPU backward is empty;
the GPU one multiplies x, y and objectness by the logistic derivative) and
AlexeyAB's batch-normalised layers train their beta (the CPU build never
computes that gradient).  Rolling statistics keep the CPU momentum
(AlexeyAB 0.9/0.1; its cuDNN build would use 0.99/0.01).  Not reproduced:
AlexeyAB's GPU-only ``loss_scale`` and NaN/Inf clean-up, Adam (rejected).

Several processes (``torch.distributed`` initialised, e.g. under ``torchrun``):
each rank runs the passes on its own ``batch`` images; the first pass
broadcasts rank 0's parameters and buffers, :meth:`Trainer.update` averages
the update buffers over the ranks before darknet's SGD and the BN rolling
statistics after it (:mod:`.distributed`).  With ``N`` ranks this is, up to
float summation order, the update of one process with ``N*batch`` images in
``N*subdivisions`` passes: that process's buffer is the sum over all passes,
``N`` times the ranks' average, and it divides by ``N*batch`` where the ranks
divide by ``batch`` (the weight decay term scales the same way).  Only the
rolling statistics differ: the mean of ``N`` short sequences of rolling
updates instead of one long one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import CfgError, CheckpointError, DataError, TrainingError, UnsupportedLayerError
from . import distributed as ddp
from .amp import AMP_DTYPES, LossScale
from .darknet_grad import MODES, head_backward, install
from .schedule import LRSchedule, check_net_keys, get_lr
from .update import DECAYED, darknet_update_, layer_rate

f32 = np.float32
LossFn = Callable[[list[Tensor], Tensor], tuple[Tensor, list[dict]]]


@dataclass
class PassResult:
    """One subdivision pass of an update."""

    seen: int                               #: ``seen`` after this pass's increment
    cost: float                             #: darknet's ``*net.cost``: mean of the head costs
    head_costs: dict[int, float]            #: head layer index -> darknet's ``l.cost``
    stats: list[dict]                       #: the loss's per-head stats
    loss: float                             #: the value whose gradient was back-propagated
    batch_stats: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    #: layer index -> (batch mean, unbiased batch variance) used by its BN in this pass


@dataclass
class StepResult:
    """One update: its rate and counters, and every pass."""

    rate: float                             #: the net rate of this update (float32 value)
    batch_num: int                          #: ``seen // (mini_batch*subdivisions)`` after the passes
    seen: int
    mini_batch: int
    passes: list[PassResult]

    @property
    def loss(self) -> float:
        """``train_network``'s return: the sum of the pass costs / (passes * mini_batch)."""
        total = f32(0)
        for p in self.passes:
            total = total + f32(p.cost)
        return float(total / f32(len(self.passes) * self.mini_batch))


def _head_cost(stat: dict, fallback: float) -> float:
    """darknet's ``l.cost`` of a head from the loss stats (the loss value if absent)."""
    return float(stat["cost"]) if "cost" in stat else fallback


class Trainer:
    """Darknet's training step on a :class:`~darknet_py.Darknet` model.

    ``Trainer(model, mode="exact", batch=None, subdivisions=None, loss_fn=None,
    stopbackward=None, amp=False)``: the training keys come from ``model.net`` (``batch``
    and ``subdivisions`` may be overridden); ``seen`` starts at ``model.seen``
    (the weights file's header).  ``loss_fn(outputs, targets) -> (loss, stats)``
    defaults to ``model.loss``.  ``stopbackward=i`` freezes layers 0..i as a
    ``stopbackward=1`` on layer ``i`` would (as do the cfg's own).  ``amp=True``
    (``mode="autograd"`` on CUDA only): mixed precision with a dynamic loss scale,
    documented in :mod:`.amp`; not darknet's arithmetic.

    ``step(images, targets)``: ``images`` Tensor[batch, C, H, W] (all images of
    the update), ``targets`` Tensor[M, 6] rows (image index within the batch,
    class, cx, cy, w, h), normalised.  Returns a :class:`StepResult` (rate,
    counters, per pass the costs, the loss stats and the BN batch statistics).
    ``step`` = :meth:`forward_backward` (``subdivisions`` x :meth:`train_pass`)
    + :meth:`update`.  Under ``torch.distributed`` every rank calls them on its
    own images and they keep the ranks identical (see the module doc).  Afterwards
    ``trainer.seen == model.seen`` (so ``save_weights`` writes it),
    ``trainer.iteration`` is darknet's current batch and ``trainer.rate`` the
    rate just used.  :meth:`state_dict` holds what resuming exactly needs
    besides the weights: ``seen``, the update (momentum) buffers and the
    AlexeyAB never-cleared deltas.
    """

    def __init__(self, model, mode: str = "exact", *, batch: int | None = None,
                 subdivisions: int | None = None, loss_fn: LossFn | None = None,
                 stopbackward: int | None = None, amp: bool = False):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        net = model.net
        self.model = model
        self.mode = mode
        self.amp = LossScale() if amp else None
        if amp:
            _check_amp(mode, self._device())
        self.dialect = model.dialect
        check_net_keys(net, self.dialect)
        batch = int(batch if batch is not None else net["batch"])
        subdivisions = int(subdivisions if subdivisions is not None else net["subdivisions"])
        if subdivisions < 1 or batch < subdivisions:
            raise CfgError(f"[net] batch={batch} subdivisions={subdivisions}: darknet needs "
                           f"subdivisions >= 1 and batch >= subdivisions", net.file,
                           net.line_of("subdivisions"))
        self.subdivisions = subdivisions
        self.mini_batch = batch // subdivisions        # darknet: net.batch /= subdivisions
        self.update_batch = self.mini_batch * subdivisions
        self.momentum = float(f32(net["momentum"]))
        self.decay = float(f32(net["decay"]))
        self.max_batches = int(net["max_batches"])
        self.schedule = LRSchedule.from_net(net, self.dialect)
        self.loss_fn: LossFn = loss_fn or model.loss
        self.seen = int(model.seen)
        self.updates: dict[str, Tensor] = {}
        self._check_layers()
        self._stops = self._stop_layers(stopbackward)
        #: AlexeyAB: layers below the last stopbackward=1 get train=0 (no update at all)
        self._no_update_below = max((i for i, until in self._stops if until is None), default=-1) \
            if self.dialect == "alexeyab" else -1
        self._frozen_upto = -1
        self._hooks = [model.module_list[i].register_forward_hook(self._detach_hook(i))
                       for i in self._maybe_detached()]
        self.backward = install(model, mode)
        self.last: StepResult | None = None
        #: processes training together (torch.distributed's world size when initialised)
        self.world_size = ddp.world_size()
        self._synced = self.world_size == 1
        self._passes = 0                    # passes run since the last update

    # ------------------------------------------------------------- counters
    @property
    def iteration(self) -> int:
        """Darknet's current batch: ``seen // (mini_batch * subdivisions)``."""
        return self.seen // self.update_batch

    @property
    def rate(self) -> float:
        """``get_current_rate`` now (after a step: the rate that step used)."""
        return get_lr(self.iteration, self.schedule)

    @property
    def done(self) -> bool:
        """Darknet's training loop ends when the iteration reaches max_batches."""
        return self.iteration >= self.max_batches

    # ------------------------------------------------------------- freezing
    def _check_layers(self) -> None:
        for layer in self.model.module_list:
            sec = layer.section
            if int(sec.get("train_only_bn", 0)):
                raise UnsupportedLayerError(
                    f"layer {layer.index} [{sec.name}]: train_only_bn=1 is not supported by the "
                    f"darknet_py trainer", sec.file, sec.line_of("train_only_bn"))

    def _stop_layers(self, stopbackward: int | None) -> list[tuple[int, int | None]]:
        """(layer, until): darknet's backward stops at ``layer`` while the iteration is
        below ``until`` (None: always).  pjreddie: any non-zero ``stopbackward``;
        AlexeyAB: ``stopbackward=1`` always, ``stopbackward=N`` until iteration N (its
        GPU build; the CPU build treats every non-zero value as 1)."""
        stops: list[tuple[int, int | None]] = []
        for m in self.model.module_list:
            v = int(m.stopbackward)
            if v:
                stops.append((m.index, v if self.dialect == "alexeyab" and v > 1 else None))
        if stopbackward is not None:
            if not 0 <= stopbackward < len(self.model.module_list):
                raise ValueError(f"stopbackward={stopbackward} is not a layer index")
            stops.append((int(stopbackward), None))
        return stops

    def _maybe_detached(self) -> list[int]:
        """Layers whose output may carry no gradient: 0..the highest stop, and
        AlexeyAB's ``onlyforward`` layers."""
        out = set(range(max((i for i, _ in self._stops), default=-1) + 1))
        if self.dialect == "alexeyab":
            out |= {m.index for m in self.model.module_list if int(m.section.get("onlyforward", 0))}
        return sorted(out)

    def _detach_hook(self, index: int):
        only_forward = self.dialect == "alexeyab" and \
            bool(int(self.model.module_list[index].section.get("onlyforward", 0)))

        def hook(module, inputs, output):
            if only_forward or index <= self._frozen_upto:
                return output.detach()
            return None
        return hook

    def _refresh_frozen(self) -> None:
        """The highest layer the backward stops at during this update (darknet checks
        ``stopbackward > cur_iteration``, the updates done before this one)."""
        done = self.iteration
        self._frozen_upto = max((i for i, until in self._stops if until is None or until > done),
                                default=-1)

    def _updated(self, index: int) -> bool:
        # pjreddie updates every layer (weight decay still moves frozen weights)
        return index >= self._no_update_below

    # ------------------------------------------------------------- the step
    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _check_batch(self, images: Tensor, targets: Tensor, what: str = "an update") -> None:
        n = self.update_batch if what == "an update" else self.mini_batch
        if images.dim() != 4 or images.shape[0] != n:
            raise DataError(f"{what} takes {n} images (batch {self.update_batch} = "
                            f"{self.subdivisions} subdivisions x {self.mini_batch}) as "
                            f"[{n}, C, H, W]; got {tuple(images.shape)}")
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise DataError(f"targets must be [M, 6] rows (image, class, cx, cy, w, h); got "
                            f"{tuple(targets.shape)}")
        if targets.numel():
            idx = targets[:, 0]
            if bool((idx < 0).any()) or bool((idx >= n).any()) or bool((idx != idx.floor()).any()):
                raise DataError(f"targets[:, 0] must be image indices in 0..{n - 1}")

    def step(self, images: Tensor, targets: Tensor) -> StepResult:
        """One darknet update on ``images`` Tensor[batch, C, H, W] and ``targets`` Tensor[M, 6]:
        :meth:`forward_backward` then :meth:`update`."""
        passes = self.forward_backward(images, targets)
        rate = self.update()
        result = StepResult(rate, self.iteration, self.seen, self.mini_batch, passes)
        self.last = result
        return result

    def forward_backward(self, images: Tensor, targets: Tensor) -> list[PassResult]:
        """The ``subdivisions`` passes of an update, without the update: afterwards
        :attr:`updates` holds darknet's pre-update buffers (carry-over + fresh
        negative gradient)."""
        self._check_batch(images, targets)
        return [self.train_pass(*split_pass(images, targets, j, self.mini_batch))
                for j in range(self.subdivisions)]

    def train_pass(self, images: Tensor, targets: Tensor) -> PassResult:
        """One subdivision pass: ``seen += mini_batch``, a training forward on
        ``images`` Tensor[mini_batch, C, H, W], the head losses on ``targets``
        Tensor[M, 6] (image index within this pass), and darknet's backward added
        into the update buffers.  ``subdivisions`` of them, then :meth:`update`,
        make one darknet update (:func:`split_pass` cuts an update batch)."""
        self._check_batch(images, targets, "a pass")
        if not self._synced:  # every rank starts from rank 0's weights and statistics
            ddp.broadcast_(self.model.state_dict().values())
            self._synced = True
        if self._passes == 0:
            self._refresh_frozen()
        self._passes += 1
        device = self._device()
        self.model.train()
        self.seen += self.mini_batch
        self.model.seen = self.seen      # heads read it (pjreddie region prior term)
        return self._pass(images.to(device), targets.to(device))

    def update(self) -> float:
        """Darknet's ``update_network`` with the rate of the current ``seen``; returns the rate."""
        rate = get_lr(self.iteration, self.schedule)
        if self.world_size > 1:  # the same update on every rank
            ddp.average_([self._buffer(key, p) for _, _, _, key, p in self._named_params()])
        self._update(rate)
        if self.world_size > 1:  # and the same statistics
            ddp.average_([b for name, b in self.model.named_buffers()
                          if name.endswith(("rolling_mean", "rolling_variance"))])
        self._passes = 0
        return rate

    def _pass(self, x: Tensor, targets: Tensor) -> PassResult:
        model = self.model
        if self.amp is not None:
            _check_amp(self.mode, x.device)
            with torch.autocast(x.device.type, dtype=AMP_DTYPES[x.device.type]):
                outs = model(x)
            outs = [o.float() for o in outs]      # heads and loss in float32
        else:
            outs = model(x)
        heads = [model.module_list[i] for i in model.heads]
        if heads:
            outs = [head_backward(h, o) for h, o in zip(heads, outs)]
        loss, stats = self.loss_fn(outs, targets)
        if loss.requires_grad:
            (loss * self.amp.scale if self.amp is not None else loss).backward()
        if self.amp is not None and not self.amp.unscale_(
                p.grad for *_, p in self._named_params() if p.grad is not None):
            for *_, p in self._named_params():   # an overflow: this pass adds nothing
                p.grad = None
            self.backward.bias_parts.clear()
        self._accumulate()
        head_costs = {}
        total = f32(0)
        for h, s in zip(heads, stats):
            c = _head_cost(s, float(loss.detach()))
            head_costs[h.index] = c
            total = total + f32(c)
        cost = float(total / f32(len(head_costs))) if head_costs else float(loss.detach())
        bstats = {m.index: m.last_batch_stats for m in model.module_list
                  if getattr(m, "batch_normalize", False) and hasattr(m, "last_batch_stats")}
        return PassResult(self.seen, cost, head_costs, stats, float(loss.detach()), bstats)

    def _named_params(self):
        for i, layer in enumerate(self.model.module_list):
            for name, p in layer.named_parameters():
                if p.requires_grad:
                    yield i, layer, name, f"module_list.{i}.{name}", p

    def _buffer(self, key: str, p: Tensor) -> Tensor:
        u = self.updates.get(key)
        if u is None:
            u = self.updates[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return u

    @torch.no_grad()
    def _accumulate(self) -> None:
        """Darknet's buffers hold the NEGATIVE gradient, summed over passes."""
        parts = self.backward.bias_parts
        for _, _, _, key, p in self._named_params():
            if p.grad is not None:
                per_image = parts.pop(p, None)
                if per_image is None:
                    self._buffer(key, p).sub_(p.grad)
                else:                        # darknet's backward_bias: one image at a time
                    u = self._buffer(key, p)
                    for row in per_image:
                        u.sub_(row)
                p.grad = None
        parts.clear()

    @torch.no_grad()
    def _update(self, rate: float) -> None:
        for i, layer, name, key, p in self._named_params():
            if not self._updated(i):
                continue
            decay = self.decay if name.rsplit(".", 1)[-1] in DECAYED else None
            darknet_update_(p, self._buffer(key, p), layer_rate(rate, layer.lr_scale),
                            self.update_batch, self.momentum, decay)

    # ------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """Optimiser state to resume exactly: ``seen``, the mode and darknet's update
        (momentum) buffers by parameter name."""
        state = {"seen": self.seen, "mode": self.mode,
                 "updates": {k: v.detach().clone() for k, v in self.updates.items()},
                 **self.backward.state_dict()}
        if self.amp is not None:
            state["amp"] = self.amp.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s content; a state that does not fit this
        model is a :class:`~darknet_py.errors.CheckpointError` saying what differs."""
        if not isinstance(state, dict) or not isinstance(state.get("updates"), dict) \
                or "seen" not in state:
            got = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"not a Trainer state: expected the keys 'seen' and 'updates' "
                                  f"(a dict of tensors), got {got}")
        params = dict(self.model.named_parameters())
        unknown = sorted(set(state["updates"]) - set(params))
        if unknown:
            raise CheckpointError(f"update buffers for parameters this model does not have: "
                                  f"{unknown[:5]} (a state of another network?)")
        for k, v in state["updates"].items():
            if not isinstance(v, Tensor) or tuple(v.shape) != tuple(params[k].shape):
                shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise CheckpointError(f"update buffer {k} has shape {shape}, the model's "
                                      f"parameter {tuple(params[k].shape)} (another cfg?)")
        self.updates = {k: v.detach().to(params[k].device, params[k].dtype).clone()
                        for k, v in state["updates"].items()}
        self.backward.load_state_dict(state, self._device())
        if self.amp is not None and "amp" in state:
            self.amp.load_state_dict(state["amp"])
        self.seen = int(state["seen"])
        self.model.seen = self.seen

    def close(self) -> None:
        """Remove the forward hooks this trainer put on the model (frozen layers)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.backward.remove()


def _check_amp(mode: str, device: torch.device) -> None:
    if mode != "autograd":
        raise TrainingError(f"amp=True (mixed precision) needs mode='autograd': mode={mode!r} "
                            f"computes darknet's float32 gradients")
    if device.type not in AMP_DTYPES:
        raise TrainingError(f"amp=True (mixed precision) runs on CUDA; the model is on "
                            f"{device.type} (train it in float32 there)")


def split_pass(images: Tensor, targets: Tensor, j: int, mini_batch: int) -> tuple[Tensor, Tensor]:
    """Pass ``j`` of an update batch: ``images[j*mini_batch:(j+1)*mini_batch]``
    (Tensor[mini_batch, C, H, W]) and the rows of ``targets`` Tensor[M, 6] of those
    images, re-indexed from 0 (darknet's subdivision ``j`` of ``batch``)."""
    lo = j * mini_batch
    keep = (targets[:, 0] >= lo) & (targets[:, 0] < lo + mini_batch)
    t = targets[keep].clone()
    t[:, 0] -= lo
    return images[lo:lo + mini_batch], t
