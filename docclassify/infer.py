"""`python -m docclassify.infer runs=[RUN_DIR ...]`: training runs -> submission (see docs/inference.md)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from docclassify.config import CONF_DIR


def infer(cfg: DictConfig, out_dir: Path) -> dict:
    """Predict, write the outputs into ``out_dir``, track the run (logger=wandb). Returns summary.json's
    content. Also what ``docclassify.train ... submit=true`` runs after training."""
    from docclassify.predict.inference import run_inference
    from docclassify.tracking.wandb_tracker import build_inference_tracker

    tracker = build_inference_tracker(cfg, out_dir)  # logger=...: checked before any work
    summary = run_inference(cfg, out_dir)
    if tracker is not None:
        tracker.log(summary)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="infer")
def main(cfg: DictConfig) -> float | None:
    """Returns the test macro F1 when test labels are known (a sweep can optimise it), else None."""
    metrics = infer(cfg, Path(cfg.paths.output_dir))["test_metrics"]
    return None if metrics is None else float(metrics["macro_f1"])


if __name__ == "__main__":
    main()
