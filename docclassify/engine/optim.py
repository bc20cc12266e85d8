"""Optimiser and lr schedule from timm's factories."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

# SCHEDULES: timm names; every one is stepped per optimiser update.
from docclassify.utils.choices import SCHEDULES

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import ConstantSchedule

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    """AdamW (or another timm optimiser ``name``) with no weight decay on norms and biases
    (timm's filter_bias_and_bn) and optional layer-wise lr decay."""
    return create_optimizer_v2(model, opt=name, lr=float(lr), weight_decay=float(weight_decay),
                               layer_decay=layer_decay, filter_bias_and_bn=True)


def effective_warmup(warmup_epochs: int, epochs: int) -> int:
    """Warmup longer than the run would never reach the peak lr: keep at least one epoch of decay."""
    warmup = int(warmup_epochs or 0)
    if warmup >= epochs:
        clipped = max(0, epochs - 1)
        log.warning("schedule.warmup_epochs=%d >= trainer.epochs=%d: using %d warmup epoch(s)", warmup, epochs, clipped)
        return clipped
    return warmup


def build_scheduler(optimizer, sched_cfg: ConstantSchedule, epochs: int, updates_per_epoch: int):
    """Warmup (linear, from warmup_lr) then the named decay, stepped per optimiser update; ``sched_cfg``: the
    schedule group's typed settings (a CosineSchedule has min_lr)."""
    warmup = effective_warmup(sched_cfg.warmup_epochs, epochs)
    if sched_cfg.name not in SCHEDULES:
        raise ValueError(f"schedule.name={sched_cfg.name!r}: expected one of {', '.join(SCHEDULES)}")
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched_cfg.name,
        num_epochs=epochs - warmup,
        warmup_epochs=warmup,
        warmup_prefix=True,  # cosine spans the epochs after warmup and ends at min_lr
        warmup_lr=float(sched_cfg.warmup_lr),
        # A constant schedule has no floor to decay to (conf/schedule/constant.yaml has no min_lr).
        min_lr=float(getattr(sched_cfg, "min_lr", 0.0)),
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler
