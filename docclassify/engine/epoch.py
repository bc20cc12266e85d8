"""One training epoch: the step loop (forward, loss, backward, optimiser step, EMA).

Reads like torchvision's ``train_one_epoch``: what a fold trains with arrives as one
:class:`FoldParts`, the per-step settings as one :class:`StepContext`, and the epoch's running
totals live in an :class:`EpochProgress` that a stop request hands back to the caller, so a
run stopped part-way through an epoch resumes at the next batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.utils import unwrap_model

from docclassify.engine.distributed import all_ranks_true
from docclassify.engine.losses import smooth_one_hot
from docclassify.engine.orientation_head import (
    OrientationTraining,
    element_labels,
    mix_with_orientation,
    orientation_loss,
)

# Re-exported: their homes are below epoch (engine.signals, engine.setup), which engine.distributed and
# engine.orientation_head import without importing epoch (no import circle; .importlinter).
from docclassify.engine.setup import AmpSettings, autocast, to_model_input
from docclassify.engine.signals import NonFiniteLossError, StopRequested


@dataclass
class FoldParts:
    """What one fold trains with, built in one place (``engine.parts.build_fold_parts``)."""

    model: torch.nn.Module            # the plain module: checkpointed, tracked by the EMA
    train_model: torch.nn.Module      # what the step calls: ``model``, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any                    # timm scheduler stepped per update (step_update), or None
    loss_fn: Callable
    mixup: Any = None                 # timm.data.Mixup, or None
    ema: Any = None                   # timm.utils.ModelEmaV3, or None
    scaler: Any = None                # torch.amp.GradScaler (fp16), or None
    orientation: OrientationTraining | None = None  # the orientation head's loss (engine/orientation_head.py)
    label_smoothing: float = 0.0      # for probability-row targets (soft pseudo-labels), see forward_losses


@dataclass
class StepContext:
    """The per-step settings: device, input normalisation, AMP, clipping, accumulation, stopping."""

    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    amp: AmpSettings
    channels_last: bool = False
    grad_clip: float | None = None
    accum_steps: int = 1
    skip_nonfinite: bool = False
    stop_flag: object | None = None  # anything with a bool `.requested`
    on_step: Callable[[int, dict], None] | None = None  # (batch index, step metrics)


@dataclass
class EpochProgress:
    """Running totals of an epoch; ``step`` batches done. Saved in a mid-epoch stop state."""

    step: int = 0
    updates: int = 0      # optimiser updates of the fold so far (the lr schedule's clock)
    loss_sum: float = 0.0
    seen: int = 0
    skipped: int = 0
    grad_norms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    orientation_loss_sum: float = 0.0  # the orientation head's loss (unweighted), summed like loss_sum

    @classmethod
    def from_dict(cls, d: dict | None, updates: int = 0) -> "EpochProgress":
        if not d:
            return cls(updates=updates)
        values = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        values["grad_norms"] = list(values.get("grad_norms", []))
        return cls(**values)


def train_one_epoch(parts: FoldParts, loader, ctx: StepContext, epoch: int,
                    start: EpochProgress | None = None) -> dict:
    """Train for one epoch; returns mean loss, images/s, updates so far, skipped steps, max grad norm.

    ``start``: the progress of a StopRequested raised in this epoch by an earlier process (the
    loader must already skip its first ``start.step`` batches, see ResumableSampler.skip)."""
    parts.train_model.train()
    p = start or EpochProgress()
    n_batches = p.step + len(loader)
    accum = max(1, int(ctx.accum_steps))
    t0 = time.perf_counter() - p.elapsed
    parts.optimizer.zero_grad(set_to_none=True)
    for i, (images, targets, *labels) in enumerate(loader, start=p.step):
        # labels: the element each image was turned by (with an orientation head, or with
        # pseudo-labels), then each sample's loss weight (pseudo-labels, data/pseudo.py)
        loss, head_loss = forward_losses(parts, images, targets, ctx, labels[0] if labels else None,
                                         labels[1] if len(labels) > 1 else None)
        # Under DDP all ranks skip (or stop) together: a lone skipping rank would deadlock the others.
        if not all_ranks_true(torch.isfinite(loss)):
            _skip_nonfinite(parts, ctx, loss, f"at epoch {epoch}, step {i} of {n_batches} (update {p.updates})")
            p.skipped += 1
            continue
        (parts.scaler.scale(loss / accum) if parts.scaler is not None else loss / accum).backward()
        last_of_group = (i + 1) % accum == 0 or (i + 1) == n_batches
        if last_of_group:
            optimizer_step(parts, ctx, p)
        loss_value = float(loss.detach())  # one device-to-host copy per step, shared by the sum and the callback
        p.loss_sum += loss_value * len(images)
        if head_loss is not None:
            p.orientation_loss_sum += float(head_loss.detach()) * len(images)
        p.seen += len(images)
        if ctx.on_step is not None:
            ctx.on_step(i, {"train/loss": loss_value, "train/lr": parts.optimizer.param_groups[0]["lr"],
                            "step": p.updates})
        # Stop only after an optimiser update (no half-accumulated gradients to lose), on every
        # DDP rank at the same step (as soon as any rank got the signal), or DDP deadlocks.
        if last_of_group and not all_ranks_true(not getattr(ctx.stop_flag, "requested", False)):
            p.step, p.elapsed = i + 1, time.perf_counter() - t0
            raise StopRequested(f"stop requested during epoch {epoch} (step {i + 1}/{n_batches})", asdict(p))
    elapsed = time.perf_counter() - t0
    return {"train_loss": p.loss_sum / max(p.seen, 1), "img_per_s": p.seen / max(elapsed, 1e-9),
            "epoch_s": elapsed, "updates": p.updates, "skipped": p.skipped,
            "max_grad_norm": max(p.grad_norms) if p.grad_norms else None,
            "train_orientation_loss": p.orientation_loss_sum / max(p.seen, 1) if parts.orientation else None}


def forward_loss(parts: FoldParts, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The training loss of a batch without orientation labels (see :func:`forward_losses`)."""
    return forward_losses(parts, images, targets, ctx)[0]


def forward_losses(parts: FoldParts, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext,
                   elements: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalise, mix (mixup/cutmix soft targets), forward under autocast, losses in float32.

    Returns (the loss to minimise, the orientation head's own loss or None). With an orientation
    head and the batch's ``elements``, the head's loss (weighted) is added; its targets are mixed
    like the class targets (engine/orientation_head.py). ``weights`` (pseudo-labels): each sample's loss
    weight, passed to the loss as ``weight=``; ``targets`` may then be (N, K) probability rows
    (soft pseudo-labels), see :func:`mix_weighted`. An element of ``UNKNOWN_ELEMENT`` (a
    pseudo-labelled test page, data/dataset.py) leaves its row, and every mixed row it is part
    of, out of the head's loss."""
    x = to_model_input(images, ctx)
    y = targets.to(ctx.device, non_blocking=True)
    head = parts.orientation if elements is not None else None
    o = known = None
    if head is not None:
        known_cpu = elements >= 0  # decided on the loader's CPU tensor (no device sync per step)
        if not bool(known_cpu.all()):
            known = known_cpu.to(ctx.device, non_blocking=True)
            if weights is None:  # the weighted path mixes by matrix, which also mixes the mask
                weights = torch.ones(len(elements))
        o = element_labels(elements.clamp_min(0).to(ctx.device, non_blocking=True), head.head)
    mixup, w = parts.mixup, None
    if weights is not None:
        # Decided on the loader's CPU tensor (no device sync per step): all-1 weights stay 1 after mixing,
        # so the loss is called without weight= (a torch.nn loss without it still trains with pseudo.weight=1).
        unit = bool((weights == 1).all())
        x, y, o, w, known = mix_weighted(parts, x, y, o, weights.to(ctx.device, non_blocking=True).float(), known)
        w = None if unit else w
    elif mixup is not None and len(x) % 2 == 0:
        x, y, o = mix_with_orientation(mixup, x, y, o, head.n) if head is not None else (*mixup(x, y), None)
    elif mixup is not None:
        # timm's batch mixup needs an even batch: fall back to smoothed one-hot targets.
        y = smooth_one_hot(y, mixup.num_classes, mixup.label_smoothing)
    with autocast(ctx):
        if head is None:
            return class_loss(parts, parts.train_model(x).float(), y, w), None
        logits, head_logits = parts.train_model(x, orientation=True)
        head_loss = masked_orientation_loss(head_logits.float(), o, known)
        return class_loss(parts, logits.float(), y, w) + head.weight * head_loss, head_loss


def masked_orientation_loss(head_logits: torch.Tensor, o: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
    """The head's loss (engine.orientation_head.orientation_loss) averaged over the rows whose label is
    known (every row when ``known`` is None); 0 for a batch without one. A weighted mean, not an
    index: no device sync per step."""
    if known is None:
        return orientation_loss(head_logits, o)
    per_row = F.cross_entropy(head_logits, o, reduction="none") if o.ndim == 1 else \
        torch.sum(-o * F.log_softmax(head_logits, dim=-1), dim=-1)
    k = known.float()
    return (per_row * k).sum() / k.sum().clamp_min(1.0)


def class_loss(parts: FoldParts, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``loss_fn(logits, y)``, with ``weight=w`` when the batch has weights other than 1."""
    return parts.loss_fn(logits, y) if w is None else parts.loss_fn(logits, y, weight=w)


def mix_weighted(parts: FoldParts, x: torch.Tensor, y: torch.Tensor, o: torch.Tensor | None, w: torch.Tensor,
                 known: torch.Tensor | None = None):
    """A batch with per-sample weights (pseudo-labels): (images, class targets, orientation targets,
    weights, orientation known) after mixup/cutmix, which mixes targets *and* weights of each pair by
    its lambda, as timm mixes hard targets. Probability-row targets (soft pseudo-labels) get
    regularization.label_smoothing here (``(1 - s) * row + s / K``), as class indices get it in the
    loss or in timm's Mixup.

    One rule for both targets: whatever the batch's mixup smooths its class rows with, it smooths
    its mixed orientation rows with too (``(1 - s) * row + s / n``), exactly what
    engine.orientation_head.mix_with_orientation gives a batch without weights; hard labels (no mixup, or
    an odd batch) stay hard for both heads' losses as they do there. ``known`` (per row, or None):
    a mixed row's orientation label is known only when every image it is made of has a known one."""
    mixup = parts.mixup
    if mixup is None:
        return x, smooth_rows(y, parts.label_smoothing), o, w, known
    # timm's batch mixup needs an even batch (an odd one: smoothed one-hot rows, as forward_losses does)
    y = y.float() if y.ndim == 2 else F.one_hot(y, int(mixup.num_classes)).float()
    if len(x) % 2 == 0:
        x, m = mixing_matrix(mixup, x)
        y, w = m @ y, m @ w
        if o is not None:
            o = smooth_rows(m @ F.one_hot(o, parts.orientation.n).float(), mixup.label_smoothing)
        if known is not None:  # a share of an unknown image in the mix: the row's label is unknown
            known = (m @ known.float()) > 1.0 - 1e-6
    return x, smooth_rows(y, mixup.label_smoothing), o, w, known


def smooth_rows(y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Probability rows -> ``(1 - s) * row + s / K``; class indices unchanged (the loss smooths them)."""
    if y.ndim != 2 or not smoothing:
        return y
    return y * (1.0 - float(smoothing)) + float(smoothing) / y.shape[1]


def mixing_matrix(mixup, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup on ``x`` with the sample indices as the labels (no smoothing): (mixed images,
    the (N, N) matrix M with row i = lam_i e_i + (1 - lam_i) e_partner(i)). ``M @ rows`` mixes any
    per-sample rows (probability targets, weights, orientation targets) exactly as the images."""
    k, smoothing = mixup.num_classes, mixup.label_smoothing
    mixup.num_classes, mixup.label_smoothing = len(x), 0.0
    try:
        x, m = mixup(x, torch.arange(len(x), device=x.device))
    finally:
        mixup.num_classes, mixup.label_smoothing = k, smoothing
    return x, m.float()


def optimizer_step(parts: FoldParts, ctx: StepContext, p: EpochProgress) -> None:
    """One optimiser update: unscale (fp16), clip, step, zero grads, advance the schedule, update the EMA."""
    optimizer, scaler = parts.optimizer, parts.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if ctx.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(parts.train_model.parameters(), float(ctx.grad_clip))
        p.grad_norms.append(float(norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    p.updates += 1
    if parts.scheduler is not None:
        parts.scheduler.step_update(num_updates=p.updates)
    if parts.ema is not None:
        parts.ema.update(unwrap_model(parts.train_model), step=p.updates)  # not the DDP/compile wrapper


def _skip_nonfinite(parts: FoldParts, ctx: StepContext, loss: torch.Tensor, where: str) -> None:
    """A NaN/inf loss: stop with advice, or (trainer.skip_nonfinite) drop the step's gradients."""
    lr = parts.optimizer.param_groups[0]["lr"]
    if not ctx.skip_nonfinite:
        value = loss.item()
        what = f"non-finite loss ({value})" if not math.isfinite(value) else \
            f"non-finite loss on another DDP rank (this rank's: {value:.4g})"
        raise NonFiniteLossError(f"{what} {where}, lr {lr:.3g}. Lower trainer.lr, "
                                 "enable trainer.grad_clip, or set trainer.skip_nonfinite=true to skip such steps.")
    parts.optimizer.zero_grad(set_to_none=True)
