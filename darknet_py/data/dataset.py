"""The torch side: a detection Dataset, darknet's way of drawing minibatches,
and the collate that builds the loss's targets.

* :class:`DetectionDataset` turns an image (+ its boxes) into a
  ``Tensor[3, H, W]`` float RGB in [0, 1] and its truth ``Tensor[K, 5]``
  (class, cx, cy, w, h); in training with darknet's augmentation (and, for
  half of the samples as in AlexeyAB's loader, mosaic or mixup when the cfg
  enables one), in evaluation letterboxed or stretched, boxes left relative
  to the original.
  A key is ``(index, w, h, seed)`` so each sample is reproducible whichever
  worker loads it; a plain ``int`` uses the dataset's size and a seed fixed
  per index (the same augmentation every time: train with the sampler).
* :class:`DarknetBatchSampler` draws indices uniformly with replacement, as
  darknet's ``get_random_paths`` does, forever (darknet trains to
  ``max_batches``, not in epochs), with the size of each iteration from a
  :class:`~darknet_py.data.multiscale.MultiScaleSchedule`;
  :class:`DarknetUpdateSampler` groups them into whole updates (``batch``
  images, what :meth:`~darknet_py.Trainer.step` takes).
* :func:`collate` stacks a :class:`Batch`: ``images`` ``Tensor[B, 3, H, W]``,
  ``targets`` ``Tensor[M, 6]`` rows (image index in batch, class, cx, cy, w, h).

Images that cannot be decoded are logged, replaced by another random image in
training (skipped in evaluation), and listed in ``Batch.failed`` so the caller
can count them across worker processes.
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from ..image import load_image
from . import image_ops
from .augment import AugmentConfig, augment
from .mixup import mixup
from .mosaic import mosaic
from .multiscale import MultiScaleSchedule
from .rng import coin
from .sources import LabeledImages

log = logging.getLogger("darknet_py.data")
#: images whose loading failure was already logged (in this process)
_REPORTED: set[str] = set()

Key = tuple[int, int, int, int]  # (index, w, h, seed)


@dataclass
class Sample:
    """One loaded image.  ``image`` is None when it could not be loaded (evaluation)."""

    image: Tensor | None      # Tensor[3, H, W] float32
    truth: Tensor             # Tensor[K, 5] (class, cx, cy, w, h)
    index: int
    size: tuple[int, int]     # (w, h) of the original image
    failed: list[str]


class Batch(NamedTuple):
    images: Tensor            # Tensor[B, 3, H, W] float32
    targets: Tensor           # Tensor[M, 6] (image, class, cx, cy, w, h)
    indices: list[int]        # dataset index of each image
    sizes: list[tuple[int, int]]  # original (w, h) of each image
    failed: list[str]         # images that could not be loaded


def _chw(img: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class DetectionDataset(Dataset):
    """Images and boxes of a :class:`LabeledImages`, at ``width x height``.

    ``augment``: an :class:`AugmentConfig` for training, None for evaluation;
    ``letterbox`` (evaluation): keep the aspect ratio as darknet's letterbox
    does instead of stretching.  Evaluation resizing goes through OpenCV
    (darknet's geometry, not its exact bilinear values); for darknet-exact
    inference use :mod:`darknet_py.detect` (as :func:`darknet_py.metrics.evaluate_model` does).
    """

    def __init__(self, source: LabeledImages, width: int, height: int, *,
                 augment: AugmentConfig | None = None, letterbox: bool = False,
                 seed: int = 0, max_load_attempts: int = 20):
        if len(source) == 0:
            raise DataError("the dataset has no images")
        self.source = source
        self.width, self.height = int(width), int(height)
        self.augment = augment
        self.letterbox = letterbox
        self.seed = seed
        self.max_load_attempts = max_load_attempts

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, index: int, failed: list[str]) -> np.ndarray | None:
        path = self.source.images[index]
        try:
            return load_image(path)  # the one loader detect and map use too
        except DataError as exc:
            if str(path) not in _REPORTED:  # once per image, not at every epoch or mosaic
                _REPORTED.add(str(path))
                log.warning("%s (skipped)", exc)
            failed.append(str(path))
            return None

    def _read_or_replace(self, index: int, rng: np.random.Generator,
                         failed: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        for _ in range(self.max_load_attempts):
            img = self._read(index, failed)
            if img is not None:
                return img, self.source.labels[index], index
            index = int(rng.integers(len(self)))
        raise DataError(f"{self.max_load_attempts} images in a row could not be loaded "
                        f"(last: {failed[-1]})")

    def __getitem__(self, key: int | Sequence[int]) -> Sample:
        if isinstance(key, (int, np.integer)):
            index, w, h, seed = int(key), self.width, self.height, self.seed * 1_000_003 + int(key)
        else:
            index, w, h, seed = (int(v) for v in key)
        failed: list[str] = []
        if self.augment is None:
            return self._eval_sample(index, w, h, failed)
        rng = np.random.default_rng(seed)
        cfg = self.augment
        img, labels, index = self._read_or_replace(index, rng, failed)
        size = (img.shape[1], img.shape[0])
        combine = None
        if cfg.dialect == "alexeyab" and (cfg.mosaic or cfg.mixup) and coin(rng):
            combine, n_parts = (mosaic, 4) if cfg.mosaic else (mixup, 2)
        if combine is not None:
            parts = {index: (img, labels)}
            others = [int(rng.integers(len(self))) for _ in range(n_parts - 1)]

            def load(i: int) -> tuple[np.ndarray, np.ndarray]:
                if i not in parts:
                    im, lab, _ = self._read_or_replace(i, rng, failed)
                    parts[i] = (im, lab)
                return parts[i]

            out, truth = combine(load, [index] + others, rng, w, h, cfg)
        else:
            out, truth = augment(img, labels, rng, w, h, cfg)
        return Sample(_chw(out), torch.from_numpy(truth), index, size, failed)

    def _eval_sample(self, index: int, w: int, h: int, failed: list[str]) -> Sample:
        img = self._read(index, failed)
        truth = torch.from_numpy(self.source.labels[index].copy())
        if img is None:
            return Sample(None, truth, index, (0, 0), failed)
        size = (img.shape[1], img.shape[0])
        out = image_ops.letterbox_uint8(img, w, h) if self.letterbox else image_ops.resize_uint8(img, w, h)
        return Sample(_chw(out), truth, index, size, failed)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples (all of one size) into a :class:`Batch`; samples without an
    image (failed in evaluation) are left out and only listed in ``failed``."""
    failed = [f for s in samples for f in s.failed]
    kept = [s for s in samples if s.image is not None]
    if not kept:
        return Batch(torch.zeros(0, 3, 0, 0), torch.zeros(0, 6), [], [], failed)
    images = torch.stack([s.image for s in kept])
    rows = []
    for b, s in enumerate(kept):
        if len(s.truth):
            rows.append(torch.cat([torch.full((len(s.truth), 1), float(b)), s.truth.float()], 1))
    targets = torch.cat(rows) if rows else torch.zeros(0, 6)
    return Batch(images, targets, [s.index for s in kept], [s.size for s in kept], failed)


class DarknetBatchSampler(Sampler[list[Key]]):
    """Minibatches of keys ``(index, w, h, seed)`` drawn as darknet draws them.

    Minibatch ``k`` (counted over the whole training, so a resumed run starts
    at ``start_minibatch``) takes ``minibatch`` indices uniformly with
    replacement from a generator seeded by ``(seed, rank, k)``; its size is
    ``schedule.size((k - start_minibatch) // subdivisions)`` (one darknet
    iteration = ``subdivisions`` minibatches) or the fixed ``size``.
    ``num_minibatches=None`` iterates forever.  DDP ranks pass their ``rank``:
    they draw different images but always the same size.
    """

    def __init__(self, n_items: int, minibatch: int, *, size: tuple[int, int],
                 subdivisions: int = 1, schedule: MultiScaleSchedule | None = None,
                 seed: int = 0, rank: int = 0, start_minibatch: int = 0,
                 num_minibatches: int | None = None):
        if n_items <= 0 or minibatch <= 0 or subdivisions <= 0:
            raise DataError(f"bad sampler sizes: {n_items} items, minibatch {minibatch}, "
                            f"subdivisions {subdivisions}")
        self.n_items, self.minibatch, self.size = n_items, minibatch, size
        self.subdivisions, self.schedule = subdivisions, schedule
        self.seed, self.rank = seed, rank
        self.start_minibatch, self.num_minibatches = start_minibatch, num_minibatches

    def minibatch_keys(self, k: int) -> list[Key]:
        rng = np.random.default_rng([self.seed, self.rank, k])
        indices = rng.integers(self.n_items, size=self.minibatch)
        seeds = rng.integers(2 ** 62, size=self.minibatch)
        if self.schedule is not None:
            w, h = self.schedule.size((k - self.start_minibatch) // self.subdivisions)
        else:
            w, h = self.size
        return [(int(i), int(w), int(h), int(s)) for i, s in zip(indices, seeds)]

    def __iter__(self) -> Iterator[list[Key]]:
        stop = None if self.num_minibatches is None else self.start_minibatch + self.num_minibatches
        for k in itertools.count(self.start_minibatch):
            if stop is not None and k >= stop:
                return
            yield self.minibatch_keys(k)

    def __len__(self) -> int:
        if self.num_minibatches is None:
            raise TypeError("an endless DarknetBatchSampler has no length")
        return self.num_minibatches


class DarknetUpdateSampler(DarknetBatchSampler):
    """Whole darknet updates: item ``u`` holds the keys of the ``subdivisions``
    minibatches ``start_minibatch + u*subdivisions ...`` of
    :class:`DarknetBatchSampler` concatenated (the same images, sizes and seeds,
    grouped), so a loader yields one update batch of ``minibatch*subdivisions``
    images of one size, image ``j*minibatch + i`` being image ``i`` of pass ``j``.
    ``num_updates=None`` iterates forever; ``start_minibatch`` (a resumed run)
    must be a whole number of updates.
    """

    def __init__(self, n_items: int, minibatch: int, *, size: tuple[int, int],
                 subdivisions: int = 1, schedule: MultiScaleSchedule | None = None,
                 seed: int = 0, rank: int = 0, start_minibatch: int = 0,
                 num_updates: int | None = None):
        super().__init__(n_items, minibatch, size=size, subdivisions=subdivisions,
                         schedule=schedule, seed=seed, rank=rank, start_minibatch=start_minibatch)
        if start_minibatch % subdivisions:
            raise DataError(f"start_minibatch={start_minibatch} is not a whole number of updates "
                            f"of {subdivisions} minibatches")
        self.num_updates = num_updates

    def update_keys(self, u: int) -> list[Key]:
        """The keys of update ``u`` (counted from ``start_minibatch``)."""
        first = self.start_minibatch + u * self.subdivisions
        return [key for k in range(first, first + self.subdivisions) for key in self.minibatch_keys(k)]

    def __iter__(self) -> Iterator[list[Key]]:
        for u in itertools.count():
            if self.num_updates is not None and u >= self.num_updates:
                return
            yield self.update_keys(u)

    def __len__(self) -> int:
        if self.num_updates is None:
            raise TypeError("an endless DarknetUpdateSampler has no length")
        return self.num_updates


def _worker_init(_: int) -> None:
    # the machine's cores are shared between workers: no nested thread pools
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


#: workers start in a fresh interpreter: OpenCV's pthreads pool is not fork-safe
#: (after the parent ran a parallel cv2 call, e.g. GaussianBlur, ``cv2.setNumThreads``
#: in a forked child hangs)
WORKER_START = "spawn"


def _worker_kwargs(workers: int) -> dict:
    if not workers:
        return {}
    return dict(worker_init_fn=_worker_init, multiprocessing_context=WORKER_START)


def train_loader(dataset: DetectionDataset, sampler: DarknetBatchSampler | DarknetUpdateSampler, *, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``sampler``'s minibatches with :func:`collate`."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      **_worker_kwargs(workers))


def eval_loader(dataset: DetectionDataset, batch_size: int = 1, *, workers: int = 0) -> DataLoader:
    """In-order evaluation batches (failed images skipped, listed in ``failed``)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=workers, **_worker_kwargs(workers))


def dataset_from_files(data_file: str | os.PathLike, cfg, split: str = "train", *,
                       seed: int = 0, width: int | None = None,
                       height: int | None = None) -> DetectionDataset:
    """A dataset for a ``.data`` file and a parsed cfg: its classes must agree;
    training takes the cfg's augmentation, evaluation its letter_box."""
    from .datafile import parse_data_file
    from .sources import from_data_config
    data = parse_data_file(data_file)
    aug = AugmentConfig.from_cfg(cfg)
    if aug.classes != data.classes:
        raise DataError(f"{data.setting('classes')} but the cfg's detection layer has "
                        f"classes={aug.classes} ({cfg.file})", str(data_file))
    source = from_data_config(data, split, dialect=cfg.dialect)
    w = width or cfg.net["width"]
    h = height or cfg.net["height"]
    if split == "train":
        return DetectionDataset(source, w, h, augment=aug, seed=seed)
    return DetectionDataset(source, w, h, letterbox=aug.letter_box or cfg.dialect == "pjreddie",
                            seed=seed)


def dataset_from_coco(annotations: str | os.PathLike, images: str | os.PathLike, cfg, *,
                      seed: int = 0) -> DetectionDataset:
    """A training dataset from a COCO json and its image folder, with the cfg's
    augmentation; the json's category count must be the cfg's classes."""
    from .sources import from_coco
    source = from_coco(annotations, images)
    aug = AugmentConfig.from_cfg(cfg)
    if source.names is not None and len(source.names) != aug.classes:
        raise DataError(f"the json has {len(source.names)} categories but the cfg's detection "
                        f"layer has classes={aug.classes} ({cfg.file})", str(annotations))
    return DetectionDataset(source, cfg.net["width"], cfg.net["height"], augment=aug, seed=seed)


__all__ = ["Batch", "DarknetBatchSampler", "DarknetUpdateSampler", "DetectionDataset", "Sample",
           "collate", "dataset_from_coco", "dataset_from_files", "eval_loader", "train_loader"]
