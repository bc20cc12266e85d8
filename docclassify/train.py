"""`python -m docclassify.train`: compose the config, train every selected fold, return the objective
(results.json's ``objective``: the pooled macro F1 that ``trainer.monitor`` picks; robust by default).

The story of a run is in :mod:`docclassify.engine.kfold` (run -> fold -> epoch); this module
only wires Hydra, torchrun, the callbacks (trackers, sweep reporting), the exit codes and the
report of a refused run (:mod:`docclassify.errors`). Start-up does only what the command needs:
the engine (torch, timm, scikit-learn, albumentations) is imported after the config is checked,
and ``--help`` or a config error never imports it.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from docclassify import errors
from docclassify.config import CONF_DIR, refuse_foreign_groups
from docclassify.tracking import phases

log = logging.getLogger("docclassify.train")
PROG = "docclassify.train"
# Why an infer option is not a train option (docclassify.config.foreign_group_errors).
FOREIGN_HINT = " (with submit=true, give inference options as infer.<key>, e.g. infer.tta=orient)"


def build_callbacks(cfg: DictConfig) -> list:
    """Progress/trackers (logger group) and sweep hooks (hparams_search group)."""
    from docclassify.engine import distributed
    from docclassify.engine.resume import resolve_run_dir

    if distributed.init_from_env() and not distributed.is_main():
        return []  # torchrun: only rank 0 logs, prints progress and reports to trackers/sweeps
    from docclassify.sweep import build_sweep_callbacks
    from docclassify.tracking import build_trackers

    return [*build_trackers(cfg, resolve_run_dir(cfg)), *build_sweep_callbacks(cfg), phases.PhaseLog()]


def train(cfg: DictConfig) -> float:
    from docclassify.config_schema import check_config

    phases.mark("composed")
    _share_run_dir()
    check_config(cfg)  # before the engine is imported and before a tracker starts a (W&B) run
    phases.mark("checked")
    from docclassify.engine.kfold import run_kfold
    from docclassify.engine.resume import resolve_run_dir, resume_config
    from docclassify.engine.signals import interrupts_raise
    from docclassify.engine.stops import reported_stops
    from docclassify.submit import prepare_submission

    cfg = resume_config(cfg)  # resume=RUN_DIR alone: that run's own overrides (checked again in run_kfold)
    submission = prepare_submission(cfg)  # submit=true: checked before training
    # A stop (signal, prune, another torchrun rank's failure) ends every rank with one message.
    with interrupts_raise(), reported_stops(resolve_run_dir(cfg)):
        callbacks = build_callbacks(cfg)
        phases.freeze_imported_objects()
        phases.mark("imported")
        results = run_kfold(cfg, callbacks)
        if cfg.get("specialists") is not None and cfg.specialists.name != "none":  # issue 32: after the run
            from docclassify.specialists.training import train_specialists

            train_specialists(cfg, resolve_run_dir(cfg))
        summary = submission.run(resolve_run_dir(cfg)) if submission is not None else None
    from docclassify.engine import distributed

    if distributed.is_main():  # rank 0 (or no torchrun) prints the run's result line
        from docclassify.submit import result_line

        print(result_line(results, summary), flush=True)
    return float(results["objective"])


def _share_run_dir() -> None:
    """torchrun: rank 0 tells the other ranks (waiting before Hydra) which run dir Hydra made."""
    if not _under_torchrun():
        return
    from hydra.core.hydra_config import HydraConfig

    from docclassify.engine import distributed

    if HydraConfig.initialized():
        distributed.share_run_dir(HydraConfig.get().runtime.output_dir)


def _under_torchrun() -> bool:
    """torchrun sets these (engine.distributed.TORCHRUN_ENV); without them that module, and
    torch with it, is not needed before the config is checked."""
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    with errors.reported_as_usage_errors(PROG):
        return train(cfg)


def cli(argv: list[str] | None = None) -> None:
    """`python -m docclassify.train` and the `docclassify-train` console script. The command line,
    before and after Hydra: torchrun's shared run dir, options of another entrypoint, and a quick
    exit (tracking.phases.freeze_before_exit)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    phases.mark("cli")
    phases.pause_gc()  # until the engine is imported (tracking/phases.py)
    refuse_foreign_groups("train", argv, FOREIGN_HINT)
    if _under_torchrun():
        from docclassify.engine import distributed

        argv = distributed.follow_main_run_dir(argv)  # torchrun: all ranks in rank 0's run dir
    sys.argv[1:] = argv
    errors.remember_preexisting_run_dir(argv)
    try:
        main()
    finally:
        if "docclassify.engine.distributed" in sys.modules:
            sys.modules["docclassify.engine.distributed"].cleanup()
        phases.freeze_before_exit()


if __name__ == "__main__":
    cli()
