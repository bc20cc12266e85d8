"""Evaluation of a fold's model: predicted logits over a loader, the validation metrics of the
clean view (the validation images) and of the robust view (their distorted copies,
data/validation.py), and the monitored value that picks the best epoch.

``validation`` decides which views are validated every epoch; ``trainer.monitor`` which value
decides (auto: robust when the robust view is validated, else clean; mean: their average)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from docclassify import metrics
from docclassify.engine.epoch import StepContext, autocast, to_model_input


@torch.inference_mode()
def predict_logits(model, loader, ctx: StepContext) -> np.ndarray:
    model.eval()
    out = []
    for images, _ in loader:
        with autocast(ctx):
            out.append(model(to_model_input(images, ctx)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


# validation option -> the views validated every epoch
VIEWS = {"clean": ("clean",), "robust": ("robust",), "both": ("clean", "robust")}
MONITORS = ("clean", "robust", "mean")


def validated_views(validation_cfg) -> tuple[str, ...]:
    """The views of ``validation`` (a config without one, e.g. an older run's: clean)."""
    return VIEWS[str(validation_cfg.name)] if validation_cfg is not None else VIEWS["clean"]


def resolve_monitor(validation_cfg, monitor: str) -> str:
    """``trainer.monitor`` resolved: auto -> robust when the robust view is validated, else clean.
    A monitor that needs a view this validation does not compute is refused (check_config says so
    first, with the fix)."""
    views = validated_views(validation_cfg)
    if monitor == "auto":
        return "robust" if "robust" in views else "clean"
    needs = {"clean": ("clean",), "robust": ("robust",), "mean": ("clean", "robust")}[monitor]
    missing = [v for v in needs if v not in views]
    if missing:
        raise ValueError(f"trainer.monitor={monitor} needs the {' and '.join(missing)} view, which "
                         f"validation={validation_cfg.name if validation_cfg is not None else 'clean'} "
                         "does not validate every epoch; use validation=both")
    return monitor


def monitored_value(metrics: dict, monitor: str) -> float:
    """The value ``monitor`` picks from an epoch's (or a run's) metrics."""
    if monitor == "clean":
        return float(metrics["val_macro_f1"])
    if monitor == "robust":
        return float(metrics["val_macro_f1_robust"])
    return 0.5 * (float(metrics["val_macro_f1"]) + float(metrics["val_macro_f1_robust"]))


def view_metrics(logits: np.ndarray | None, targets: np.ndarray, num_classes: int, view: str) -> dict:
    """classification_metrics of one view, keys suffixed ``_robust`` for the robust view; every
    value None when the view was not validated (``logits`` None)."""
    suffix = "" if view == "clean" else f"_{view}"
    if logits is None:
        return {f"{k}{suffix}": None for k in ("val_loss", "val_macro_f1", "val_accuracy", "val_per_class_f1")}
    return {f"{k}{suffix}": v for k, v in classification_metrics(logits, targets, num_classes).items()}


def classification_metrics(logits: np.ndarray, targets: np.ndarray, num_classes: int) -> dict:
    """val_loss (cross entropy), val_macro_f1, val_accuracy, val_per_class_f1 of a fold's validation rows."""
    y = np.asarray(targets)
    preds = logits.argmax(1)
    loss = F.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(y).long()) if len(y) else math.nan
    return {
        "val_loss": float(loss),
        "val_macro_f1": metrics.macro_f1(y, preds),
        "val_accuracy": metrics.accuracy(y, preds),
        "val_per_class_f1": metrics.per_class_f1(y, preds, num_classes),
    }
