"""Pool the out-of-fold (OOF) predictions of a K-fold run: oof.csv, oof_logits.npy and the
results dict (cv macro F1 over the pooled rows, one entry per fold).

Used by ``engine.kfold`` at the end of a run and by ``docclassify.aggregate`` when folds trained
as separate jobs are merged into one run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from docclassify import metrics
from docclassify.engine.orientation import pooled_orientation
from docclassify.utils.io import atomic_write, atomic_write_csv

RESULTS_FILE, OOF_FILE, OOF_LOGITS_FILE = "results.json", "oof.csv", "oof_logits.npy"
# What results.json keeps of each fold's outcome (engine.fold), in this order.
FOLD_KEYS = ("fold", "model", "model_option", "img_size", "best_macro_f1", "best_epoch", "epochs_run",
             "checkpoint", "weights", "n_train", "n_val", "seconds", "skipped_steps", "early_stopped", "history",
             "orientation")
FOLD_DEFAULTS = {"skipped_steps": 0, "early_stopped": False, "orientation": None}


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


def write_oof(run_dir: Path, oof: pd.DataFrame, logits: np.ndarray) -> None:
    atomic_write_csv(oof, run_dir / OOF_FILE, float_format="%.8g")
    with atomic_write(run_dir / OOF_LOGITS_FILE, "wb") as fh:
        np.save(fh, logits.astype(np.float32))


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
        "mean_fold_macro_f1": float(np.mean([o["best_macro_f1"] for o in outcomes])),
        "n_oof_rows": int(len(rows)),
        "folds_run": [o["fold"] for o in outcomes],
        "classes": list(classes),
        "oof": OOF_FILE, "oof_logits": OOF_LOGITS_FILE,
        "folds": [{k: o.get(k, FOLD_DEFAULTS.get(k)) for k in FOLD_KEYS} for o in outcomes],
        # The orientation head's accuracy and accuracy by orientation on turned validation copies
        # (engine/orientation.py); None when the run neither turns images nor has a head.
        "orientation": pooled_orientation(outcomes),
    }
