"""Checks before the first iteration, for runs that would otherwise train on
nothing or not at all while looking busy.

* :func:`check_labels`: how many images have label files and boxes; a DataError
  when none has any (darknet itself trains on empty truth silently).
* :func:`check_schedule`: the iteration the starting ``seen`` gives; a
  TrainingError when it is already ``>= max_batches`` (fine-tuning official
  weights without ``--clear``), a warning when ``burn_in`` keeps the rate
  below 1 % of ``learning_rate`` for the whole run.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.sources import LabeledImages
from ..errors import DataError, TrainingError
from .schedule import LRSchedule, get_lr

#: how each darknet finds an image's label file (see :mod:`darknet_py.data.labels`)
RULE_TEXT = {
    "pjreddie": "pjreddie darknet's rule: the first 'images', 'JPEGImages' or 'raw' in the image "
                "path becomes 'labels' and the extension becomes .txt",
    "alexeyab": "AlexeyAB darknet's rule: the .txt beside the image, except under "
                "/JPEGImages/ or /images/{train,val}{2014,2017}/, which become /labels/...",
}

#: the rate below which burn-in is "not training" (a fraction of learning_rate)
BURN_IN_FLOOR = 0.01


@dataclass(frozen=True)
class LabelReport:
    images: int
    with_labels: int          #: images whose label file exists (or, COCO, every image)
    boxes: int
    missing_example: tuple[str, str] | None  #: (image, label path tried) of one unlabelled image

    def summary(self) -> str:
        return (f"{self.images} training images, {self.with_labels} with label files, "
                f"{self.boxes} boxes")


def label_report(source: LabeledImages) -> LabelReport:
    """Count label files and boxes of ``source`` (no file is read again)."""
    example = None
    if source.missing_labels:
        tried = source.missing_labels[0]
        # both darknets' rules change only folders and the extension: the stem is the image's
        image = next((im for im, lab in zip(source.images, source.labels)
                      if im.stem == tried.stem and len(lab) == 0), tried.with_suffix(".*"))
        example = (str(image), str(tried))
    return LabelReport(len(source), len(source) - len(source.missing_labels),
                       int(sum(len(lab) for lab in source.labels)), example)


def check_labels(source: LabeledImages, dialect: str,
                 what: str = "train list") -> tuple[str, str | None]:
    """``(summary, warning or None)`` for the training images' labels.

    A DataError when no image has a label file (naming the path rule and one
    path it tried) or when the label files hold no box at all."""
    r = label_report(source)
    rule = RULE_TEXT.get(dialect, dialect)
    if r.with_labels == 0 and r.images:
        image, tried = r.missing_example or ("?", "?")
        raise DataError(f"none of the {r.images} images of the {what} has a label file: for "
                        f"{image} it looked for {tried} ({rule}); put the YOLO .txt files "
                        f"there (training would learn nothing)")
    if r.boxes == 0:
        raise DataError(f"the {r.with_labels} label files of the {what} hold no boxes: there is "
                        f"nothing to learn")
    warning = None
    if r.with_labels < r.images:
        image, tried = r.missing_example or ("?", "?")
        warning = (f"{r.images - r.with_labels} of {r.images} images of the {what} have no label "
                   f"file and train as images without objects; e.g. for {image} it looked for "
                   f"{tried} ({rule})")
    return r.summary(), warning


def check_schedule(schedule: LRSchedule, start_iteration: int, max_batches: int, seen: int,
                   update_batch: int, source: str) -> tuple[str, str | None]:
    """``(summary, warning or None)`` of where the rate schedule starts.

    ``source`` says where ``seen`` came from (shown in the messages).  A
    TrainingError when ``start_iteration >= max_batches``: darknet's loop would
    end at once (and write ``_final`` weights as if it had trained)."""
    summary = (f"{source}: seen {seen} = iteration {start_iteration} at {update_batch} images per "
               f"update; training runs iterations {start_iteration + 1}..{max_batches}")
    if start_iteration >= max_batches:
        raise TrainingError(
            f"{source} has seen {seen} images = iteration {start_iteration} at batch {update_batch}, "
            f"not below max_batches={max_batches}: there is nothing left to train. To fine-tune "
            f"these weights, start the schedule at 0 with --clear (darknet's -clear); to continue, "
            f"raise --max-batches above {start_iteration}")
    warning = None
    if schedule.burn_in and max_batches <= schedule.burn_in:
        # the burn-in factor grows with the iteration: its largest rate is the last one
        peak = get_lr(max_batches, schedule)
        if peak < BURN_IN_FLOOR * schedule.learning_rate:
            warning = (f"burn_in={schedule.burn_in} keeps the rate below {peak:.3g} "
                       f"({100 * peak / schedule.learning_rate:.2g} % of learning_rate="
                       f"{schedule.learning_rate:g}) for the whole run of {max_batches} "
                       f"iterations: the weights will hardly move. Lower it with --burn-in")
    return summary, warning
