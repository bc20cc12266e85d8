"""Mixup / CutMix with label smoothing folded in (timm): soft (N, K) targets for the loss
(engine.losses takes both soft and hard targets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from timm.data import Mixup

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import AugmentConfig


def build_mixup(aug_cfg: AugmentConfig, num_classes: int, label_smoothing: float) -> Mixup | None:
    if float(aug_cfg.mixup_alpha) <= 0 and float(aug_cfg.cutmix_alpha) <= 0:
        return None
    return Mixup(
        mixup_alpha=float(aug_cfg.mixup_alpha),
        cutmix_alpha=float(aug_cfg.cutmix_alpha),
        prob=float(aug_cfg.mixup_prob),
        switch_prob=float(aug_cfg.mixup_switch_prob),
        mode=str(aug_cfg.mixup_mode),
        label_smoothing=float(label_smoothing),
        num_classes=num_classes,
    )


def mixup_active(aug_cfg: AugmentConfig, epoch: int) -> bool:
    """Mixup is switched off from ``mixup_off_epoch`` on (the last epochs train on clean images)."""
    off = aug_cfg.mixup_off_epoch
    return off is None or epoch < int(off)
