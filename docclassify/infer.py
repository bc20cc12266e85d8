"""`python -m docclassify.infer runs=[RUN_DIR ...]`: training runs -> submission (see docs/inference.md).

A refused run (a bad run dir, test data or setting) prints ``docclassify.infer: error: ...``,
exits with code 2 and leaves no run dir (:mod:`docclassify.errors`); SIGTERM / Ctrl-C print one
line and exit 143 / 130 with no partial submission.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from docclassify import errors
from docclassify.config import CONF_DIR, refuse_foreign_groups
from docclassify.tracking import phases

PROG = "docclassify.infer"
# Why a training group is not an infer option (docclassify.config.foreign_group_errors).
FOREIGN_HINT = (": infer takes each run's model, data and training settings from its run dir "
                "(runs=[RUN_DIR]); infer's own data.* keys point at other test data, e.g. data.root=DIR")
INTERRUPTED = ("no submission.csv, test_probs.csv or summary.json was written (they appear together); "
               "run the same command again")


def infer(cfg: DictConfig, out_dir: Path) -> dict:
    """Predict, write the outputs into ``out_dir``, track the run (logger=wandb). Returns summary.json's
    content. Also what ``docclassify.train ... submit=true`` runs after training."""
    from docclassify.config_schema import check_config

    check_config(cfg)  # every choice and range (top_k, batch_size, ...) before any work
    from docclassify.predict.pipeline import run_inference
    from docclassify.tracking.wandb_tracker import build_inference_tracker

    phases.freeze_imported_objects()
    tracker = build_inference_tracker(cfg, out_dir)  # logger=...: checked before any work
    summary = run_inference(cfg, out_dir)
    if tracker is not None:
        tracker.log(summary)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="infer")
def main(cfg: DictConfig) -> float | None:
    """Returns the test macro F1 when test labels are known (a sweep can optimise it), else None."""
    from docclassify.engine.signals import interrupts_reported

    with errors.reported_as_usage_errors(PROG), interrupts_reported(PROG, INTERRUPTED):
        metrics = infer(cfg, Path(cfg.paths.output_dir))["test_metrics"]
    return None if metrics is None else float(metrics["macro_f1"])


def cli(argv: list[str] | None = None) -> None:
    """`python -m docclassify.infer` and the `docclassify-infer` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_foreign_groups("infer", argv, FOREIGN_HINT)
    phases.pause_gc()  # until the inference modules are imported (tracking/phases.py)
    sys.argv[1:] = argv
    errors.remember_preexisting_run_dir(argv)
    try:
        main()
    finally:
        phases.freeze_before_exit()


if __name__ == "__main__":
    cli()
