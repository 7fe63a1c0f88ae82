"""Every cfg of both darknets' cfg/ folders (conformance/zoo, unchanged).

Each cfg must parse and round-trip through the writer.  A cfg whose sections
darknet_py supports must build at its own [net] size (shape computation only:
on the ``meta`` device) and run a forward pass at the smallest multiple of 32
at which every layer's output has the shape the model announced (else at its
[net] size): batch 1, random weights, eval, no_grad, finite head outputs.
Cfgs whose layers are the same network (e.g. the same file in both folders)
run once.  ``BUILD_ONLY`` lists the few largest networks that are only built.
Every other cfg must fail with the DarknetError listed in ``CLEAR_ERRORS``
(worked out by reading the cfg), naming its file and line.  The counts are
printed after the module.
"""
from __future__ import annotations

import collections
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from darknet_py import Darknet, parse_cfg, write_cfg
from darknet_py.cfg import UnusedOptionWarning
from darknet_py.errors import CfgError, DarknetError
from darknet_py.options import LAYER_COMMON

from tests.conftest import CONFORMANCE, needs_shared

ZOO = CONFORMANCE / "zoo"
ZOO_CFGS = sorted(ZOO.glob("*/*.cfg"))
# darknet's own cfg files are not shipped with darknet_py (the golden subset leaves them out)
ZOO_IDS = [f"{p.parent.name}/{p.name}" for p in ZOO_CFGS]

#: cfgs that cannot be built: (error class, message regex, reason)
CLEAR_ERRORS: dict[str, tuple[type[DarknetError], str, str]] = {
    # the tree file (data/9k.tree, relative to where darknet runs) is not in the zoo
    "alexeyab/yolo9000.cfg": (CfgError, r"\[region\]: tree=data/9k\.tree: file not found",
                              "missing tree file (tree=)"),
    "pjreddie/yolo9000.cfg": (CfgError, r"\[region\]: tree=data/9k\.tree: file not found",
                              "missing tree file (tree=)"),
    "pjreddie/darknet9000.cfg": (CfgError, r"\[softmax\]: tree=data/9k\.tree: file not found",
                                 "missing tree file (tree=)"),
    # the last [yolo] has mask=16,17,18,19 with num=16: darknet reads past its biases
    "alexeyab/cspx-p7-mish.cfg": (CfgError, r"mask=16,17,18,19 refers to anchors outside 0\.\.15",
                                  "broken cfg (mask beyond num)"),
    # "61,45    61,45" lacks a comma: darknet's strip() reads 61,4561,45, so 31 numbers
    "alexeyab/cspx-p7-mish_hp.cfg": (CfgError, r"anchors= has 31 numbers but num=16 needs 32",
                                     "broken cfg (31 anchor numbers)"),
}

#: cfgs that fail because of a layer implementation (darknet_py/layers), not the cfg:
#: key -> reason (expected to fail; test_zoo_layer_bugs_still_fail notices a fix)
LAYER_BUGS: dict[str, str] = {}

#: the very largest networks, built (shapes) but not run, to keep the zoo test fast
BUILD_ONLY = {
    "alexeyab/vgg-16.cfg": "138M parameters at its [crop] size 224 (15 GFLOPs)",
    "pjreddie/vgg-16.cfg": "138M parameters at its [crop] size 224 (15 GFLOPs)",
    "alexeyab/cspx-p7-mish-omega.cfg": "159M parameters",
}

_OUTCOMES: dict[str, str] = {}   # zoo cfg -> what building it gave
_PARSED: set[str] = set()        # zoo cfgs that parsed and round-tripped


def _summary_lines() -> list[str]:
    counts = collections.Counter(_OUTCOMES.values())
    lines = [f"zoo: {len(_PARSED)} cfgs parsed and round-tripped; {len(_OUTCOMES)} built: "
             f"{counts.pop('built+ran', 0)} "
             f"built+ran ({len(_RAN)} distinct networks run), "
             f"{counts.pop('build-only', 0)} built only"]
    lines += [f"zoo:   {n} {reason}" for reason, n in sorted(counts.items())]
    return lines


@pytest.fixture(scope="module", autouse=True)
def _zoo_summary(request):
    """Print the counts after the module (past pytest's output capture)."""
    yield
    if not (_OUTCOMES or _PARSED):
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in _summary_lines():
            reporter.write_line(line)


def _key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


#: one block of U(-1, 1) numbers that every random weight tensor is a view of or scaled from
_BLOCK = torch.rand(1 << 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
_BIG = 1 << 16


def _shares_block(t: torch.Tensor) -> bool:
    return t.untyped_storage().data_ptr() == _BLOCK.untyped_storage().data_ptr()


class _BlockZeros(TorchFunctionMode):
    """While a model is built: a large ``torch.zeros`` is a view of ``_BLOCK`` instead of a
    fresh allocation (``_randomize`` then makes every such tensor right)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.zeros and not kwargs:
            shape = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            if all(isinstance(d, int) for d in shape) and _BIG <= math.prod(shape) <= _BLOCK.numel():
                return _BLOCK[:math.prod(shape)].view(shape)
        return func(*args, **kwargs)


def _build(cfg, size: int | None) -> Darknet:
    with _BlockZeros():
        return Darknet(cfg, width=size, height=size).eval()


def _tiled(shape: torch.Size, scale: float) -> torch.Tensor:
    """A new tensor of ``shape`` filled with ``scale * _BLOCK`` repeated."""
    data = torch.empty(shape).view(-1)
    for start in range(0, data.numel(), _BLOCK.numel()):
        n = min(_BLOCK.numel(), data.numel() - start)
        torch.mul(_BLOCK[:n], scale, out=data[start:start + n])
    return data.view(shape)


def _randomize(model: torch.nn.Module) -> None:
    """Random weights of variance 2/fan_in: a batch-normalised layer's weights are
    ``_BLOCK`` numbers (variance 1/3, a view when they fit) and its rolling variance is
    fan_in/6; other weights are scaled copies.  Biases stay 0, BN scales and shortcut
    weights 1."""
    with torch.no_grad():
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is None:
                    continue
                if name == "weights" and p.dim() >= 2:
                    fan_in = p.shape[-1] if p.dim() == 3 else p[0].numel()  # [local]: [loc][n][c*k*k]
                    if getattr(m, "batch_normalize", False) and "rolling_variance" in m._buffers:
                        fits = p.numel() <= _BLOCK.numel()
                        p.data = _BLOCK[:p.numel()].view(p.shape) if fits else _tiled(p.shape, 1.0)
                        m.rolling_variance.fill_(fan_in / 6.0)
                    else:
                        p.data = _tiled(p.shape, (6.0 / fan_in) ** 0.5)
                elif _shares_block(p):
                    p.data = torch.zeros(p.shape)
            for name, b in m._buffers.items():
                if b is not None and _shares_block(b):
                    m._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)


def _meta_build(cfg, size: int | None) -> Darknet:
    """Build with every tensor on the meta device: the shape computation only."""
    with torch.device("meta"):
        return Darknet(cfg, width=size, height=size)


def _run(model: Darknet, seed: int) -> dict[int, torch.Tensor] | None:
    """Every layer's output on a random image (random weights), or None when a layer's
    output does not have the shape the model announced."""
    _randomize(model)
    # recurrent layers read the batch as [net] time_steps steps: one sequence of that length
    n = max((getattr(layer, "steps", 1) for layer in model.module_list), default=1)
    x = torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outs = model.forward_all(x, keep=range(len(model.module_list)))
    if any(tuple(outs[i].shape) != (n, *model.shapes[i]) for i in range(len(model.module_list))):
        return None
    return outs


def _run_small(cfg, own: Darknet, seed: int) -> tuple[Darknet, dict[int, torch.Tensor]]:
    """Run at the smallest multiple of 32 below the [net] size at which every layer's
    output has the announced shape, else at the [net] size itself."""
    _, h, w = own.input_shape
    sizes = [] if (h, w) == (1, 1) else list(range(32, max(h, w), 32))  # (1, 1): inputs=
    for s in sizes:
        try:
            model = _build(cfg, s)
            outs = _run(model, seed)
        except (DarknetError, RuntimeError):
            continue  # too small for this network (a kernel larger than its input ...)
        if outs is not None:
            return model, outs
    model = _build(cfg, None)
    outs = _run(model, seed)
    assert outs is not None, "a layer's output differs from its announced shape at the [net] size"
    return model, outs


def _signature(cfg) -> tuple:
    """Equal for cfgs whose layers are the same network with the same options (the
    per-layer training bookkeeping of LAYER_COMMON, e.g. stopbackward, aside)."""
    net = cfg.net
    return (cfg.dialect, net["channels"], net["inputs"] if not net["width"] else 0,
            tuple((s.type, tuple(sorted((k, repr(v)) for k, v in s.options.items()
                                        if k not in LAYER_COMMON)))
                  for s in cfg.layers))


_RAN: dict[tuple, str] = {}  # network signature -> the zoo cfg that ran it


def test_zoo_present(conformance):
    if not ZOO.is_dir():
        needs_shared("zoo/ (every cfg of both darknets) is not in the shipped subset")
    assert ZOO_CFGS, f"no cfg found under {ZOO}"
    assert {p.parent.name for p in ZOO_CFGS} == {"pjreddie", "alexeyab"}


@pytest.mark.parametrize("path", ZOO_CFGS, ids=ZOO_IDS)
def test_zoo_parses_and_round_trips(path, conformance):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedOptionWarning)
        cfg = parse_cfg(path)
        text = write_cfg(cfg)
        again = parse_cfg(text, dialect=cfg.dialect, name="written")
    assert again == cfg
    assert write_cfg(again) == text
    assert len(cfg.sections) == sum(1 for line in path.read_text(errors="replace").splitlines()
                                    if re.match(r"\s*\[", line))
    _PARSED.add(_key(path))


@pytest.mark.parametrize("path", ZOO_CFGS, ids=ZOO_IDS)
def test_zoo_builds_and_runs(path, conformance):
    key = _key(path)
    if key in LAYER_BUGS:
        pytest.xfail(LAYER_BUGS[key])  # checked by test_zoo_layer_bugs_still_fail
    cfg = parse_cfg(path, warn_unused=False)
    if key in CLEAR_ERRORS:
        cls, pattern, reason = CLEAR_ERRORS[key]
        with pytest.raises(DarknetError) as info:
            _meta_build(cfg, None)
        err = info.value
        assert type(err) is cls, f"{type(err).__name__}: {err}"
        assert re.search(pattern, str(err)), str(err)
        assert str(err).startswith(f"{path}:{err.line}: ") and err.line >= 1
        _OUTCOMES[key] = f"clear {cls.__name__}: {reason}"
        return

    own = _meta_build(cfg, None)  # the [net] size: shape computation only
    if key in BUILD_ONLY:
        _OUTCOMES[key] = "build-only"
        return
    sig = _signature(cfg)
    if sig in _RAN:  # the same network already ran (e.g. the same cfg in both folders)
        _OUTCOMES[key] = "built+ran"
        return
    model, outs = _run_small(cfg, own, seed=len(key))
    heads = model.heads or [len(model.module_list) - 1]
    for i in heads:
        assert torch.isfinite(outs[i]).all(), f"layer {i} has non-finite outputs"
    _RAN[sig] = key
    _OUTCOMES[key] = "built+ran"


@pytest.mark.parametrize("key", sorted(LAYER_BUGS))
def test_zoo_layer_bugs_still_fail(key, conformance):
    """A known layer bug shows as announced shapes that a forward pass does not give;
    when this starts failing, the layer was fixed: move the cfg out of LAYER_BUGS."""
    cfg = parse_cfg(ZOO / key, warn_unused=False)
    try:
        outs = _run(_build(cfg, 128), seed=0)
    except (DarknetError, RuntimeError):
        outs = None
    assert outs is None
    _OUTCOMES[key] = "layer bug (see LAYER_BUGS)"


def test_zoo_tables_name_real_files(conformance):
    names = set(ZOO_IDS)
    assert set(CLEAR_ERRORS) | set(LAYER_BUGS) | set(BUILD_ONLY) <= names
