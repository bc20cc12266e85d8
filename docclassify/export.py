"""`python -m docclassify.export runs=[RUN_DIR ...] format=onnx quantize=none output=DIR`: runs (or one
infer run dir) -> a bundle that predicts without the training stack (docs/deployment.md).

The flow is :func:`docclassify.deploy.export.run_export`. A refused export prints
``docclassify.export: error: ...`` and exits with code 2 (:mod:`docclassify.errors`); no partial bundle
is left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from docclassify import errors
from docclassify.config import CONF_DIR, refuse_foreign_groups

PROG = "docclassify.export"
# Why a training group is not an export option (docclassify.config.foreign_group_errors).
FOREIGN_HINT = (": export takes each run's model and data from its run dir (runs=[RUN_DIR]); its own keys are "
                "infer's (tta=..., calibrate, data.root=DIR) and the bundle's (format, quantize, output)")


def export(cfg: DictConfig, out_dir: Path) -> dict:
    """Check the config, then export; returns the bundle's spec (bundle.json's content + its folder)."""
    from docclassify.config_schema import check_config

    check_config(cfg)
    from docclassify.deploy.export import run_export

    return run_export(cfg, out_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    from docclassify.engine.signals import interrupts_reported

    with errors.reported_as_usage_errors(PROG), interrupts_reported(PROG, "no bundle was written; run it again"):
        export(cfg, Path(cfg.paths.output_dir))


def cli(argv: list[str] | None = None) -> None:
    """`python -m docclassify.export` and the `docclassify-export` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_foreign_groups("export", argv, FOREIGN_HINT)
    sys.argv[1:] = argv
    errors.remember_preexisting_run_dir(argv)
    main()


if __name__ == "__main__":
    cli()
