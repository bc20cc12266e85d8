"""``logger=csv``: per-epoch metrics as plain CSV files, for people without W&B.

Each fold gets ``<run dir>/csv/fold<k>/metrics.csv`` with one row per epoch (``epoch`` counted
from 1): train loss, validation loss / macro F1 / accuracy (and any further validation figures
the engine reports, e.g. a robust view), best macro F1 so far, learning rate, images/s, epoch
seconds, the hard-augmentation share, whether mixup was on, and the F1 of every class
(``f1/<class>``). The file is rewritten atomically after every epoch, so it is complete at
any moment; a resumed fold keeps its earlier rows and adds the new ones.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from docclassify.tracking.callbacks import Callback
from docclassify.utils.io import atomic_write_csv

log = logging.getLogger(__name__)

CSV_DIR, METRICS_FILE = "csv", "metrics.csv"


def metrics_path(run_dir: str | Path, fold: int) -> Path:
    return Path(run_dir) / CSV_DIR / f"fold{fold}" / METRICS_FILE


def epoch_row(epoch: int, metrics: dict, classes: list[str]) -> dict:
    """One CSV row: ``epoch`` (from 1), every scalar of the engine's epoch record, per-class F1."""
    row: dict = {"epoch": epoch + 1}
    for key, value in metrics.items():
        if key == "epoch" or isinstance(value, (list, tuple, dict)) or value is None:
            continue
        row[key] = int(value) if isinstance(value, bool) else value
    for name, f1 in zip(classes, metrics.get("val_per_class_f1") or []):
        row[f"f1/{name}"] = f1
    return row


class CsvLogger(Callback):
    """Writes ``csv/fold<k>/metrics.csv`` of every fold trained (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.classes: list[str] = []
        self.rows: dict[int, list[dict]] = {}

    def on_run_start(self, info):
        self.classes = list(info["classes"])

    def _rows(self, fold: int) -> list[dict]:
        """The fold's rows so far: from its file when this process has not written it (a resume)."""
        if fold not in self.rows:
            path = metrics_path(self.run_dir, fold)
            self.rows[fold] = pd.read_csv(path).to_dict("records") if path.is_file() else []
        return self.rows[fold]

    def on_epoch_end(self, fold, epoch, metrics):
        rows = self._rows(fold)
        row = epoch_row(epoch, metrics, self.classes)
        # A resumed epoch replaces its earlier row; later rows (of a longer, older run) go too.
        rows[:] = [r for r in rows if not (isinstance(r.get("epoch"), (int, float)) and
                                           math.isfinite(r["epoch"]) and r["epoch"] >= row["epoch"])]
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        atomic_write_csv(pd.DataFrame(rows, columns=columns), metrics_path(self.run_dir, fold))

    def on_fold_end(self, fold, outcome):
        if fold in self.rows:
            log.info("fold %d: per-epoch metrics in %s", fold, metrics_path(self.run_dir, fold))
