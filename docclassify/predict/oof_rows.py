"""The out-of-fold rows everything after the members is fitted on (``fit_on``: clean or robust): which
rows, whether they are re-predicted with the TTA views (each by the fold that did not train on it), and
their alignment across runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from docclassify.distortion.copies import copy_rows
from docclassify.predict.run_dirs import Run, RunError, fold_of_ids, load_view_oof, split_robust_key
from docclassify.predict.submission import format_ids
from docclassify.predict.tta import View

if TYPE_CHECKING:
    from docclassify.predict.settings import Settings
    from docclassify.predict.testdata import DataSet

log = logging.getLogger(__name__)


def plan_view_oof(run: Run, ds: DataSet, keys: np.ndarray, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(row of :meth:`ImageStore.oof_images`, validation fold) of each OOF row key on ``view``."""
    if view == "clean":
        return plan_oof(run, ds, keys)
    ids, copy = split_robust_key(keys)
    rows, folds = plan_oof(run, ds, ids)
    n = int(run.results["validation"]["copies"])
    return copy_rows(rows, n).reshape(-1, n)[np.arange(len(rows)), copy], folds


def plan_oof(run: Run, ds: DataSet, oof_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training-data row, validation fold) of each OOF ID, to re-predict it with its own fold's
    model."""
    folds = fold_of_ids(run, oof_ids)
    uncovered = sorted(set(folds.tolist()) - {fm.fold for fm in run.folds})
    if uncovered:
        raise RunError(f"{run.path}: OOF rows of fold(s) {uncovered} but no checkpoint for them")
    train_ids = ds.source.train["ID"].to_numpy(dtype=str)
    row_of = pd.Series(np.arange(len(ds.source.train)), index=train_ids)
    missing = [i for i in oof_ids if i not in row_of.index]
    if missing:
        raise RunError(f"{run.path}: {format_ids(missing)} of its OOF rows are not in the training "
                       f"data of {ds.source.root}; set oof_tta=false to use the saved OOF "
                       "predictions")
    return row_of.loc[list(oof_ids)].to_numpy(), folds


def needs_oof(settings: Settings, n_runs: int) -> bool:
    """Whether anything is fitted on OOF rows: weights other than equal (2+ runs), the temperature
    (calibrate) or the decision rule (decision=macro_f1); or, for one run, the estimate of the test
    figure (estimate=true: its OOF rows predicted with the test's TTA, issue 29 item 3)."""
    return (settings.calibrate or settings.decision != "argmax" or settings.second_stage
            or (settings.weights != "equal" and n_runs > 1) or (settings.estimate and n_runs == 1))


@dataclass
class OofInputs:
    """The runs' saved out-of-fold predictions on the ``view`` decisions are fitted on (fit_on), and
    whether they are re-predicted with TTA."""

    saved: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per run: load_view_oof's (keys, y, logits)
    repredict: bool
    # per run: plan_view_oof's (image rows, folds) when re-predicted here, else None
    plans: list[tuple[np.ndarray, np.ndarray] | None]
    view: str = "clean"


def prepare_oof(runs: list[Run], datasets: list[DataSet], settings: Settings,
                views: list[View], view: str = "clean", predicted: bool = False) -> OofInputs | None:
    """The OOF rows (on ``view``) that weights (2+ runs), the temperature (calibrate) and the decision
    rule (decision=macro_f1) are fitted on; None when none is. Re-predicted (oof_tta) only with views
    beyond the identity; ``predicted``: tta=auto already re-predicted them (no plans needed)."""
    if not needs_oof(settings, len(runs)):
        return None
    saved = [load_view_oof(run, view) for run in runs]
    repredict = settings.oof_tta and any(v.key != View("identity").key for v in views)
    plans = [plan_view_oof(run, ds, oof[0], view) for run, ds, oof in zip(runs, datasets, saved)] \
        if repredict and not predicted else [None] * len(runs)
    return OofInputs(saved, repredict, plans, view)


def check_same_oof_rows(per_run: list[tuple[np.ndarray, np.ndarray, np.ndarray]], paths: list[Path],
                        mode: str) -> None:
    """ensemble.weights=greedy|stack learn from every run's prediction of the same rows: runs whose
    OOF rows differ are refused (naming them), not silently cut to the rows they share."""
    first = set(per_run[0][0].tolist())
    for (ids, _, _), path in zip(per_run[1:], paths[1:]):
        other = set(ids.tolist())
        if other != first:
            diff = sorted(first ^ other)
            raise RunError(f"ensemble.weights={mode}: the runs' out-of-fold rows differ: {paths[0]} has {len(first)}, "
                           f"{path} has {len(other)} ({len(diff)} rows not in both, e.g. {format_ids(diff)}). "
                           "Selection and stacking need every run to predict the same rows: ensemble runs "
                           "trained on the same data with every fold run (folds.run=null), or use "
                           "ensemble.weights=oof|equal (fitted on the rows the runs share)")


def align_oof(per_run: list[tuple[np.ndarray, np.ndarray, np.ndarray]], paths: list[Path]):
    """Rows present in every run's OOF, in the first run's order: (ids, y, [logits per run])."""
    id_sets = [set(ids.tolist()) for ids, _, _ in per_run]
    common_set = set.intersection(*id_sets)
    ids0 = per_run[0][0]
    common = np.array([i for i in ids0 if i in common_set], dtype=str)
    if not len(common):
        raise RunError("the runs' out-of-fold predictions share no row (different data or folds): "
                       "ensemble.weights=oof and calibrate=true need common OOF rows; "
                       "use ensemble.weights=equal calibrate=false")
    aligned, y = [], None
    for (ids, targets, logits), path in zip(per_run, paths):
        pos = pd.Series(np.arange(len(ids)), index=ids).loc[list(common)].to_numpy()
        if y is None:
            y = targets[pos]
        elif not np.array_equal(targets[pos], y):
            bad = common[targets[pos] != y]
            raise RunError(f"{path}: its OOF targets differ from {paths[0]}'s for "
                           f"{format_ids(bad)} (trained on other labels)")
        aligned.append(logits[pos])
    dropped = max(len(ids) for ids, _, _ in per_run) - len(common)
    if dropped:
        log.info("OOF: %d rows common to all %d runs (%d rows not predicted by every run left out)",
                 len(common), len(per_run), dropped)
    return common, y, aligned


def image_groups(oof_keys: np.ndarray, view: str = "clean") -> np.ndarray:
    """The image of each OOF row (its ID; robust rows ``ID#copy``: the ID), so that the copies of one
    image stay on one side of a split (decision rule, greedy selection, stacking)."""
    return split_robust_key(oof_keys)[0] if view == "robust" else np.asarray(oof_keys, dtype=str)
