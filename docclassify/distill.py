"""`python -m docclassify.distill runs=[TEACHER_RUN ...] model=resnet18 ...`: one student trained on a
teacher ensemble's soft targets (knowledge distillation; docs/deployment.md).

The flow is :func:`docclassify.deploy.distill.run_distill`: the teacher's predictions, then the ordinary
training engine. Every group and key of ``python -m docclassify.train`` is the student's; a refused run
prints ``docclassify.distill: error: ...`` and exits with code 2 (:mod:`docclassify.errors`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from docclassify import errors
from docclassify.config import CONF_DIR, refuse_foreign_groups
from docclassify.tracking import phases

PROG = "docclassify.distill"
# Why an infer option is not a distill option (docclassify.config.foreign_group_errors).
FOREIGN_HINT = " (the teacher's test-time augmentation is distill.teacher_tta)"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="distill")
def main(cfg: DictConfig) -> float:
    from docclassify.deploy.distill import run_distill

    with errors.reported_as_usage_errors(PROG):
        return run_distill(cfg)


def cli(argv: list[str] | None = None) -> None:
    """`python -m docclassify.distill` and the `docclassify-distill` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_foreign_groups("distill", argv, FOREIGN_HINT)
    phases.pause_gc()
    sys.argv[1:] = argv
    errors.remember_preexisting_run_dir(argv)
    try:
        main()
    finally:
        phases.freeze_before_exit()


if __name__ == "__main__":
    cli()
