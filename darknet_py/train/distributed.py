"""Several processes training one model (``torch.distributed``), the way the
:class:`~darknet_py.train.Trainer` uses them.

Each rank runs darknet's passes on its own ``batch`` images; before the SGD
update the ranks' update buffers are averaged, so every rank applies the same
update, and after it the batch-norm rolling statistics are averaged, so every
rank also holds the same statistics.  Initial parameters and buffers come from
rank 0.  (Darknet's own multi-GPU training averages the weights every few
iterations instead; averaging the buffers keeps every update a darknet update.)

:func:`init_from_env` is the part a script needs under ``torchrun``.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Processes in the default group (1 when ``torch.distributed`` is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place)."""
    for t in tensors:
        dist.broadcast(t.data, src)


@torch.no_grad()
def average_(tensors: list[Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in place, with one collective.

    Tensors are flattened into one float buffer (grouped by dtype and device), summed
    with ``all_reduce`` and divided by the world size."""
    n = world_size()
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(n)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def init_from_env(device: str | None = None) -> tuple[int, int, torch.device]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) join the process
    group: gloo on CPU, nccl on CUDA with one GPU per local rank.  Returns
    ``(rank, world_size, device)``; a single process returns ``(0, 1, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank(), world_size(), dev


def all_equal(value) -> tuple[bool, list]:
    """Whether every rank holds the same picklable ``value``; also returns all of them."""
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return len(set(values)) == 1, values


def finish() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
