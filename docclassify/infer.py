"""`python -m docclassify.infer runs=[RUN_DIR ...]`: training runs -> submission (see docs/inference.md)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from docclassify.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="infer")
def main(cfg: DictConfig) -> float | None:
    """Returns the test macro F1 when test labels are known (a sweep can optimise it), else None."""
    from docclassify.predict.inference import run_inference

    summary = run_inference(cfg, Path(cfg.paths.output_dir))
    metrics = summary["test_metrics"]
    return None if metrics is None else float(metrics["macro_f1"])


if __name__ == "__main__":
    main()
