"""Pool the out-of-fold (OOF) predictions of a K-fold run: oof.csv, oof_logits.npy and the
results dict (cv macro F1 over the pooled rows, one entry per fold); with a robust view also
the OOF rows' distorted copies, ``ID,copy,...``, in two disjoint sets (engine.evaluate.robust_roles):
oof_robust.csv / oof_robust_logits.npy, the copies that chose nothing (cv_macro_f1_robust, and what
inference fits on), and oof_robust_select.csv / oof_robust_select_logits.npy, the copies that
picked each fold's best epoch (cv_macro_f1_robust_select, the objective).

Used by ``engine.kfold`` at the end of a run and by ``docclassify.aggregate`` when folds trained
as separate jobs are merged into one run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from docclassify import metrics
from docclassify.data.validation import COPIES_FORMAT
from docclassify.distortion.copies import working_side
from docclassify.engine.orientation_head import pooled_orientation
from docclassify.utils.io import atomic_write, atomic_write_csv

RESULTS_FILE, OOF_FILE, OOF_LOGITS_FILE = "results.json", "oof.csv", "oof_logits.npy"
OOF_ROBUST_FILE, OOF_ROBUST_LOGITS_FILE = "oof_robust.csv", "oof_robust_logits.npy"
OOF_ROBUST_SELECT_FILE, OOF_ROBUST_SELECT_LOGITS_FILE = "oof_robust_select.csv", "oof_robust_select_logits.npy"
# What results.json keeps of each fold's outcome (engine.fold), in this order.
FOLD_KEYS = ("fold", "model", "model_option", "img_size", "best_macro_f1", "best_macro_f1_robust",
             "best_macro_f1_robust_select", "monitor",
             "best_monitored", "best_epoch", "epochs_run", "checkpoint", "weights", "n_train", "n_val",
             "robust_copies", "seconds", "skipped_steps", "early_stopped", "history", "orientation")
FOLD_DEFAULTS = {"skipped_steps": 0, "early_stopped": False, "monitor": "clean", "orientation": None,
                 "best_macro_f1_robust_select": None}


def pooled_rows(outcomes: list[dict], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, logits) of every fold's validation rows, in training-table order."""
    rows = np.asarray([r for o in outcomes for r in o["val_index"]], dtype=np.int64)
    parts = [np.asarray(o["val_logits"], dtype=np.float64) for o in outcomes]
    logits = np.concatenate(parts) if parts else np.zeros((0, num_classes))
    if len(np.unique(rows)) != len(rows):
        raise RuntimeError("internal error: an OOF row appears in two folds")
    order = np.argsort(rows, kind="stable")  # oof.csv in train.csv order
    return rows[order], logits[order]


def oof_frame(ids: np.ndarray, targets: np.ndarray, rows: np.ndarray, logits: np.ndarray,
              classes: list[str]) -> pd.DataFrame:
    """``ID,target,pred,<one probability column per class>``."""
    probs = metrics.softmax(logits)
    oof = pd.DataFrame({"ID": ids[rows], "target": targets[rows], "pred": probs.argmax(1)})
    return pd.concat([oof, pd.DataFrame(probs, columns=classes)], axis=1)


def write_oof(run_dir: Path, oof: pd.DataFrame, logits: np.ndarray, names: tuple[str, str] = (OOF_FILE,
              OOF_LOGITS_FILE)) -> None:
    atomic_write_csv(oof, run_dir / names[0], float_format="%.8g")
    with atomic_write(run_dir / names[1], "wb") as fh:
        np.save(fh, logits.astype(np.float32))


def robust_copies_of(outcomes: list[dict]) -> int | None:
    """Copies per row of the folds' robust view; None when no fold has one. Folds that disagree
    (some with a robust view, some without, or other copy counts) cannot be pooled."""
    counts = {o.get("robust_copies") if o.get("val_logits_robust") is not None else None for o in outcomes}
    if len(counts) > 1:
        raise RuntimeError(f"the folds' robust views differ (copies per row: {sorted(counts, key=str)}): "
                           "folds of one run must share the validation option; retrain the odd fold(s)")
    return counts.pop() if counts else None


def pool_robust(outcomes: list[dict], ids: np.ndarray, targets: np.ndarray, classes: list[str],
                copies: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``ID,copy,target,pred,<probabilities>`` of every OOF row's copies (train.csv order, then copy),
    their logits, and which of them estimate (engine.evaluate.robust_roles, per fold as it split them)."""
    from docclassify.engine.evaluate import robust_roles

    rows = np.asarray([r for o in outcomes for r in o["val_index"]], dtype=np.int64)
    logits = np.concatenate([np.asarray(o["val_logits_robust"], dtype=np.float64) for o in outcomes])
    estimate = np.concatenate([robust_roles(ids[np.asarray(o["val_index"], dtype=np.int64)], copies)
                               for o in outcomes])
    rows = np.repeat(rows, copies)  # each fold's logits hold its rows' copies together, in val_index order
    copy = np.tile(np.arange(copies), len(rows) // copies)
    order = np.lexsort((copy, rows))
    rows, copy, logits, estimate = rows[order], copy[order], logits[order], estimate[order]
    probs = metrics.softmax(logits)
    oof = pd.DataFrame({"ID": ids[rows], "copy": copy, "target": targets[rows], "pred": probs.argmax(1)})
    return pd.concat([oof, pd.DataFrame(probs, columns=classes)], axis=1), logits, estimate


def robust_results(run_dir: Path, outcomes: list[dict], ids: np.ndarray, targets: np.ndarray,
                   classes: list[str], write: bool) -> dict:
    """The robust part of results.json (None values without a robust view); writes oof_robust.*
    (the estimating copies) and oof_robust_select.* (the selecting ones)."""
    from docclassify.engine.evaluate import SPLIT_RULES, robust_split_rule

    copies = robust_copies_of(outcomes)
    if copies is None:
        return {"cv_macro_f1_robust": None, "cv_accuracy_robust": None, "cv_macro_f1_robust_select": None}
    oof, logits, estimate = pool_robust(outcomes, ids, targets, classes, copies)
    parts = {"estimate": estimate, "select": ~estimate}
    frames = {k: oof[m].reset_index(drop=True) for k, m in parts.items()}
    if write:
        write_oof(run_dir, frames["estimate"], logits[estimate], (OOF_ROBUST_FILE, OOF_ROBUST_LOGITS_FILE))
        write_oof(run_dir, frames["select"], logits[~estimate], (OOF_ROBUST_SELECT_FILE, OOF_ROBUST_SELECT_LOGITS_FILE))
    score = {k: (metrics.macro_f1(f["target"].to_numpy(), f["pred"].to_numpy()),
                 metrics.accuracy(f["target"].to_numpy(), f["pred"].to_numpy())) for k, f in frames.items()}

    def fold_mean(key: str) -> float | None:  # None: a fold without the figure (an older fold, no such row)
        values = [o.get(key) for o in outcomes]
        return float(np.mean(values)) if values and None not in values else None

    rule = robust_split_rule(copies)
    return {
        # the copies that chose nothing (no epoch, no early stop, no prune): the honest robust figure
        "cv_macro_f1_robust": score["estimate"][0],
        "cv_accuracy_robust": score["estimate"][1],
        # the copies that picked each fold's best epoch (and drive the objective): optimistic
        "cv_macro_f1_robust_select": score["select"][0],
        "cv_accuracy_robust_select": score["select"][1],
        "mean_fold_macro_f1_robust": fold_mean("best_macro_f1_robust"),
        "mean_fold_macro_f1_robust_select": fold_mean("best_macro_f1_robust_select"),
        "n_oof_robust_rows": int(len(frames["estimate"])), "n_oof_robust_select_rows": int(len(frames["select"])),
        "robust_copies": int(copies), "robust_split": {"rule": rule, "what": SPLIT_RULES[rule]},
        "oof_robust": OOF_ROBUST_FILE, "oof_robust_logits": OOF_ROBUST_LOGITS_FILE,
        "oof_robust_select": OOF_ROBUST_SELECT_FILE, "oof_robust_select_logits": OOF_ROBUST_SELECT_LOGITS_FILE,
    }


def pool_oof(run_dir: Path, train: pd.DataFrame, classes: list[str], outcomes: list[dict],
             write: bool = True) -> dict:
    """Pool the folds' OOF rows of ``train`` (columns ID, target) into oof.csv and return the
    metrics part of results.json. ``write=False``: only the dict (DDP ranks other than 0)."""
    ids, targets = train["ID"].to_numpy(), train["target"].to_numpy()
    rows, logits = pooled_rows(outcomes, len(classes))
    oof = oof_frame(ids, targets, rows, logits, classes)
    if write:
        write_oof(run_dir, oof, logits)
    y, pred = targets[rows], oof["pred"].to_numpy()
    return {
        "metric": "macro_f1",
        "cv_macro_f1": metrics.macro_f1(y, pred),
        "cv_accuracy": metrics.accuracy(y, pred),
        **robust_results(run_dir, outcomes, ids, targets, classes, write),
        "mean_fold_macro_f1": float(np.mean([o["best_macro_f1"] for o in outcomes])),
        "n_oof_rows": int(len(rows)),
        "folds_run": [o["fold"] for o in outcomes],
        "classes": list(classes),
        "oof": OOF_FILE, "oof_logits": OOF_LOGITS_FILE,
        "folds": [{k: o.get(k, FOLD_DEFAULTS.get(k)) for k in FOLD_KEYS} for o in outcomes],
        # The orientation head's accuracy and accuracy by orientation on turned validation copies
        # (engine/orientation_head.py); None when the run neither turns images nor has a head.
        "orientation": pooled_orientation(outcomes),
    }


# --------------------------------------------------------------------------------------------- copies' recipe
def profile_digest(profile: dict) -> str:
    """sha256 of a resolved distortion profile (keys sorted): equal digests, equal draws."""
    return hashlib.sha256(json.dumps(dict(profile), sort_keys=True, default=str).encode()).hexdigest()


def copies_recipe(spec, img_sizes, recorded: bool = True) -> dict:
    """What made a run's robust copies (results.json ``validation.copies_recipe``): their seed, the
    digest of the resolved profile, the copy count, the code's format version of a copy's pixels, and
    the image sizes the folds validated them at (with the working side each was distorted at).

    Two runs' robust OOF rows ``ID#copy`` are the same copy, and may be paired (inference: weights,
    temperature, biases, tta=auto), when seed, profile digest and format agree: copy ``c`` is a pure
    function of (seed, ID, c) and the profile. The image size is recorded, not compared: another
    size sees the same distorted page at its own resolution, as it sees the clean page.
    ``recorded``: False for a recipe derived from an older results.json (format unknown)."""
    sizes = sorted({int(s) for s in img_sizes})
    return {"seed": int(spec.seed), "profile_sha256": profile_digest(spec.profile), "copies": int(spec.copies),
            "format": COPIES_FORMAT if recorded else None, "img_sizes": sizes,
            "working_sides": sorted({working_side(s) for s in sizes}), "recorded": bool(recorded)}
