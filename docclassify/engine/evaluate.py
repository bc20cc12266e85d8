"""Evaluation of a fold's model: predicted logits over a loader, the validation metrics of the
clean view (the validation images) and of the robust view (their distorted copies,
data/validation.py), and the monitored value that picks the best epoch.

``validation`` decides which views are validated every epoch; ``trainer.monitor`` which value
decides (auto: robust when the robust view is validated, else clean; mean: their average).

**Select and estimate.** The robust copies are split into two disjoint sets (:func:`robust_roles`):
the *selecting* copies decide (best epoch, early stopping, pruning, the run's objective, ``top_k``),
the *estimating* copies decide nothing and give the reported robust figure (``val_macro_f1_robust``,
``cv_macro_f1_robust``, ``oof_robust.csv``) and the rows inference fits on. A figure measured on the
rows that picked the epoch is the maximum of several noisy measurements: optimistic by construction.
The selecting copies' figures carry the suffix ``_robust_select``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from docclassify import metrics
from docclassify.distortion.copies import id_hash
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
    """The value ``monitor`` picks from an epoch's (or a run's) metrics: for the robust view the
    selecting copies' macro F1 (``val_macro_f1_robust_select``; metrics without it, of a run from
    before the split: ``val_macro_f1_robust``)."""
    if monitor == "clean":
        return float(metrics["val_macro_f1"])
    robust = metrics.get("val_macro_f1_robust_select")
    robust = float(metrics["val_macro_f1_robust"] if robust is None else robust)
    if monitor == "robust":
        return robust
    return 0.5 * (float(metrics["val_macro_f1"]) + robust)


# How the robust copies split into selecting and estimating ones (results.json robust_split.rule).
SPLIT_RULES = {"copy": "copy parity: even copy indices select, odd ones estimate",
               "image": "validation.copies=1: half of each fold's images (by a stable hash of the ID) select, the "
                        "other half estimate"}


def robust_split_rule(copies: int) -> str:
    return "copy" if int(copies) >= 2 else "image"


def robust_roles(val_ids, copies: int) -> np.ndarray:
    """Which robust rows of a fold *estimate* (True) rather than select (False), in the order the
    fold's copies are predicted (data.validation.copy_rows: each validation image's copies together,
    in ``val_ids`` order).

    With 2+ copies per image (the default 2) every image is in both sets: its even copies select,
    its odd copies estimate, so both sets cover every validation image and cost nothing extra (the
    copies are predicted anyway). With one copy, the fold's images are split in two halves by a
    stable hash of their IDs (the lower ``ceil(n / 2)`` select). A pure function of the fold's IDs
    and the copy count: training, ``docclassify.aggregate`` and a resumed run draw the same split."""
    n, copies = len(val_ids), int(copies)
    if copies >= 2:
        return np.tile(np.arange(copies) % 2 == 1, n)
    order = np.argsort(np.asarray([id_hash(str(i)) for i in val_ids], dtype=np.uint64), kind="stable")
    estimate = np.zeros(n, dtype=bool)
    estimate[order[(n + 1) // 2:]] = True
    return estimate


def robust_view_metrics(logits: np.ndarray | None, targets: np.ndarray, num_classes: int,
                        estimate: np.ndarray | None) -> dict:
    """The robust view's metrics: ``*_robust`` on the estimating copies, ``*_robust_select`` on the
    selecting ones (``estimate``: :func:`robust_roles`); every value None without the view."""
    if logits is None or estimate is None:
        return {**view_metrics(None, targets, num_classes, "robust"),
                **view_metrics(None, targets, num_classes, "robust_select")}
    targets = np.asarray(targets)
    return {**view_metrics(logits[estimate], targets[estimate], num_classes, "robust"),
            **view_metrics(logits[~estimate], targets[~estimate], num_classes, "robust_select")}


def view_metrics(logits: np.ndarray | None, targets: np.ndarray, num_classes: int, view: str) -> dict:
    """classification_metrics of one view, keys suffixed ``_robust`` for the robust view; every
    value None when the view was not validated (``logits`` None)."""
    suffix = "" if view == "clean" else f"_{view}"
    if logits is None or not len(logits):  # not validated, or no row of this set in the fold
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
