"""The built-in training job (``python tools/train.py`` with no ``--data``/``--cfg``):
the packaged ``tiny-shapes.cfg`` (the same file as the checkout's
``cfg/tiny-shapes.cfg``, written by ``tools/make_cfgs.py``) on the synthetic
shapes dataset, generated once under the current directory."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: where the built-in job writes its dataset, relative to the current directory
DATA_DIR = Path("data") / "synthetic"
CFG_NAME = "tiny-shapes.cfg"


def builtin_cfg() -> Path:
    """The packaged cfg of the built-in job (a file installed with the package)."""
    return Path(str(resources.files("darknet_py.data").joinpath("builtin", CFG_NAME)))


def builtin_data(main_rank: bool = True) -> Path:
    """The synthetic dataset's ``.data`` file, generated in :data:`DATA_DIR` by the
    main process (the others wait for it under torch.distributed)."""
    from ..data import make_synthetic_dataset
    from . import distributed as ddp
    if main_rank:
        path = make_synthetic_dataset(DATA_DIR)
    if ddp.world_size() > 1:
        import torch.distributed as dist
        dist.barrier()
    return path if main_rank else make_synthetic_dataset(DATA_DIR)
