"""`python -m docclassify.infer runs=[RUN_DIR ...]`: training runs -> submission (see docs/inference.md).

A refused run (a bad run dir, test data or setting) prints ``docclassify.infer: error: ...``,
exits with code 2 and leaves no run dir (:mod:`docclassify.errors`).
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


def infer(cfg: DictConfig) -> float | None:
    """Returns the test macro F1 when test labels are known (a sweep can optimise it), else None."""
    from docclassify.config_schema import check_config

    check_config(cfg)
    from docclassify.predict.inference import run_inference

    phases.freeze_imported_objects()
    summary = run_inference(cfg, Path(cfg.paths.output_dir))
    metrics = summary["test_metrics"]
    return None if metrics is None else float(metrics["macro_f1"])


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="infer")
def main(cfg: DictConfig) -> float | None:
    with errors.reported_as_usage_errors(PROG):
        return infer(cfg)


def cli(argv: list[str]) -> None:
    refuse_foreign_groups("infer", argv, FOREIGN_HINT)
    phases.pause_gc()  # until the inference modules are imported (tracking/phases.py)
    sys.argv[1:] = argv
    errors.remember_preexisting_run_dir(argv)
    try:
        main()
    finally:
        phases.freeze_before_exit()


if __name__ == "__main__":
    cli(sys.argv[1:])
