"""Build what one fold trains with: the model, then optimiser, lr schedule, mixup, loss, EMA,
AMP scaler and the DDP / compile wrappers, as one :class:`FoldParts`.

This is the one module that reads the ``regularization`` group (dropout, drop-path, weight
decay, layer decay, label smoothing, EMA) and the ``loss`` group (engine.losses: instantiated,
then set up with the fold's class counts).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from timm.utils import ModelEmaV3

from docclassify.engine import distributed
from docclassify.engine.epoch import FoldParts, StepContext
from docclassify.engine.losses import LossContext, build_loss
from docclassify.engine.mixup import build_mixup
from docclassify.engine.optim import build_optimizer, build_scheduler
from docclassify.engine.orientation_head import build_orientation_training
from docclassify.engine.sampling import class_shares
from docclassify.models.factory import create_model
from docclassify.models.heads import orientation_head_of, with_orientation_head

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from omegaconf import DictConfig

    from docclassify.config_schema import (
        AugmentConfig,
        ConstantSchedule,
        DataCommon,
        ModelConfig,
        RegularizationConfig,
        TrainerConfig,
    )


def build_model(model_cfg: ModelConfig, num_classes: int, reg_cfg: RegularizationConfig,
                img_size: int | None = None) -> torch.nn.Module:
    """The fold's timm model (pretrained or local weights as the model option says), built for
    ``img_size`` when the architecture has a fixed input size (Swin, ViT, BEiT), wrapped with its
    orientation head when ``model.orientation_head`` asks for one (models/heads.py)."""
    model = create_model(model_cfg.timm_name, num_classes, pretrained=bool(model_cfg.pretrained),
                         weights=model_cfg.weights, drop_rate=float(reg_cfg.drop_rate),
                         drop_path_rate=float(reg_cfg.drop_path_rate), img_size=img_size)
    return with_orientation_head(model, str(model_cfg.orientation_head or "none"))


def build_train_loss(loss_cfg: DictConfig, class_counts: np.ndarray, sampler: str, label_smoothing: float) -> Callable:
    """The ``loss`` group for one fold: instantiated, then ``setup`` with a LossContext (the training rows'
    class counts, the class shares ``sampler`` (data.sampler) draws, regularization.label_smoothing)."""
    counts = np.asarray(class_counts, dtype=np.int64)
    context = LossContext(len(counts), counts, class_shares(counts, sampler), float(label_smoothing), sampler)
    return build_loss(loss_cfg, context)


def build_fold_parts(model: torch.nn.Module, trainer: TrainerConfig, data: DataCommon, augment: AugmentConfig,
                     reg: RegularizationConfig, schedule: ConstantSchedule, loss_cfg: DictConfig, ctx: StepContext,
                     class_counts: np.ndarray, batches_per_epoch: int) -> FoldParts:
    """Everything the step loop needs, on ``ctx.device``; ``trainer``, ``data`` (its sampler), ``augment``
    (mixup), ``reg`` and ``schedule`` are those groups' typed settings, ``loss_cfg`` the loss group's node
    (instantiated from its ``_target_``); ``class_counts``: (K,) the fold's training rows
    per class (K = the number of classes)."""
    num_classes = len(class_counts)
    model = model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.convert_sync_batchnorm(model, bool(trainer.sync_bn), ctx.device)
    optimizer = build_optimizer(model, trainer.optimizer, float(trainer.lr), float(reg.weight_decay),
                                reg.layer_decay)
    lr_factor = distributed.lr_factor(str(trainer.lr_scale), distributed.world_size())
    for group in optimizer.param_groups:  # trainer.lr_scale, before the schedule reads its base lr
        group["lr"] *= lr_factor
    updates_per_epoch = math.ceil(batches_per_epoch / max(1, int(trainer.accum_steps)))
    scheduler = build_scheduler(optimizer, schedule, int(trainer.epochs), updates_per_epoch)
    mixup = build_mixup(augment, num_classes, float(reg.label_smoothing))
    loss_fn = build_train_loss(loss_cfg, class_counts, data.sampler, float(reg.label_smoothing))
    ema = ModelEmaV3(model, decay=float(reg.ema_decay), use_warmup=bool(reg.ema_warmup)) if reg.ema else None
    scaler = torch.amp.GradScaler(ctx.device.type) if ctx.amp.use_scaler else None
    ddp_model = distributed.wrap_ddp(model, ctx.device)  # the EMA above tracks the unwrapped module
    train_model = torch.compile(ddp_model) if trainer.compile else ddp_model
    return FoldParts(model, train_model, optimizer, scheduler, loss_fn, mixup, ema, scaler,
                     build_orientation_training(orientation_head_of(model), reg), float(reg.label_smoothing))


def eval_model(parts: FoldParts) -> torch.nn.Module:
    """The weights validation scores and the best checkpoint keeps: the EMA when on, else the live
    model (under DDP the plain module: ranks predict different numbers of batches)."""
    if parts.ema is not None:
        return parts.ema.module
    return parts.model if distributed.is_distributed() else parts.train_model


def weights_kind(parts: FoldParts) -> str:
    return "ema" if parts.ema is not None else "live"
