"""Stratified fold assignment (sklearn), checked before any training starts."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from docclassify.data.sources import DataError


def assign_folds(targets: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Return the validation fold of every row (0..n_folds-1): StratifiedKFold(shuffle, seed).

    A single hold-out split is one fold of K (``folds.run=[0]``: 1/K of the rows validate)."""
    targets = np.asarray(targets)
    counts = np.bincount(targets)
    present = np.flatnonzero(counts)
    if n_folds < 2:
        raise DataError(f"folds.n={n_folds}: K-fold needs at least 2 folds; for one hold-out split of 1/K "
                        "of the rows train one fold of K, e.g. folds.n=5 folds.run=[0]")
    need = n_folds
    too_small = [(int(c), int(counts[c])) for c in present if counts[c] < need]
    if too_small:
        listing = ", ".join(f"class {c}: {n}" for c, n in too_small)
        raise DataError(
            f"folds.n={n_folds}: every class needs at least {need} training samples for stratified "
            f"splitting; too few in {listing}. Lower folds.n or add data."
        )
    folds = np.full(len(targets), -1, dtype=np.int64)
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
