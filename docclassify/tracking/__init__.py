"""Experiment tracking: progress display, local reports and W&B (wired by build_trackers).

- ``progress.Progress``: tqdm bars on a terminal, one line per epoch in logs.
- ``reports.LocalReports``: confusion_matrix.png, curves.png, per_class.csv, report.md in the run
  dir (with or without W&B; off with trainer.enable_reports=false, as debug=fast does);
  ``reports.write_classification_report`` for any labelled predictions (inference).
- ``csv_logger.CsvLogger`` (``logger=csv``): csv/fold<k>/metrics.csv, one row per epoch.
- ``wandb_tracker.WandbTracker`` (``logger=wandb``): one W&B run per fold + a cv summary run with
  the run's artefacts; ``wandb_tracker.InferenceTracker``: an infer run in the training's group.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from docclassify.utils.choices import LOGGERS


def is_main_process() -> bool:
    """Only rank 0 of a torchrun job reports (RANK is set before the process starts)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def build_trackers(cfg: DictConfig, run_dir: Path) -> list:
    """Callbacks for the progress display, the local reports and the `logger` group."""
    from docclassify.tracking.progress import Progress
    from docclassify.tracking.reports import LocalReports

    name = cfg.logger.name
    if name not in LOGGERS:
        raise ValueError(f"logger={name!r}: expected one of {LOGGERS} (conf/logger/)")
    if not is_main_process():
        return []
    trainer = cfg.trainer
    trackers = [Progress(trainer.epochs, trainer.log_every_n_steps, trainer.batch_size, trainer.accum_steps)]
    if trainer.enable_reports:
        trackers.append(LocalReports(run_dir))
    if name == "csv":
        from docclassify.tracking.csv_logger import CsvLogger

        trackers.append(CsvLogger(run_dir))
    if name == "wandb":
        from docclassify.tracking.wandb_tracker import WandbTracker

        tracker = WandbTracker(cfg, run_dir)
        if tracker.mode != "disabled":  # WANDB_MODE=disabled: skip the figures W&B would drop anyway
            trackers.append(tracker)
    return trackers
