"""`python -m docclassify.train`: compose the config, train every selected fold, return the objective
(results.json's ``objective``: the pooled macro F1 that ``trainer.monitor`` picks; robust by default).

The story of a run is in :mod:`docclassify.engine.kfold` (run -> fold -> epoch); this module
only wires Hydra, torchrun, the callbacks (trackers, sweep reporting) and the exit codes.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from docclassify.config import CONF_DIR

log = logging.getLogger("docclassify.train")


def build_callbacks(cfg: DictConfig) -> list:
    """Progress/trackers (logger group) and sweep hooks (hparams_search group)."""
    from docclassify.engine import distributed
    from docclassify.engine.resume import resolve_run_dir

    if distributed.init_from_env() and not distributed.is_main():
        return []  # torchrun: only rank 0 logs, prints progress and reports to trackers/sweeps
    from docclassify.sweep import build_sweep_callbacks
    from docclassify.tracking import build_trackers

    return [*build_trackers(cfg, resolve_run_dir(cfg)), *build_sweep_callbacks(cfg)]


def train(cfg: DictConfig) -> float:
    from docclassify.engine.epoch import StopRequested
    from docclassify.engine.kfold import run_kfold
    from docclassify.engine.resume import resolve_run_dir, resume_config
    from docclassify.submit import prepare_submission

    _share_run_dir()
    cfg = resume_config(cfg)  # resume=RUN_DIR alone: that run's own overrides
    submission = prepare_submission(cfg)  # submit=true: checked before training
    try:
        results = run_kfold(cfg, build_callbacks(cfg))
    except StopRequested as exc:
        log.error("%s. The last-state checkpoint is saved; continue with: python -m docclassify.train resume=%s",
                  exc, resolve_run_dir(cfg))
        sys.exit(143)
    if submission is not None:
        submission.run(resolve_run_dir(cfg))
    return float(results["objective"])


def _share_run_dir() -> None:
    """torchrun: rank 0 tells the other ranks (waiting before Hydra) which run dir Hydra made."""
    from hydra.core.hydra_config import HydraConfig

    from docclassify.engine import distributed

    if HydraConfig.initialized():
        distributed.share_run_dir(HydraConfig.get().runtime.output_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)


def cli() -> None:
    """`python -m docclassify.train` and the `docclassify-train` console script."""
    from docclassify.engine import distributed

    sys.argv[1:] = distributed.follow_main_run_dir(sys.argv[1:])  # torchrun: all ranks in rank 0's run dir
    try:
        main()
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    cli()
