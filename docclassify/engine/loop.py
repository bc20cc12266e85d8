"""One training epoch and one evaluation pass: the readable core of the engine."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from timm.utils import unwrap_model

from docclassify.engine.distributed import all_ranks_true
from docclassify.engine.setup import AmpSettings


class NonFiniteLossError(FloatingPointError):
    pass


class StopRequested(Exception):
    """Raised inside the loop after a SIGTERM/SIGINT once the current optimiser update has finished.

    ``progress`` is what the epoch had done by then (see train_one_epoch's ``start``), so the
    caller can save a mid-epoch state that resumes exactly; None between epochs."""

    def __init__(self, message: str, progress: dict | None = None) -> None:
        super().__init__(message)
        self.progress = progress


@dataclass
class StepContext:
    """What the training step needs besides model/optimizer (kept in one place)."""

    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    amp: AmpSettings
    channels_last: bool = False
    grad_clip: float | None = None
    accum_steps: int = 1
    skip_nonfinite: bool = False
    log_every: int = 0
    stop_flag: object | None = None  # anything with a bool `.requested`
    stats: dict = field(default_factory=dict)


def to_model_input(images: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """uint8 NCHW on the host -> normalised float on the device."""
    x = images.to(ctx.device, non_blocking=True).float().div_(255.0)
    x = x.sub_(ctx.mean).div_(ctx.std)
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(ctx: StepContext):
    if not ctx.amp.enabled:
        return nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=ctx.amp.dtype)


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, ctx: StepContext, *, epoch: int,
                    updates_done: int, mixup=None, ema=None, scaler=None, on_step=None,
                    start: dict | None = None) -> dict:
    """Train for one epoch; returns mean loss, images/s, updates done so far and skip count.

    ``start``: the ``progress`` of a StopRequested raised in this epoch by an earlier process; the
    loader must already skip its first ``start["step"]`` batches (ResumableSampler.skip)."""
    model.train()
    start = start or {}
    first = int(start.get("step", 0))
    n_batches = first + len(loader)
    accum = max(1, int(ctx.accum_steps))
    loss_sum, seen, skipped = float(start.get("loss_sum", 0.0)), int(start.get("seen", 0)), int(start.get("skipped", 0))
    grad_norms: list[float] = list(start.get("grad_norms", []))
    t0 = time.perf_counter() - float(start.get("elapsed", 0.0))
    optimizer.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader, start=first):
        x = to_model_input(images, ctx)
        y = targets.to(ctx.device, non_blocking=True)
        if mixup is not None and len(x) % 2 == 0:
            x, y = mixup(x, y)  # soft targets
        elif mixup is not None:
            # timm's batch mixup needs an even batch: fall back to smoothed one-hot targets.
            y = _smooth_one_hot(y, mixup.num_classes, mixup.label_smoothing)
        with autocast(ctx):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        # Under DDP all ranks skip (or stop) together: a lone skipping rank would deadlock the others.
        if not all_ranks_true(torch.isfinite(loss)):
            lr = optimizer.param_groups[0]["lr"]
            msg = (f"non-finite loss ({loss.item()}) at epoch {epoch}, step {i} of {n_batches} "
                   f"(update {updates_done}), lr {lr:.3g}")
            if not ctx.skip_nonfinite:
                raise NonFiniteLossError(msg + ". Lower trainer.lr, enable trainer.grad_clip, or set "
                                               "trainer.skip_nonfinite=true to skip such steps.")
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
            continue
        (scaler.scale(loss / accum) if scaler is not None else loss / accum).backward()
        last_of_group = (i + 1) % accum == 0 or (i + 1) == n_batches
        if last_of_group:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if ctx.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(ctx.grad_clip))
                grad_norms.append(float(norm))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates_done += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=updates_done)
            if ema is not None:
                ema.update(unwrap_model(model), step=updates_done)  # not the DDP/compile wrapper
        bs = len(images)
        loss_sum += float(loss.detach()) * bs
        seen += bs
        if on_step is not None:
            on_step(i, {"train/loss": float(loss.detach()), "train/lr": optimizer.param_groups[0]["lr"],
                        "step": updates_done})
        # Stop only after an optimiser update (no half-accumulated gradients to lose), on every
        # DDP rank at the same step (as soon as any rank got the signal), or DDP deadlocks.
        if last_of_group and not all_ranks_true(not getattr(ctx.stop_flag, "requested", False)):
            progress = {"step": i + 1, "updates": updates_done, "loss_sum": loss_sum, "seen": seen,
                        "skipped": skipped, "grad_norms": grad_norms, "elapsed": time.perf_counter() - t0}
            raise StopRequested(f"stop requested during epoch {epoch} (step {i + 1}/{n_batches})", progress)
    elapsed = time.perf_counter() - t0
    return {
        "train_loss": loss_sum / max(seen, 1),
        "img_per_s": seen / max(elapsed, 1e-9),
        "epoch_s": elapsed,
        "updates": updates_done,
        "skipped": skipped,
        "max_grad_norm": max(grad_norms) if grad_norms else None,
    }


def _smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1.0 - smoothing + off)


@torch.inference_mode()
def predict_logits(model, loader, ctx: StepContext) -> np.ndarray:
    model.eval()
    out = []
    for images, _ in loader:
        with autocast(ctx):
            out.append(model(to_model_input(images, ctx)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def classification_metrics(logits: np.ndarray, targets: np.ndarray, num_classes: int) -> dict:
    logits_t = torch.from_numpy(logits).float()
    y = torch.from_numpy(np.asarray(targets)).long()
    preds = logits.argmax(1)
    labels = list(range(num_classes))
    return {
        "val_loss": float(F.cross_entropy(logits_t, y)) if len(y) else math.nan,
        # sklearn's default label set (classes present in targets or predictions), so the
        # figure equals what anyone recomputes from oof.csv with f1_score(average="macro").
        "val_macro_f1": float(f1_score(targets, preds, average="macro", zero_division=0)),
        "val_accuracy": float(accuracy_score(targets, preds)),
        "val_per_class_f1": f1_score(targets, preds, average=None, labels=labels, zero_division=0).tolist(),
    }
