"""Helpers to compare our tensors with darknet's stored ones, with a clear first-difference message.

Where the tests' tolerances come from:

* Against darknet's numbers (``../shared/conformance``): the manifest's rule of the case,
  read from the manifest (``tolerances.recommended`` of a case, ``recommended_tolerances``
  of a train case): 20 x the worst change darknet itself shows when rerun with 1-ulp
  perturbed inputs or weights, at least 1e-5 per layer and 1e-4 end to end.  Two float32
  programs of the same network (torch and onnxruntime, fused and unfused) are held to
  the same end-to-end rule, since it measures how far the network amplifies rounding.
* Against a case worked out by hand or a loop transcription of darknet's C code in
  float64: a float32 result of a few operations on O(1) values is within a few ulp of
  float32 (2**-24 = 6e-8 relative), so ``1e-6`` relative (16 ulp) or ``1e-5`` for chains
  of up to ~20 operations; bit-exact (``==`` / 0 ulp) where the arithmetic is the same
  float32 operations in the same order.
"""
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
