"""Training checkpoints: darknet's ``.weights`` naming rule, and the ``.pt``
that resumes a run exactly (weights, :class:`~darknet_py.Trainer` state, the
sampler position, the cfg text).  Both are written atomically (and fsynced)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_open, atomic_write

#: the keys of a resume checkpoint
STATE_KEYS = ("model", "trainer", "minibatch")


def iteration_checkpoint(i: int, dialect: str) -> bool:
    """Whether darknet writes ``<cfg>_<i>.weights`` after iteration ``i``: every
    100 below 1000 then every 10000 (pjreddie); every 10000 (AlexeyAB)."""
    if dialect == "pjreddie":
        return i % 10000 == 0 or (i < 1000 and i % 100 == 0)
    return i % 10000 == 0


def default_map_every(train_images: int, batch: int) -> int:
    """AlexeyAB's ``calc_map_for_each``: four epochs of iterations, at least 100."""
    return max(100, 4 * train_images // max(1, batch))


def param_digest(model: torch.nn.Module) -> str:
    """sha256 of every tensor of ``model.state_dict()`` (to compare ranks)."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_rank_digests(path: str | os.PathLike, model, main_rank: bool) -> bool:
    """Whether every process holds the same weights; the main one writes their
    digests to ``path`` as ``{"digests": [...]}`` (json)."""
    import json

    from . import distributed as ddp
    same, digests = ddp.all_equal(param_digest(model))
    if main_rank:
        atomic_write(Path(path), json.dumps({"digests": digests}).encode())
    return same


def save_state(path: str | os.PathLike, model, trainer, minibatch: int, cfg_text: str) -> None:
    """The resume checkpoint: what :func:`load_state` needs to continue exactly."""
    state = {"model": model.state_dict(), "trainer": trainer.state_dict(),
             "minibatch": int(minibatch), "cfg": cfg_text, "iteration": trainer.iteration}
    with atomic_open(Path(path), durable=True) as fh:
        torch.save(state, fh)


def load_state(path: str | os.PathLike, model, trainer, device=None) -> int:
    """Restore ``model`` and ``trainer`` from a :func:`save_state` file; returns the
    number of minibatches the run had drawn.  Anything that does not fit is one
    :class:`~darknet_py.errors.CheckpointError` naming the file."""
    file = str(path)
    if not os.path.isfile(file):
        raise CheckpointError("no such resume checkpoint", file)
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises pickle/zip errors of many kinds on a bad file
        hint = "; a darknet .weights file goes to --weights" if file.endswith(".weights") else ""
        raise CheckpointError(f"not a training checkpoint written by darknet_py (torch.load: "
                              f"{type(exc).__name__}){hint}", file) from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        got = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"not a resume checkpoint: expected the keys {list(STATE_KEYS)}, "
                              f"got {got}", file)
    try:
        result = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise CheckpointError(f"its weights do not fit this cfg: {first.strip()}", file) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"its weights do not fit this cfg: missing {result.missing_keys[:4]}, "
                              f"unexpected {result.unexpected_keys[:4]}", file)
    try:
        trainer.load_state_dict(state["trainer"])
    except CheckpointError as exc:
        raise CheckpointError(str(exc), file) from None
    model.seen = trainer.seen
    return int(state["minibatch"])
