"""`python -m docclassify.train`: compose the config, train every selected fold, return cv macro F1."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from docclassify.config import CONF_DIR

log = logging.getLogger("docclassify.train")


def build_callbacks(cfg: DictConfig) -> list:
    """Progress/trackers (logger group) and sweep hooks (hparams_search group)."""
    from docclassify.engine.run import resolve_run_dir
    from docclassify.sweep import build_sweep_callbacks
    from docclassify.tracking import build_trackers

    return [*build_trackers(cfg, resolve_run_dir(cfg)), *build_sweep_callbacks(cfg)]


def train(cfg: DictConfig) -> float:
    from docclassify.engine.loop import StopRequested
    from docclassify.engine.run import run_training

    try:
        results = run_training(cfg, build_callbacks(cfg))
    except StopRequested as exc:
        log.error("%s. The last-state checkpoint is saved; continue with resume=<run dir>.", exc)
        sys.exit(143)
    return float(results["cv_macro_f1"])


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
