"""Helpers to compare our tensors with darknet's stored ones, with a clear first-difference message."""
from __future__ import annotations

import numpy as np
import torch


def rel_diff(ours, ref) -> tuple[float, float]:
    """(max |ours - ref|, max(1, max |ref|))."""
    a = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    b = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    a = a.reshape(b.shape)
    return float(np.abs(a.astype(np.float64) - b).max()) if b.size else 0.0, max(1.0, float(np.abs(b).max()) if b.size else 1.0)


def first_difference(ours, ref, tol: float) -> str:
    a = (ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)).reshape(np.shape(ref))
    b = np.asarray(ref)
    bad = np.argwhere(np.abs(a - b) > tol)
    if not len(bad):
        return "no difference"
    idx = tuple(bad[0])
    return f"first difference at {idx}: ours {a[idx]!r}, darknet {b[idx]!r} ({len(bad)} entries over {tol:.3g})"
