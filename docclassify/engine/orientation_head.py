"""Training and validating the orientation head (``model.orientation_head``, models/heads.py).

Labels come free from the augmentation: every training sample reports the dihedral element its
pixels went through (data/augment.py), the head learns to name it (rot4: its quarter turns,
dihedral8: the element), and its loss, weighted by ``regularization.orientation_loss_weight``, is
added to the classification loss.

**Mixup / CutMix.** timm's Mixup mixes each image with the batch's reversed order (batch, pair and
elem modes alike), with one lambda per batch or per sample (cutmix: the pasted area's share). The
orientation targets are mixed exactly like the class targets: each mixed image's target is
``lam * onehot(own element) + (1 - lam) * onehot(partner's element)``, so a blend of an upright and
a turned page asks for both in proportion, and a pasted turned patch counts by its area. This is
done by handing Mixup one joint label ``class * n + element`` over ``K * n`` classes and summing the
joint soft target over each axis: the class marginal is the very target Mixup makes for K classes
(label smoothing included), and both targets share one lambda draw. The orientation targets carry
the same label smoothing. Odd batches, which timm cannot mix, keep hard orientation labels.

**Validation.** Every epoch each validation image is also seen turned by a fixed element of the
group (row ``i``: element ``i mod n``, so the same rows in every epoch and every element equally
often), and the head's accuracy on those copies (``val_orientation_accuracy``; chance is 1/n) and
the classifier's accuracy by orientation (upright / turned / mirrored) are logged. The copies use
``augment.orientation``'s group, else the head's; a run with neither has no such pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from docclassify.data import dihedral
from docclassify.data.dihedral import head_label, head_size
from docclassify.distortion.copies import copy_element

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import AugmentConfig, RegularizationConfig


@dataclass(frozen=True)
class OrientationTraining:
    """The head being trained: its kind (rot4 | dihedral8), number of labels and loss weight."""

    head: str
    weight: float

    @property
    def n(self) -> int:
        return head_size(self.head)


def build_orientation_training(head: str, reg_cfg: RegularizationConfig) -> OrientationTraining | None:
    """What the step trains the head with (None without a head: the step is unchanged)."""
    if head == "none":
        return None
    return OrientationTraining(head, float(reg_cfg.orientation_loss_weight))


def element_labels(elements: torch.Tensor, head: str) -> torch.Tensor:
    """Element indices (what the dataset reports) -> the head's labels."""
    if head == "rot4":
        return elements % 4
    return elements


def mix_with_orientation(mixup, x: torch.Tensor, y: torch.Tensor, o: torch.Tensor, n: int):
    """timm Mixup over the joint label ``y * n + o``: (mixed images, class soft targets, orientation
    soft targets), both mixed with the same lambda (see the module doc)."""
    k = int(mixup.num_classes)
    mixup.num_classes = k * n
    try:
        x, joint = mixup(x, y * n + o)
    finally:
        mixup.num_classes = k
    joint = joint.view(len(joint), k, n)
    return x, joint.sum(dim=2), joint.sum(dim=1)


def orientation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy on hard labels, or on soft targets (mixed batches)."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


# ------------------------------------------------------------------------------------------ validation
def check_group(augment: AugmentConfig, head: str) -> tuple[dihedral.Element, ...]:
    """The elements validation copies are turned by: augment.orientation's group, else the head's,
    else none (an empty tuple: no orientation pass)."""
    group = str(augment.orientation)
    if group != "none":
        return dihedral.GROUPS[group]
    return dihedral.head_group(head) if head != "none" else ()


@torch.inference_mode()
def predict_turned(model, loader, ctx, elements: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(class logits, orientation logits or None) of the loader's images, image ``i`` turned by element
    ``elements[i]``. ``loader`` yields batches in order (no shuffling)."""
    from docclassify.engine.setup import autocast, to_model_input

    model.eval()
    logits, heads, start = [], [], 0
    for images, *_ in loader:
        x = dihedral.apply_per_sample(to_model_input(images, ctx), elements[start:start + len(images)])
        start += len(images)
        with autocast(ctx):
            out = model(x, orientation=True) if head != "none" else model(x)
        if head != "none":
            logits.append(out[0].float().cpu())
            heads.append(out[1].float().cpu())
        else:
            logits.append(out.float().cpu())
    return torch.cat(logits).numpy(), (torch.cat(heads).numpy() if heads else None)


def orientation_metrics(logits: np.ndarray, head_logits: np.ndarray | None, targets: np.ndarray,
                        elements: np.ndarray, head: str) -> dict:
    """The head's accuracy on the turned copies (None without a head) and the classifier's correct /
    total counts by orientation category (exact to pool over folds)."""
    correct = logits.argmax(1) == np.asarray(targets)
    counts = dihedral.category_counts(correct, elements)
    head_acc, head_counts = None, None
    if head_logits is not None:
        labels = np.asarray([head_label(dihedral.element(e), head) for e in elements])
        hits = int((head_logits.argmax(1) == labels).sum())
        head_acc, head_counts = (hits / len(labels) if len(labels) else float("nan")), [hits, len(labels)]
    return {"val_orientation_accuracy": head_acc, "val_orientation_head": head_counts, "val_orientation_counts": counts,
            **{f"val_accuracy_{c}": a for c, a in dihedral.accuracy_of_counts(counts).items()}}


@dataclass(frozen=True)
class OrientationCheck:
    """A fold's turned validation copies: each validation row's element index, and the head (or none);
    with robust validation, the element each robust copy was turned by (the profile's draws)."""

    elements: np.ndarray
    head: str
    robust_elements: np.ndarray | None = None


def orientation_check(augment: AugmentConfig, head: str, n_val: int,
                      robust_copies_of=None) -> OrientationCheck | None:
    """``robust_copies_of``: (the validation rows' IDs, the run's RobustSpec) when the robust view exists."""
    group = check_group(augment, head)
    if not group:
        return None
    robust = copy_elements(*robust_copies_of) if robust_copies_of is not None else None
    return OrientationCheck(dihedral.validation_elements(n_val, group), head, robust)


def copy_elements(ids, spec) -> np.ndarray:
    """Element index of each robust copy of ``ids`` (each ID's copies together, as copy_rows orders
    them): the turn and mirror image its profile drew for it (distortion/copies.py ``copy_element``)."""
    return np.asarray([copy_element(spec, str(image_id), copy).index for image_id in ids
                       for copy in range(int(spec.copies))], dtype=np.int64)


def validate_orientation(model, val_loader, ctx, check: OrientationCheck | None, targets: np.ndarray) -> dict:
    """The epoch's orientation metrics (empty without a check): every rank predicts its shard of the
    validation rows (engine.distributed.shard), gathered in order."""
    from docclassify.engine import distributed

    if check is None:
        return {}
    elements = distributed.shard(check.elements)
    logits, head_logits = predict_turned(model, val_loader, ctx, elements, check.head)
    logits = distributed.gather_rows(logits)
    head_logits = distributed.gather_rows(head_logits) if head_logits is not None else None
    return orientation_metrics(logits, head_logits, targets, check.elements, check.head)


def validate_robust_orientation(model, robust_loader, ctx, check: OrientationCheck, targets: np.ndarray,
                                robust_logits: np.ndarray) -> dict:
    """On the robust copies (turned and mirrored as the distortion profile drew them, besides skew, blur,
    noise...): the classifier's accuracy by orientation from its robust logits, and with a head, the
    head's accuracy (one more pass over the copies). Keys suffixed ``_robust``."""
    from docclassify.engine import distributed

    head_logits = None
    if check.head != "none":
        shard = distributed.shard(np.zeros(len(check.robust_elements), dtype=np.int64))
        _, head_logits = predict_turned(model, robust_loader, ctx, shard, check.head)
        head_logits = distributed.gather_rows(head_logits)
    metrics = orientation_metrics(robust_logits, head_logits, targets, check.robust_elements, check.head)
    return {f"{k}_robust": v for k, v in metrics.items()}


def best_epoch_orientation(history: list[dict], best_epoch: int, check: OrientationCheck | None) -> dict | None:
    """The orientation metrics of the fold's best epoch (results.json), None without them."""
    record = next((r for r in history if r.get("epoch") == best_epoch), None)
    if check is None or record is None or "val_orientation_counts" not in record:
        return None
    keys = ("val_orientation_accuracy", "val_orientation_head", "val_orientation_counts")
    keys += tuple(f"{k}_robust" for k in keys)
    return {"head": check.head, **{k: record.get(k) for k in keys if k in record}}


def pooled_orientation(outcomes: list[dict]) -> dict | None:
    """results.json's ``orientation``: the head's accuracy and the classifier's accuracy by orientation
    on the turned validation copies, pooled over the folds' best epochs (None when no fold has them)."""
    parts = [o.get("orientation") for o in outcomes if o.get("orientation")]
    if not parts:
        return None
    head = parts[0]["head"]
    out = {"head": head, **pooled_view(parts, "")}
    if any(p.get("val_orientation_counts_robust") for p in parts):
        out["robust"] = pooled_view(parts, "_robust")
    return out


def pooled_view(parts: list[dict], suffix: str) -> dict:
    """The pooled figures of one view (``""``: the turned copies, ``_robust``: the robust copies)."""
    counts = dihedral.pool_counts([p.get(f"val_orientation_counts{suffix}") for p in parts])
    heads = [p[f"val_orientation_head{suffix}"] for p in parts if p.get(f"val_orientation_head{suffix}")]
    ok, n = (sum(h[0] for h in heads), sum(h[1] for h in heads)) if heads else (0, 0)
    head = parts[0]["head"]
    return {"head_accuracy": ok / n if n else None, "head_chance": 1.0 / head_size(head) if n else None,
            "accuracy_by_orientation": dihedral.accuracy_of_counts(counts), "counts": counts}
