"""The one home of the numbers every part reports: softmax, macro F1, accuracy.

Training (per-epoch validation, pooled OOF), inference (ensembles, test scores) and the
reports all call these, so a figure means the same thing wherever it is printed. Macro F1
uses scikit-learn's default label set (classes present in the targets or predictions), so
it equals what anyone recomputes from ``oof.csv`` with ``f1_score(average="macro")``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import softmax as _softmax
from sklearn.metrics import accuracy_score, f1_score


def safe_log(probs: np.ndarray) -> np.ndarray:
    """log of probabilities, finite (underflowed zeros become log(tiny))."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits as float64 (scipy's: max-shifted, stable)."""
    return _softmax(np.asarray(logits, dtype=np.float64), axis=1)


def macro_f1(y_true, y_pred) -> float:
    """Macro F1 of class predictions (``zero_division=0``); NaN when there are no rows."""
    y_true = np.asarray(y_true)
    if not len(y_true):
        return math.nan
    return float(f1_score(y_true, np.asarray(y_pred), average="macro", zero_division=0))


def macro_f1_of_probs(probs: np.ndarray, y_true) -> float:
    """Macro F1 of ``argmax(probs)`` (probabilities or logits: the argmax is the same)."""
    return macro_f1(y_true, np.asarray(probs).argmax(axis=1))


def macro_f1_from_counts(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """Macro F1 from per-class counts (true positives, predictions, targets) on the last axis, for
    many candidate predictions at once (a search scores thousands). Same label set as
    :func:`macro_f1`: the classes with targets or predictions."""
    tp, n_pred, n_true = (np.asarray(a, dtype=np.float64) for a in (tp, n_pred, n_true))
    denom = n_pred + n_true
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=present)
    return f1.sum(-1) / np.maximum(present.sum(-1), 1)


def class_counts_of(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predictions, targets) per class: what :func:`macro_f1_from_counts` takes."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    tp = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    return tp, np.bincount(y_pred, minlength=num_classes), np.bincount(y_true, minlength=num_classes)


def per_class_f1(y_true, y_pred, num_classes: int) -> list[float]:
    """F1 of each class 0..num_classes-1 (0 for a class with neither targets nor predictions)."""
    return f1_score(y_true, y_pred, average=None, labels=list(range(num_classes)), zero_division=0).tolist()


def accuracy(y_true, y_pred) -> float:
    y_true = np.asarray(y_true)
    return float(accuracy_score(y_true, y_pred)) if len(y_true) else math.nan
