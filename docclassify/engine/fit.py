"""Fit one fold: model, optimiser, schedule, EMA, mixup, AMP, best checkpoint, resume state."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3

from docclassify.engine import distributed
from docclassify.engine.callbacks import Callback
from docclassify.engine.loop import StepContext, StopRequested, classification_metrics, predict_logits, train_one_epoch
from docclassify.engine.mixup import build_mixup, build_train_loss, mixup_active
from docclassify.engine.optim import build_optimizer, build_scheduler
from docclassify.engine.resume import rng_state, set_rng_state
from docclassify.engine.setup import seed_everything
from docclassify.models.checkpoint import save_best
from docclassify.utils.io import atomic_save_torch

log = logging.getLogger(__name__)


@dataclass
class FoldInputs:
    fold: int
    model: torch.nn.Module
    meta: dict                 # checkpoint meta (architecture, size, normalisation, classes)
    train_loader: Any
    val_loader: Any
    train_sampler: Any         # has set_epoch and skip (ResumableSampler)
    train_transform: Any       # has set_epoch (hard-augmentation schedule)
    val_targets: np.ndarray
    num_classes: int
    best_path: Path
    last_path: Path


def fit_fold(inp: FoldInputs, cfg, ctx: StepContext, seed: int, callback: Callback) -> dict:
    """Train one fold and return its outcome (best metric/epoch, validation logits at the best epoch)."""
    trainer, reg, aug = cfg.trainer, cfg.regularization, cfg.augment
    epochs = int(trainer.epochs)
    model = inp.model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.convert_sync_batchnorm(model, bool(trainer.sync_bn), ctx.device)
    optimizer = build_optimizer(model, trainer, reg)
    lr_factor = distributed.lr_factor(str(trainer.lr_scale), distributed.world_size())
    for group in optimizer.param_groups:  # trainer.lr_scale, before the schedule reads its base lr
        group["lr"] *= lr_factor
    updates_per_epoch = math.ceil(len(inp.train_loader) / max(1, int(trainer.accum_steps)))
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs, updates_per_epoch)
    mixup = build_mixup(aug, inp.num_classes, float(reg.label_smoothing))
    loss_fn = build_train_loss(mixup, float(reg.label_smoothing))
    ema = ModelEmaV3(model, decay=float(reg.ema_decay), use_warmup=bool(reg.ema_warmup)) if reg.ema else None
    scaler = torch.amp.GradScaler(ctx.device.type) if ctx.amp.use_scaler else None
    ddp_model = distributed.wrap_ddp(model, ctx.device)  # the EMA above tracks the unwrapped module
    train_model = torch.compile(ddp_model) if trainer.compile else ddp_model
    # Under DDP evaluate the plain module: ranks predict different numbers of batches.
    live_eval = train_model if ddp_model is model else model
    eval_model_of = (lambda: ema.module) if ema is not None else (lambda: live_eval)

    # partial: set when a stop request ended an epoch part-way (step reached, loss sums, RNG).
    state = {"epoch": 0, "updates": 0, "best_f1": -1.0, "best_epoch": -1, "best_logits": None,
             "history": [], "stale": 0, "skipped": 0, "partial": None}
    if inp.last_path.is_file():
        state = _restore(inp.last_path, model, optimizer, ema, scaler, state)
        at = f", step {state['partial']['step']}" if state["partial"] else ""
        log.info("fold %d: resuming from epoch %d%s (best macro F1 %.4f at epoch %d)",
                 inp.fold, state["epoch"], at, state["best_f1"], state["best_epoch"])

    patience = trainer.early_stopping_patience
    for epoch in range(state["epoch"], epochs):
        # Re-seed per (seed, fold, epoch): dropout, mixup draws and shuffling do not depend on
        # how many epochs ran in this process, so a resumed run equals an uninterrupted one.
        # Each rank draws its own dropout/mixup numbers (rank 0 = a single-process run).
        seed_everything(seed + 1009 * inp.fold + epoch + 100_003 * distributed.rank())
        inp.train_sampler.set_epoch(epoch)
        inp.train_transform.set_epoch(epoch)
        if mixup is not None:
            mixup.mixup_enabled = mixup_active(aug, epoch)

        def on_step(i, m, _epoch=epoch):
            callback.on_step_end(inp.fold, m["step"], m)

        partial = state["partial"]
        if partial:  # continue this epoch where the stopped process left it, with its RNG state
            inp.train_sampler.skip(partial["step"] * inp.train_loader.batch_size)
            set_rng_state(partial["rng"])
        try:
            train_stats = train_one_epoch(
                train_model, inp.train_loader, optimizer, scheduler, loss_fn, ctx, epoch=epoch,
                updates_done=state["updates"], mixup=mixup, ema=ema, scaler=scaler, on_step=on_step,
                start=partial,
            )
        except StopRequested as stop:
            if stop.progress is None:
                raise
            state.update(updates=stop.progress["updates"], partial={**stop.progress, "rng": rng_state()})
            _save_last(inp.last_path, model, optimizer, scheduler, ema, scaler, state)
            log.warning("fold %d: state saved at epoch %d, step %d -> %s", inp.fold, epoch,
                        stop.progress["step"], inp.last_path)
            raise
        finally:
            inp.train_sampler.skip(0)
        state["partial"] = None
        state["updates"] = train_stats["updates"]
        state["skipped"] += train_stats["skipped"]
        distributed.sync_module_state(eval_model_of())  # every rank evaluates rank 0's (saved) weights
        # Each rank predicts its shard of the validation rows; gathered, all ranks hold every row.
        logits = distributed.gather_rows(predict_logits(eval_model_of(), inp.val_loader, ctx))
        metrics = classification_metrics(logits, inp.val_targets, inp.num_classes)
        improved = metrics["val_macro_f1"] > state["best_f1"]
        if improved:
            state.update(best_f1=metrics["val_macro_f1"], best_epoch=epoch, best_logits=logits, stale=0)
            # The unwrapped module's keys (no DDP "module." / torch.compile "_orig_mod." prefix).
            weights = (model if ema is None else ema.module).state_dict()
            if distributed.is_main():
                save_best(inp.best_path, {k: v.detach().cpu() for k, v in weights.items()}, inp.meta,
                          fold=inp.fold, epoch=epoch, macro_f1=metrics["val_macro_f1"],
                          weights="ema" if ema is not None else "live")
        else:
            state["stale"] += 1
        record = {
            "epoch": epoch, "train_loss": train_stats["train_loss"], "val_loss": metrics["val_loss"],
            "val_macro_f1": metrics["val_macro_f1"], "val_accuracy": metrics["val_accuracy"],
            "lr": optimizer.param_groups[0]["lr"], "img_per_s": train_stats["img_per_s"],
            "epoch_s": train_stats["epoch_s"], "best_macro_f1": state["best_f1"],
            "p_hard": inp.train_transform.p_hard(epoch), "max_grad_norm": train_stats["max_grad_norm"],
            "mixup": bool(mixup is not None and mixup.mixup_enabled),
        }
        state["history"].append(record)
        state["epoch"] = epoch + 1
        _save_last(inp.last_path, model, optimizer, scheduler, ema, scaler, state)
        callback.on_epoch_end(inp.fold, epoch, {**record, "val_per_class_f1": metrics["val_per_class_f1"]})
        if patience is not None and state["stale"] >= int(patience):
            log.info("fold %d: early stopping at epoch %d (no val macro F1 gain for %d epochs)",
                     inp.fold, epoch, state["stale"])
            state["early_stopped"] = True
            break
        # A signal during validation: stop here (all DDP ranks together), the state is saved.
        stop = not distributed.all_ranks_true(not getattr(ctx.stop_flag, "requested", False))
        if stop and state["epoch"] < epochs:
            raise StopRequested(f"stop requested after epoch {epoch} (state saved at the epoch end)")
    return {
        "fold": inp.fold, "best_macro_f1": float(state["best_f1"]), "best_epoch": int(state["best_epoch"]),
        "epochs_run": int(state["epoch"]), "history": state["history"], "val_logits": state["best_logits"],
        "weights": "ema" if ema is not None else "live", "skipped_steps": int(state["skipped"]),
        "early_stopped": bool(state.get("early_stopped", False)),
    }


def _save_last(path: Path, model, optimizer, scheduler, ema, scaler, state: dict) -> None:
    if not distributed.is_main():  # DDP ranks hold the same state: rank 0 writes it
        return
    atomic_save_torch({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(), "state": state, "saved_at": time.time(),
    }, path)


def _restore(path: Path, model, optimizer, ema, scaler, default: dict) -> dict:
    """Load a last-state checkpoint. The lr schedule is not loaded: it is a pure function of the
    config and the update count (timm's step_update), so rebuilding it is exact, and a resume with
    a larger trainer.epochs follows the longer schedule instead of the saved one's end."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None and ckpt.get("ema"):
        ema.load_state_dict(ckpt["ema"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return {**default, **ckpt["state"]}
