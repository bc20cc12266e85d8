"""Experiment tracking: W&B, local reports and progress display (wired by build_trackers)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def build_trackers(cfg: DictConfig, run_dir: Path) -> list:
    """Callbacks for the `logger` group and the progress display."""
    from docclassify.engine.progress import EpochLines

    return [EpochLines(cfg.trainer.epochs, cfg.trainer.log_every_n_steps)]
