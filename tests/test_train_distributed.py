"""``Trainer`` under ``torch.distributed`` (2 CPU processes, gloo), used from
Python as a library user would: both ranks end with the same weights, and
those are the weights of ONE process training on both ranks' images.

The math (N ranks, each ``B`` images in ``S`` passes; one process with ``N*B``
images in ``N*S`` passes, the same images in rank order).  Darknet's buffer
``U`` sums the negative per-pass gradients; an update is
``U += -decay*B*w;  w += (lr/B)*U;  U *= momentum``.  Each pass's gradient
depends only on the weights and that pass's images (batch-norm uses the
pass's own batch statistics), so with equal weights the passes give equal
gradients ``g``.  The ranks average ``U_r = C - sum_r g``; the one process
holds ``U = N*C - sum_all g = N * mean_r(U_r)``, and it uses ``N*B`` where the
ranks use ``B``: ``-decay*NB*w = N*(-decay*B*w)`` and ``lr/(NB) * N*X = lr/B * X``.
So the updates agree, and the one process's buffer stays ``N`` times the
ranks' average.  In float32, for N=2 and S=1: multiplying by 2 is exact and
``(-g0) + (-g1)`` is one commutative rounding, so the FIRST update is bit
for bit the same; from the second on the sums round in a different order
(bound below).  The rolling statistics are not the one process's: each rank
applies darknet's ``r = .99 r + .01 m`` over its own passes and the ranks
average the results, which is what the oracle computes from the one
process's per-pass batch statistics.
"""
from __future__ import annotations

import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from darknet_py import Darknet, Trainer

EPS = float(np.finfo(np.float32).eps)
B, WORLD, STEPS, LR, DECAY = 2, 2, 2, 0.01, 0.0005
CFG = f"""[net]
batch={B}
subdivisions=1
width=32
height=32
channels=3
momentum=0.9
decay={DECAY}
learning_rate={LR}
burn_in=0
max_batches=10
policy=constant

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 24,24
classes=2
num=3
jitter=0
ignore_thresh=.7
truth_thresh=1
random=0
"""


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's WORLD*B images Tensor[4, 3, 32, 32] and targets Tensor[M, 6]."""
    g = torch.Generator().manual_seed(1000 + step)
    images = torch.rand(WORLD * B, 3, 32, 32, generator=g)
    rows = []
    for i in range(WORLD * B):
        for _ in range(1 + i % 2):
            cls = float(torch.randint(2, (1,), generator=g))
            cx, cy = (0.2 + 0.6 * torch.rand(2, generator=g)).tolist()
            w, h = (0.1 + 0.4 * torch.rand(2, generator=g)).tolist()
            rows.append([i, cls, cx, cy, w, h])
    return images, torch.tensor(rows)


def _rank_slice(images, targets, r):
    keep = (targets[:, 0] >= r * B) & (targets[:, 0] < (r + 1) * B)
    t = targets[keep].clone()
    t[:, 0] -= r * B
    return images[r * B:(r + 1) * B], t


def _worker(rank: int, port: int, cfg: str, out: str, threads: int) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=WORLD)
    torch.set_num_threads(threads)
    torch.manual_seed(100 + rank)  # different initial weights: rank 0's must win
    model = Darknet(cfg)
    trainer = Trainer(model)
    states = []
    for step in range(STEPS):
        trainer.step(*_rank_slice(*_data(step), rank))
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    torch.save({"states": states, "seen": trainer.seen, "world": trainer.world_size},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rolling(r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return 0.99 * r + 0.01 * m   # darknet's pjreddie rolling update, in float64 here


def test_two_ranks_equal_one_process_on_both_batches(tmp_path):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(CFG)
    # the ranks run with this process's thread count, which the oracle below keeps: oneDNN's
    # channels-last weight gradient can change its rounding after a mid-process
    # torch.set_num_threads (seen once numba's kernels had run), which the bit-for-bit
    # comparison of step 1 would take for a difference between the two computations
    threads = torch.get_num_threads()
    mp.spawn(_worker, args=(_free_port(), str(cfg), str(tmp_path), threads), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["world"] == WORLD and ranks[0]["seen"] == STEPS * B  # each rank counts its images
    for a, b in zip(ranks[0]["states"], ranks[1]["states"]):
        for k in a:
            assert torch.equal(a[k], b[k]), f"ranks differ in {k}"

    # the oracle: one process, rank 0's initial weights, both ranks' images in rank order
    torch.manual_seed(100)
    model = Darknet(str(cfg))
    one = Trainer(model, batch=WORLD * B, subdivisions=WORLD)
    grads: list[dict[str, torch.Tensor]] = []
    accumulate = one._accumulate

    per_image: set[str] = set()   # biases: exact mode adds their gradient image by image

    def record():  # |gradient| of each pass, for the rounding bound
        parts = one.backward.bias_parts
        per_image.update(key for _, _, _, key, p in one._named_params() if p in parts)
        grads.append({key: parts[p].abs().sum(0) if p in parts else p.grad.abs().clone()
                      for _, _, _, key, p in one._named_params() if p.grad is not None})
        accumulate()
    one._accumulate = record
    rolling = {k: v.double().clone() for k, v in model.state_dict().items() if "rolling" in k}
    for step in range(STEPS):
        carry = {k: v.abs().clone() for k, v in one.updates.items()}
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        grads.clear()
        result = one.step(*_data(step))
        ddp = ranks[0]["states"][step]
        for k, p in model.named_parameters():
            if step == 0 and k not in per_image:
                # one commutative rounding and exact scalings by 2: bit for bit
                assert torch.equal(ddp[k], p.detach()), f"step 1: {k}"
                continue
            # the roundings of partial sums bounded by A (2N-1 of them, or one per image for
            # the biases), then the decay term, the scaling and the add to w: each rounding
            # <= eps/2 of what it rounds
            big = carry.get(k, 0) + sum(g[k] for g in grads) + DECAY * WORLD * B * before[k].abs()
            roundings = 2 * WORLD * B if k in per_image else 4
            tol = LR / (WORLD * B) * roundings * EPS * big + EPS * p.detach().abs()
            err = (ddp[k] - p.detach()).abs()
            assert bool((err <= tol).all()), f"step {step + 1}: {k} off by {float(err.max()):.3g}"
        # rolling statistics: the mean over the ranks of each rank's own sequence of passes
        for i, layer in enumerate(model.module_list):
            if not getattr(layer, "batch_normalize", False):
                continue
            for name, col in (("rolling_mean", 0), ("rolling_variance", 1)):
                key = f"module_list.{i}.{name}"
                per_rank = [_rolling(rolling[key], result.passes[r].batch_stats[i][col].double())
                            for r in range(WORLD)]
                rolling[key] = sum(per_rank) / WORLD
                # float32: 3 roundings per rank, the sum and the halving, each <= eps/2 of
                # magnitudes below |r| + |m0| + |m1|
                mags = rolling[key].abs() + sum(result.passes[r].batch_stats[i][col].double().abs()
                                                for r in range(WORLD))
                err = (ddp[key].double() - rolling[key]).abs()
                assert bool((err <= 4 * EPS * mags).all()), f"step {step + 1}: {key}"
                one_process = model.state_dict()[key].double()
                if step == 0:  # and they are not what one process holds (.99^2 r + ...)
                    assert not torch.allclose(one_process, rolling[key], rtol=0, atol=1e-9)
