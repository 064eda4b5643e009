"""Segmentation metrics from one confusion matrix, so they add up exactly across images and workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Counts[t, p] of pixels with true class t predicted as p; ignored and out-of-range labels drop out."""
    truth = truth.ravel().astype(np.int64)
    pred = pred.ravel().astype(np.int64)
    keep = (truth >= 0) & (truth < num_classes)
    if ignore_index is not None:
        keep &= truth != ignore_index
    index = truth[keep] * num_classes + pred[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union of each class; NaN for a class absent from both truth and prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def dice_per_class(confusion: np.ndarray) -> np.ndarray:
    tp = np.diag(confusion).astype(np.float64)
    total = confusion.sum(0) + confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * tp / np.maximum(total, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean over the classes that occur (in truth or prediction)."""
    return float(np.nanmean(iou_per_class(confusion)))


def unlearnt_classes(confusion: np.ndarray) -> np.ndarray:
    """Classes present in the truth that the model never predicts right (IoU 0): what a run that is
    not learning them looks like, as opposed to a class absent from the truth (IoU NaN or 0 from
    false positives alone)."""
    return np.flatnonzero((confusion.sum(1) > 0) & (np.diag(confusion) == 0))


def collapsed_to(confusion: np.ndarray) -> int | None:
    """The one class the model gets any pixel of right when the truth holds more than one: a model that
    has collapsed (all-background, typically, on sparse foreground); None otherwise. A collapsed model
    may still scatter a few pixels of other classes where they are not, so what it predicts does not
    decide; what it finds does."""
    found = np.flatnonzero(np.diag(confusion))
    return int(found[0]) if len(found) == 1 and np.count_nonzero(confusion.sum(1)) > 1 else None


def pixel_accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / max(confusion.sum(), 1))


@dataclass(frozen=True)
class Scores:
    iou: np.ndarray
    """Per class; NaN for a class absent from truth and prediction, and for the ignored class."""
    dice: np.ndarray
    mean_iou: float
    pixel_accuracy: float


def scores(confusion: np.ndarray, ignore_index: int | None = None) -> Scores:
    """Every metric of a matrix built with `confusion_matrix(..., ignore_index)`, the one place that
    leaves the ignored class out. Its pixels are already out of the matrix, but an ignore index that
    is a class id keeps a column: wherever the model predicts it, that class scores IoU 0 and would
    pull the means down for a label nobody scores. Those predictions stay errors of the pixels' true
    classes (in their IoU and in pixel accuracy), as they are."""
    iou, dice = iou_per_class(confusion), dice_per_class(confusion)
    if ignore_index is not None and 0 <= ignore_index < len(confusion):
        iou[ignore_index] = dice[ignore_index] = np.nan
    return Scores(iou, dice, float(np.nanmean(iou)), pixel_accuracy(confusion))
