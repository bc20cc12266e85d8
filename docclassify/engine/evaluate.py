"""Evaluation of a fold's model: predicted logits over a loader, and the validation metrics."""

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
