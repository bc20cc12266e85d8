"""Stratified fold assignment (sklearn), checked before any training starts.

With ``folds.group_duplicates=true`` (the default) near-duplicate images (data/duplicates.py) form
groups that StratifiedGroupKFold keeps in one fold: a copy in another fold than its original would
be validated on an image the model trained on, inflating cv. Where the search finds no duplicate,
every group is one image and the folds are exactly StratifiedKFold's: grouping changes a run only
where it has something to group (docs/data-audit.md has the figures).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from docclassify.data.sources import DataError

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import FoldsConfig

log = logging.getLogger(__name__)


def assign_folds(targets: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Return the validation fold of every row (0..n_folds-1): StratifiedKFold(shuffle, seed), or
    StratifiedGroupKFold with ``groups`` (rows of one group share a fold; groups of one row each:
    StratifiedKFold's folds, the same as without groups).

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
    if groups is not None and len(np.unique(groups)) == len(targets):
        groups = None  # nothing to keep together: the ungrouped splitter's folds, not another splitter's
    if groups is None:
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(targets)),
                                                                                         targets)
    else:
        _check_groups(targets, np.asarray(groups), n_folds)
        splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            np.zeros(len(targets)), targets, groups)
    for k, (_, val_idx) in enumerate(splits):
        folds[val_idx] = k
    return folds


def folds_from_file(path, ids: Sequence[str], n_folds: int) -> np.ndarray:
    """``folds.file``: the validation fold of every row of ``ids`` from a folds.csv (``ID,fold``, another
    run's): every ID listed, folds in 0..n_folds-1 (-1: a row that never validates)."""
    import pandas as pd

    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"folds.file={path}: file not found (a folds.csv with columns ID, fold, e.g. a run dir's)")
    try:
        table = pd.read_csv(path, dtype={"ID": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"folds.file={path}: cannot parse ({exc})") from exc
    if not {"ID", "fold"} <= set(table.columns):
        raise DataError(f"folds.file={path}: needs columns ID and fold, found {list(table.columns)}")
    fold_of = table.drop_duplicates("ID").set_index("ID")["fold"]
    missing = [i for i in ids if i not in fold_of.index]
    if missing:
        raise DataError(f"folds.file={path}: {len(missing)} training row(s) have no fold, e.g. {missing[:5]}; "
                        "use the folds.csv of a run on the same data")
    folds = fold_of.loc[list(ids)].to_numpy(dtype=np.int64)
    bad = sorted(set(folds.tolist()) - set(range(-1, n_folds)))
    if bad:
        raise DataError(f"folds.file={path}: fold(s) {bad} outside 0..{n_folds - 1} (folds.n={n_folds})")
    log.info("folds.file=%s: the folds of %d rows taken from it", path, len(folds))
    return folds


def _check_groups(targets: np.ndarray, groups: np.ndarray, n_folds: int) -> None:
    """Every class must reach every fold: its images must lie in at least n_folds groups."""
    spread = {int(c): len(np.unique(groups[targets == c])) for c in np.unique(targets)}
    few = [f"class {c}: {n} group(s)" for c, n in spread.items() if n < n_folds]
    if few:
        raise DataError(f"folds.group_duplicates=true, folds.n={n_folds}: near-duplicate groups leave too few "
                        f"separate images to put every class in every fold ({', '.join(few)}). Lower folds.n, "
                        "lower folds.duplicate_distance / raise folds.duplicate_similarity, or set "
                        "folds.group_duplicates=false")


def duplicate_groups_for(folds_cfg: FoldsConfig, paths: Sequence[Path],
                         cache_dir) -> tuple[np.ndarray | None, dict | None]:
    """(group of each row, summary for results.json) when ``folds.group_duplicates``, else (None, None);
    ``folds_cfg``: the folds group's typed settings."""
    if not folds_cfg.group_duplicates:
        return None, None
    from docclassify.data.duplicates import duplicate_groups, find_duplicates, fingerprints

    distance, similarity = int(folds_cfg.duplicate_distance), float(folds_cfg.duplicate_similarity)
    pairs = find_duplicates(fingerprints(paths, cache_dir), None, distance, similarity, cache_dir)
    groups = duplicate_groups(len(paths), pairs)
    sizes = np.bincount(groups)
    summary = {"duplicate_distance": distance, "duplicate_similarity": similarity, "pairs": len(pairs),
               "groups": int((sizes > 1).sum()), "images_in_groups": int(sizes[sizes > 1].sum())}
    log.info("folds.group_duplicates: %d near-duplicate pair(s) -> %d group(s) of %d images kept in one fold",
             summary["pairs"], summary["groups"], summary["images_in_groups"])
    return groups, summary


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
