"""Hierarchical softmax (yolo9000 / darknet9000): darknet's ``tree`` and what reads it.

A tree file has one line per class, ``name parent``: ``parent`` is the line
index (from 0) of the class's parent, -1 for a root.  Darknet's ``read_tree``
cuts the lines into *groups*: a group is a maximal run of consecutive lines
with the same parent (so siblings must be contiguous to share one softmax).
From that it derives, per class ``j``: ``group[j]`` (its run), ``leaf[j]``
(no line names it as parent) and, pjreddie only, ``child[j]`` (the run of the
last line whose parent is ``j``, -1 when none); per group ``group_offset`` and
``group_size``.

Darknet reads anything (an empty line is a root named "", a missing number is
-1, a parent pointing forward writes out of bounds); here a line must be
``name integer`` with the parent -1 or an earlier line, and the first line is
therefore a root.  For such files the groups are exactly darknet's.

What uses the tree:

* :func:`group_softmax` -- ``softmax_tree``: a softmax over each group of the
  class entries, ``exp(x/t - max/t) / sum`` per group;
* :func:`hierarchy_predictions` -- each class probability times its parent's
  (already multiplied) one, in class order: the probability of the path;
* :func:`hierarchy_top_prediction` -- pjreddie's walk down from group 0 with
  ``hier_thresh``; :func:`last_above` -- AlexeyAB's "highest class index whose
  path probability is > .5";
* :func:`path_probability` / :func:`tree_class_delta` -- the loss
  (``get_hierarchy_probability`` / the tree branch of ``delta_region_class``).

The cfg gives the file path relative to the directory darknet runs in;
:func:`load_tree` tries the current directory, then the cfg file's folder.
``map=`` (a [region] option) names a file of one integer per line, the tree
class of each label class: :func:`load_class_map`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
import numpy as np
import torch
from torch import Tensor

from .cfg import Section

F32 = np.float32

_INT = re.compile(r"[+-]?\d+")


class _FormatError(ValueError):
    """A line of a tree or map file darknet would misread (line number, message)."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, eq=False)
class Tree:
    """darknet's ``tree`` of ``n`` classes in ``groups`` groups.

    ``parent``, ``group``, ``child``, ``depth``: ``int64 [n]``; ``leaf``:
    ``bool [n]``; ``group_offset``, ``group_size``: ``int64 [groups]``;
    ``members``: ``int64 [groups, max group size]`` the classes of each group,
    padded with -1; ``path``: ``int64 [n, max depth + 1]`` each class then its
    ancestors up to the root, padded with -1; ``levels``: the classes of depth
    1, 2, ... (a parent is always on the level before its child).
    """

    file: str
    names: tuple[str, ...]
    parent: np.ndarray
    group: np.ndarray
    group_offset: np.ndarray
    group_size: np.ndarray
    child: np.ndarray
    leaf: np.ndarray
    depth: np.ndarray
    members: np.ndarray
    path: np.ndarray
    levels: tuple[np.ndarray, ...] = field(repr=False)

    @property
    def n(self) -> int:
        return int(self.parent.shape[0])

    @property
    def groups(self) -> int:
        return int(self.group_offset.shape[0])

    def group_index(self, device: torch.device | str | None = None) -> Tensor:
        """``Tensor[n]`` long: the group of each class (the softmax segments)."""
        return torch.as_tensor(self.group, dtype=torch.long, device=device)


# ------------------------------------------------------------------ reading
def _lines(text: str) -> list[str]:
    """darknet's ``fgetl`` loop: lines without their newline; a final newline ends
    the last line rather than starting an empty one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split("\x00", 1)[0] for line in lines]


def parse_tree(text: str, file: str = "<tree>") -> Tree:
    """A :class:`Tree` from the text of a tree file (raises ``_FormatError``)."""
    names: list[str] = []
    parents: list[int] = []
    for i, line in enumerate(_lines(text)):
        parts = line.split()
        if len(parts) != 2 or not _INT.fullmatch(parts[1]):
            raise _FormatError(i + 1, f"expected 'name parent_index', got {line.strip()!r}")
        parent = int(parts[1])
        if parent != -1 and not 0 <= parent < i:
            earlier = f"0..{i - 1} or -1" if i else "-1 (the first line is a root)"
            raise _FormatError(i + 1, f"parent {parent} of {parts[0]!r} must be an earlier line "
                                      f"({earlier})")
        names.append(parts[0])
        parents.append(parent)
    if not parents:
        raise _FormatError(1, "the tree has no entries")
    return _derive(file, tuple(names), np.asarray(parents, dtype=np.int64))


def _derive(file: str, names: tuple[str, ...], parent: np.ndarray) -> Tree:
    n = parent.shape[0]
    starts = np.ones(n, dtype=bool)
    starts[1:] = parent[1:] != parent[:-1]          # a new group where the parent changes
    group = np.cumsum(starts) - 1
    group_offset = np.nonzero(starts)[0].astype(np.int64)
    group_size = np.diff(np.append(group_offset, n)).astype(np.int64)
    has_parent = parent >= 0
    child = np.full(n, -1, dtype=np.int64)
    np.maximum.at(child, parent[has_parent], group[has_parent])  # the last run of children wins
    leaf = np.ones(n, dtype=bool)
    leaf[parent[has_parent]] = False
    depth = np.zeros(n, dtype=np.int64)
    for j in np.nonzero(has_parent)[0]:             # parents come first
        depth[j] = depth[parent[j]] + 1
    path = np.full((n, int(depth.max()) + 1), -1, dtype=np.int64)
    path[:, 0] = np.arange(n)
    for d in range(1, path.shape[1]):
        prev = path[:, d - 1]
        path[:, d] = np.where(prev >= 0, parent[np.maximum(prev, 0)], -1)
    members = np.full((group_offset.shape[0], int(group_size.max())), -1, dtype=np.int64)
    col = np.arange(n) - group_offset[group]
    members[group, col] = np.arange(n)
    levels = tuple(np.nonzero(depth == d)[0] for d in range(1, path.shape[1]))
    return Tree(file, names, parent, group.astype(np.int64), group_offset, group_size, child,
                leaf, depth, members, path, levels)


def parse_class_map(text: str, classes: int) -> np.ndarray:
    """``read_map``: one integer per line, each a class of the ``classes``-class tree."""
    values = []
    for i, line in enumerate(_lines(text)):
        s = line.strip()
        if not _INT.fullmatch(s):
            raise _FormatError(i + 1, f"expected one integer (a tree class), got {line.strip()!r}")
        v = int(s)
        if not 0 <= v < classes:
            raise _FormatError(i + 1, f"class {v} is outside 0..{classes - 1}")
        values.append(v)
    if not values:
        raise _FormatError(1, "the map has no entries")
    return np.asarray(values, dtype=np.int64)


def candidate_paths(path: str, cfg_file: str) -> list[str]:
    """Where darknet_py looks for a file named in a cfg: as given (relative to the
    current directory, like darknet), then relative to the cfg file's folder."""
    if os.path.isabs(path):
        return [path]
    tried = [os.path.abspath(path)]
    if cfg_file and not cfg_file.startswith("<"):
        beside = os.path.abspath(os.path.join(os.path.dirname(cfg_file), path))
        if beside not in tried:
            tried.append(beside)
    return tried


def _read_beside_cfg(sec: Section, key: str) -> tuple[str, str]:
    """(resolved path, text) of the file named by ``sec[key]``, or one CfgError."""
    value = sec[key]
    tried = candidate_paths(value, sec.file)
    for p in tried:
        if os.path.isfile(p):
            try:
                with open(p, "rb") as fh:
                    return p, fh.read().decode("utf-8", errors="replace")
            except OSError as exc:
                raise sec.error(f"{key}={value}: cannot read {p}: {exc.strerror}", key) from None
    raise sec.error(f"{key}={value}: file not found (tried {', '.join(tried)}); darknet reads it "
                    f"when the cfg is loaded", key)


def load_tree(sec: Section, key: str = "tree") -> Tree:
    """The tree named by ``sec[key]``, parsed once; a missing or malformed file is
    one :class:`CfgError` at the cfg line of ``key``."""
    path, text = _read_beside_cfg(sec, key)
    try:
        return parse_tree(text, path)
    except _FormatError as exc:
        raise sec.error(f"{key}={sec[key]}: {path}:{exc}", key) from None


def load_class_map(sec: Section, classes: int, key: str = "map") -> np.ndarray:
    """``int64 [labels]``: the file named by ``sec[key]`` (``read_map``)."""
    path, text = _read_beside_cfg(sec, key)
    try:
        return parse_class_map(text, classes)
    except _FormatError as exc:
        raise sec.error(f"{key}={sec[key]}: {path}:{exc}", key) from None


def check_tree_size(sec: Section, tree: Tree, expected: int, what: str, key: str = "tree") -> None:
    if tree.n != expected:
        raise sec.error(f"{key}={sec[key]}: the tree has {tree.n} entries but the layer has "
                        f"{expected} {what}", key)


# ------------------------------------------------------------------ forward
def group_softmax(x: Tensor, dim: int, group: Tensor, groups: int, temperature: float = 1.0) -> Tensor:
    """``softmax_tree``: along ``dim`` of ``x`` (size ``n``), a softmax within each
    group, ``exp(x/t - max/t) / sum`` (``group``: ``Tensor[n]`` long, the group
    of each entry, ``groups`` of them).  Returns a tensor of ``x``'s shape."""
    dim = dim % x.dim()
    view = [1] * x.dim()
    view[dim] = -1
    index = group.to(x.device).view(view).expand_as(x)
    seg_shape = list(x.shape)
    seg_shape[dim] = groups
    largest = torch.full(seg_shape, float("-inf"), dtype=x.dtype, device=x.device)
    largest = largest.scatter_reduce(dim, index, x.detach(), "amax", include_self=True)
    t = temperature
    e = torch.exp(x / t - torch.gather(largest, dim, index) / t)
    total = torch.zeros(seg_shape, dtype=x.dtype, device=x.device).scatter_add(dim, index, e)
    return e / torch.gather(total, dim, index)


# ------------------------------------------------------------------ decoding (float32)
def hierarchy_predictions(p: np.ndarray, tree: Tree) -> np.ndarray:
    """``hierarchy_predictions`` (only_leaves=0) on rows ``float32 [K, n]``: for
    ``j`` in class order ``p[j] *= p[parent[j]]`` (float products); a new array."""
    out = np.array(p, dtype=F32, copy=True)
    for nodes in tree.levels:  # a level only reads the finished level above it
        out[:, nodes] = out[:, nodes] * out[:, tree.parent[nodes]]
    return out


def _group_max(cum: np.ndarray, rows: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """darknet's ``if (val > max)`` scan from ``max = 0, max_i = 0`` over each row's
    group: (max float32 [k], max_i [k]); only values > 0 can win, the first wins."""
    valid = members >= 0
    vals = cum[rows[:, None], np.maximum(members, 0)]
    vals = np.where(valid & (vals > 0), vals, F32(0)).astype(F32)  # NaN > max is false
    best = np.argmax(vals, axis=1)
    mx = vals[np.arange(len(rows)), best]
    max_i = np.where(mx > 0, members[np.arange(len(rows)), best], 0)
    return mx, max_i


def hierarchy_top_prediction(cum: np.ndarray, tree: Tree, thresh: float) -> np.ndarray:
    """pjreddie's ``hierarchy_top_prediction`` for every row of ``cum`` (``float32
    [K, n]``, after :func:`hierarchy_predictions`): ``int64 [K]`` the class.

    From group 0 with ``p = 1``: take the group's best class (``max_i``, 0 if no
    value is > 0); if ``p*max > thresh`` (float) go on with ``p = p*max`` into its
    children (return it when it has none); otherwise return ``max_i`` in group 0,
    else the parent of the current group."""
    K = cum.shape[0]
    t = F32(thresh)
    p = np.ones(K, F32)
    group = np.zeros(K, np.int64)
    result = np.zeros(K, np.int64)
    active = np.arange(K)
    while active.size:  # each step enters a later group: at most `groups` steps
        g = group[active]
        mx, max_i = _group_max(cum, active, tree.members[g])
        pm = (p[active] * mx).astype(F32)
        deeper = pm > t
        child = tree.child[max_i]
        stop_here = (deeper & (child < 0)) | (~deeper & (g == 0))
        result[active[stop_here]] = max_i[stop_here]
        back = ~deeper & (g != 0)
        result[active[back]] = tree.parent[tree.group_offset[g[back]]]
        go = deeper & (child >= 0)
        p[active[go]] = pm[go]
        group[active[go]] = child[go]
        active = active[go]
    return result


def last_above(cum: np.ndarray, level: float = 0.5) -> np.ndarray:
    """AlexeyAB's scan from the last class down: ``int64 [K]`` the highest class
    index whose value is > ``level`` (-1 when none)."""
    above = cum > level
    n = cum.shape[1]
    last = n - 1 - np.argmax(above[:, ::-1], axis=1)
    return np.where(above.any(axis=1), last, -1)


# ------------------------------------------------------------------ loss
def path_probability(p: Tensor, c: Tensor, path: Tensor) -> Tensor:
    """``get_hierarchy_probability``: ``Tensor[K]`` the product of ``p[k]`` (``[K, n]``)
    along the path of class ``c[k]``, multiplied leaf first (``path``: the
    tree's ``[n, L]`` table on ``p``'s device)."""
    nodes = path[c]                                 # [K, L]
    valid = nodes >= 0
    vals = torch.gather(p, 1, nodes.clamp(min=0))
    prob = torch.ones_like(p[:, 0])
    for d in range(nodes.shape[1]):
        prob = torch.where(valid[:, d], prob * vals[:, d], prob)
    return prob


def tree_class_delta(D: Tensor, P: Tensor, c: Tensor, scale: Tensor | float, tree: Tree
                     ) -> tuple[Tensor, Tensor]:
    """The tree branch of ``delta_region_class`` on K slots: ``(delta [K, n], pred [K])``.

    For class ``c`` and each ancestor: every class of its group gets
    ``scale * (0 - p)``, the node itself ``scale * (1 - p)``; the other entries
    keep ``D``.  ``pred`` is the path probability (the stats' class average)."""
    dev = P.device
    K = c.numel()
    path = torch.as_tensor(tree.path, device=dev)
    group = tree.group_index(dev)
    nodes = path[c]                                 # [K, L]
    valid = nodes >= 0
    spare = tree.groups                             # padding goes to a column dropped below
    hit = torch.where(valid, group[nodes.clamp(min=0)], spare)
    on_path = torch.zeros(K, spare + 1, dtype=torch.bool, device=dev)
    on_path.scatter_(1, hit, True)
    scale = torch.as_tensor(scale, dtype=P.dtype, device=dev).reshape(-1, 1).expand(K, 1)
    out = torch.where(on_path[:, :spare][:, group], scale * (0 - P), D)
    rows = torch.arange(K, device=dev)[:, None].expand_as(nodes)[valid]
    cols = nodes[valid]
    out[rows, cols] = scale[rows, 0] * (1 - P[rows, cols])
    return out, path_probability(P, c, path)


__all__ = ["Tree", "parse_tree", "parse_class_map", "load_tree", "load_class_map", "candidate_paths",
           "group_softmax", "hierarchy_predictions", "hierarchy_top_prediction", "last_above",
           "path_probability", "tree_class_delta", "check_tree_size"]
