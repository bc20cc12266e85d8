"""Stratified fold assignment (sklearn), checked before any training starts."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from docclassify.data.sources import DataError


def assign_folds(targets: np.ndarray, n_folds: int, seed: int, holdout_fraction: float = 0.2) -> np.ndarray:
    """Return the validation fold of every row (0..n_folds-1).

    n_folds >= 2: StratifiedKFold(shuffle, seed). n_folds == 1: a single stratified hold-out
    (rows in the hold-out get fold 0, the rest -1 = always train).
    """
    targets = np.asarray(targets)
    counts = np.bincount(targets)
    present = np.flatnonzero(counts)
    need = max(n_folds, 2)
    too_small = [(int(c), int(counts[c])) for c in present if counts[c] < need]
    if too_small:
        listing = ", ".join(f"class {c}: {n}" for c, n in too_small)
        raise DataError(
            f"folds.n={n_folds}: every class needs at least {need} training samples for stratified "
            f"splitting; too few in {listing}. Lower folds.n or add data."
        )
    folds = np.full(len(targets), -1, dtype=np.int64)
    if n_folds == 1:
        idx = np.arange(len(targets))
        _, val_idx = train_test_split(idx, test_size=holdout_fraction, stratify=targets, random_state=seed)
        folds[val_idx] = 0
        return folds
    if n_folds < 1:
        raise DataError(f"folds.n={n_folds}: must be >= 1")
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(len(targets)), targets)):
        folds[val_idx] = k
    return folds


def folds_to_run(run, n_folds: int) -> list[int]:
    """Validate ``folds.run`` (None = all) against ``folds.n``."""
    if run is None:
        return list(range(n_folds))
    if isinstance(run, int):
        run = [run]
    run = [int(k) for k in run]
    bad = [k for k in run if not 0 <= k < n_folds]
    if bad:
        raise DataError(f"folds.run={run}: fold(s) {bad} out of range for folds.n={n_folds} (valid: 0..{n_folds - 1})")
    if len(set(run)) != len(run):
        raise DataError(f"folds.run={run}: a fold is listed twice")
    if not run:
        raise DataError("folds.run=[]: select at least one fold (or null for all)")
    return run
