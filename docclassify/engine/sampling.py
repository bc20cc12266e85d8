"""``data.sampler``: how often each class is drawn for training.

- ``natural``: every training row once per epoch (a seeded shuffle); a class is drawn in
  proportion to its row count ``n_c``.
- ``balanced``: every class equally often (row weight ``1 / n_c``), drawn with replacement, so
  rows of rare classes repeat within an epoch and rows of frequent ones may be left out.
- ``sqrt``: in proportion to ``sqrt(n_c)`` (row weight ``1 / sqrt(n_c)``), between the two.

An epoch keeps its length (one draw per training row). engine.resume.ResumableSampler turns the
row weights into a seeded, resumable, DDP-shared draw; the loss is told the resulting class
shares (engine.losses.LossContext.class_prior).
"""

from __future__ import annotations

import numpy as np

from docclassify.utils.choices import SAMPLERS


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def class_shares(counts: np.ndarray, mode: str) -> np.ndarray:
    """(K,) the expected share of each class in a training draw under ``mode`` (sums to 1; 0 for a
    class without rows)."""
    counts = np.asarray(counts, dtype=np.float64)
    if mode not in SAMPLERS:
        raise ValueError(f"data.sampler={mode!r}: expected one of {', '.join(SAMPLERS)}")
    if counts.sum() <= 0:
        raise ValueError("no training rows to sample from")
    if mode == "natural":
        mass = counts
    elif mode == "balanced":
        mass = (counts > 0).astype(np.float64)
    else:
        mass = np.sqrt(counts)
    return mass / mass.sum()


def row_weights(labels: np.ndarray, mode: str) -> np.ndarray | None:
    """One weight per training row giving the class shares of ``mode``; None for ``natural``
    (a plain shuffle, every row once)."""
    if mode == "natural":
        return None
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = class_counts(labels, num_classes)
    per_class = np.divide(class_shares(counts, mode), counts, out=np.zeros(num_classes), where=counts > 0)
    return per_class[labels]
