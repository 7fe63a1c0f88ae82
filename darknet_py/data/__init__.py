"""Detection data the darknet way.

* :mod:`.datafile` -- ``.data`` files, image lists, ``.names``
* :mod:`.labels` -- darknet's image -> label path rules; strict YOLO txt reading
* :mod:`.sources` -- images + boxes from list files or a COCO json
* :mod:`.augment`, :mod:`.mosaic`, :mod:`.truth`, :mod:`.image_ops` -- darknet's
  detection augmentation and its box clipping/dropping rules
* :mod:`.multiscale` -- ``random=1`` input sizes
* :mod:`.dataset` -- torch Dataset, darknet's minibatch sampler, collate
* :mod:`.synthetic` -- a small deterministic dataset in darknet format
"""
from __future__ import annotations

from .augment import AugmentConfig, Colour, CropJitter, Placement, augment, augment_with
from .datafile import DataConfig, parse_data_file, read_list, read_names, write_data_file
from .dataset import (Batch, DarknetBatchSampler, DarknetUpdateSampler, DetectionDataset, Sample,
                      collate, dataset_from_coco, dataset_from_files, eval_loader, train_loader)
from .labels import label_path, parse_labels, read_labels
from .multiscale import RESIZE_EVERY, MultiScaleSchedule, pick_random_size
from .sources import LabeledImages, from_coco, from_data_config, from_list
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import make_synthetic_dataset

__all__ = [
    "AugmentConfig", "Batch", "Colour", "CropJitter", "DarknetBatchSampler", "DarknetUpdateSampler",
    "DataConfig",
    "DetectionDataset", "LabeledImages", "MultiScaleSchedule", "Placement", "RESIZE_EVERY",
    "SYNTHETIC_CLASSES", "Sample", "augment", "augment_with", "collate", "dataset_from_coco",
    "dataset_from_files",
    "eval_loader", "from_coco", "from_data_config", "from_list", "label_path",
    "make_synthetic_dataset", "parse_data_file", "parse_labels", "pick_random_size",
    "read_labels", "read_list", "read_names", "train_loader", "write_data_file",
]
