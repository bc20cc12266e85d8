"""One fold: build what it needs, loop over epochs (train, validate, keep the best), save it.

    prepare_fold   split rows -> seeded model -> augmentation -> loaders -> FoldParts
    fit_fold       for each epoch: train_one_epoch -> validate (clean, robust) -> keep the best
                   (on trainer.monitor) -> save state
    finish_fold    fold{k}.json + validation logits (the "fold finished" marker), callbacks

The fold's resumable state is a :class:`FoldState`, saved after every epoch (and at a stop
request part-way through one) in ``checkpoints/fold{k}_last.pt``; the best weights go to
``checkpoints/fold{k}_best.safetensors`` (models.checkpoint: safetensors, meta in the header),
kept as ``fold{k}_best.partial.safetensors`` until the fold has finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from docclassify.data.augment import TrainTransform
from docclassify.data.pseudo import TrainingSet, fold_training_set
from docclassify.distortion.copies import copy_rows
from docclassify.distortion.match import build_match
from docclassify.engine import distributed, share
from docclassify.engine.epoch import (
    EpochProgress,
    FoldParts,
    StepContext,
    StopRequested,
    train_one_epoch,
)
from docclassify.engine.evaluate import (
    monitored_value,
    predict_logits,
    resolve_monitor,
    robust_roles,
    robust_view_metrics,
    validated_views,
    view_metrics,
)
from docclassify.engine.loaders import (
    build_eval_loader,
    build_loaders,
    build_views_loader,
    close_loaders,
    debug_rows,
    shard_sizes,
)
from docclassify.engine.mixup import mixup_active
from docclassify.engine.orientation_head import (
    OrientationCheck,
    best_epoch_orientation,
    orientation_check,
    validate_orientation,
    validate_robust_orientation,
)
from docclassify.engine.parts import build_fold_parts, build_model, eval_model, weights_kind
from docclassify.engine.plan import FoldPlan
from docclassify.engine.profiling import profile_epoch
from docclassify.engine.resume import restore_rng_states, rng_state, rng_states
from docclassify.engine.sampling import class_counts
from docclassify.engine.setup import channels_last_setting, seed_everything
from docclassify.models.checkpoint import (
    best_checkpoint_name,
    current_best,
    finish_best,
    load_best_weights,
    load_resume_state,
    model_meta,
    save_best,
    save_resume_state,
    trained_orientations,
    unfinished_path,
)
from docclassify.models.factory import normalization_of
from docclassify.models.heads import orientation_head_of
from docclassify.tracking import phases
from docclassify.utils.io import atomic_write, atomic_write_json

if TYPE_CHECKING:
    from docclassify.config_schema import TrainerConfig
    from docclassify.engine.kfold import RunContext, RunData

log = logging.getLogger(__name__)


@dataclass
class FoldState:
    """What a fold has done so far; everything a resumed process needs to continue exactly."""

    epoch: int = 0                 # epochs finished
    updates: int = 0               # optimiser updates (the lr schedule's clock)
    best_f1: float = -1.0          # the monitored value (trainer.monitor) of the best epoch
    best_epoch: int = -1
    best_logits: np.ndarray | None = None  # validation logits of the best epoch (the OOF rows)
    best_robust_logits: np.ndarray | None = None  # ... and of their robust copies
    best_scores: dict = field(default_factory=dict)  # clean / robust macro F1 of the best epoch
    history: list[dict] = field(default_factory=list)
    stale: int = 0                 # epochs since the best (early stopping)
    skipped: int = 0               # non-finite steps skipped
    partial: dict | None = None    # an epoch stopped part-way: EpochProgress fields + "rng"
    early_stopped: bool = False
    # The orientation head's accuracy on the turned validation copies at the best epoch: an epoch that
    # ties the best macro F1 (a saturated F1) and has a better head becomes the best.
    best_tiebreak: float = -1.0

    @classmethod
    def from_dict(cls, d: dict) -> "FoldState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class FoldJob:
    """Everything one fold trains and validates with (built by :func:`prepare_fold`)."""

    fold: int
    parts: FoldParts
    ctx: StepContext
    meta: dict                 # checkpoint meta (architecture, size, normalisation, classes)
    train_loader: Any
    val_loader: Any
    sampler: Any               # ResumableSampler: set_epoch, skip
    transform: TrainTransform  # set_epoch (hard-augmentation schedule)
    train_idx: np.ndarray
    val_idx: np.ndarray
    val_targets: np.ndarray
    info: dict                 # model, model_option, img_size, n_train, n_val
    best_path: Path
    last_path: Path
    views: tuple[str, ...]     # validated every epoch: clean and/or robust (validation option)
    monitor: str               # clean, robust or mean: what picks the best epoch
    copies: int = 0            # robust copies per validation image (0: no robust view)
    robust_loader: Any = None  # ... and their loader
    robust_targets: np.ndarray | None = None
    robust_estimate: np.ndarray | None = None  # per robust row: estimates (True) or selects (evaluate.robust_roles)
    # validation=both: the clean rows and then their copies in one loader (one pass per epoch), and
    # how many of each this rank predicts (where validate cuts the logits)
    views_loader: Any = None
    views_split: tuple[int, int] | None = None
    orientation: OrientationCheck | None = None  # turned validation copies (engine/orientation_head.py)


def run_fold(plan: FoldPlan, run: RunContext, data: RunData) -> dict:
    """Train fold ``plan.fold`` (or load it when a previous process finished it); returns its outcome."""
    finished = load_finished_fold(run.fold_dir, plan.fold, int(run.trainer.epochs))
    if finished is not None:
        return finished
    job = prepare_fold(plan, run, data)
    run.callback.on_fold_start(job.fold, {**job.info, "steps_per_epoch": len(job.train_loader)})
    t0 = time.time()
    try:
        outcome = fit_fold(job, run)
    finally:  # the workers end now (also on a stop), not whenever the GC frees the fold
        close_loaders(job.train_loader, job.val_loader, job.robust_loader, job.views_loader)
    outcome.update(job.info, val_index=job.val_idx.tolist(), seconds=round(time.time() - t0, 2),
                   checkpoint=f"checkpoints/{job.best_path.name}")
    with phases.spend("reports"):
        finish_fold(job, outcome, run, data)
    return outcome


def load_finished_fold(fold_dir: Path, k: int, epochs: int) -> dict | None:
    """The saved outcome of fold ``k`` when it already ran to ``epochs`` (or stopped early)."""
    summary_path, logits_path = fold_dir / f"fold{k}.json", fold_dir / f"fold{k}_val_logits.npy"
    if not (summary_path.is_file() and logits_path.is_file()):
        return None
    outcome = json.loads(summary_path.read_text())
    # A larger trainer.epochs on resume extends a finished fold from its last-state checkpoint.
    if outcome["epochs_run"] < epochs and not outcome.get("early_stopped"):
        log.info("fold %d: finished after %d epochs; continuing to trainer.epochs=%d", k, outcome["epochs_run"],
                 epochs)
        return None
    log.info("fold %d: already finished (%s), not retrained", k, summary_path)
    outcome["val_logits"] = np.load(logits_path)
    robust_path = fold_dir / f"fold{k}_val_logits_robust.npy"
    outcome["val_logits_robust"] = np.load(robust_path) if robust_path.is_file() else None
    return outcome


def prepare_fold(plan: FoldPlan, run: RunContext, data: RunData) -> FoldJob:
    """Rows, model, augmentation, loaders and training parts of fold ``plan.fold``."""
    trainer, settings, augment, k = run.trainer, run.data_settings, run.augment, plan.fold
    mc = plan.model_cfg
    val_idx, train_idx = data.validation_rows(k), data.training_rows(k)
    train_idx, val_idx = debug_rows(train_idx, val_idx, trainer, run.seed + k)  # overfit/limit_val_batches
    # Initial weights depend on (seed, fold) only, not on what earlier folds of this process
    # drew: a run resumed after fold 0 finished trains fold 1 exactly as an uninterrupted one.
    seed_everything(run.seed + 1009 * k)
    model = build_model(mc, data.num_classes, run.regularization, plan.img_size)
    mean, std = normalization_of(model)
    head = orientation_head_of(model)
    meta = model_meta(mc.timm_name, mc.name, data.num_classes, plan.img_size, settings.resize,
                      int(settings.pad_value), mean, std, data.classes, head,
                      trained_orientations(dataclasses.asdict(augment)))
    transform = TrainTransform(augment, plan.img_size, int(trainer.epochs), run.seed + 7919 * k,
                               int(settings.pad_value), match_step(run, data, plan.img_size, run.seed + 7919 * k))
    images = data.images_by_size[plan.img_size]
    training = training_set(run, data, train_idx, plan.img_size)
    train_loader, val_loader, sampler = build_loaders(images, training.rows, val_idx, training.targets, transform,
                                                      trainer, settings.num_workers, run.seed + k, run.device,
                                                      orientation_labels=head != "none",
                                                      sampler_mode=settings.sampler,
                                                      train_images=training.images, target_rows=training.target_rows,
                                                      sample_weights=training.weights,
                                                      unknown_orientation=training.unknown_orientation)
    ctx = step_context(trainer, run, mean, std)
    parts = build_fold_parts(model, trainer, settings, augment, run.regularization, run.schedule, run.loss, ctx,
                             class_counts(training.targets[training.rows], data.num_classes), len(train_loader))
    info = {"model": mc.timm_name, "model_option": mc.name, "img_size": plan.img_size,
            "n_train": len(train_idx), "n_val": len(val_idx), "n_pseudo": training.n_pseudo}
    log.info("fold %d: %s at %d px, %d train%s / %d val images", k, mc.timm_name, plan.img_size, len(train_idx),
             f" + {training.n_pseudo} pseudo-labelled" if training.n_pseudo else "", len(val_idx))
    job = FoldJob(k, parts, ctx, meta, train_loader, val_loader, sampler, transform, train_idx, val_idx,
                  data.targets[val_idx], info, run.ckpt_dir / best_checkpoint_name(k),
                  run.ckpt_dir / f"fold{k}_last.pt", validated_views(run.validation),
                  resolve_monitor(run.validation, trainer.monitor))
    add_robust_view(job, run, data, plan.img_size)
    job.orientation = orientation_check(augment, head, len(val_idx),
                                        robust_copies_of=(data.ids[val_idx], data.robust) if job.copies else None)
    return job


def training_set(run: RunContext, data: RunData, train_idx: np.ndarray, img_size: int) -> TrainingSet:
    """The fold's training rows, plus every pseudo-labelled test image (pseudo.source; never a
    validation row). trainer.overfit_batches trains on validation rows only: no pseudo rows then."""
    pseudo = data.pseudo if int(run.trainer.overfit_batches) == 0 else None
    return fold_training_set(data.images_by_size[img_size], data.targets, train_idx, pseudo, img_size,
                             data.num_classes)


def match_step(run: RunContext, data: RunData, img_size: int, seed: int):
    """augment.match_validation: the robust copies' profile as the first training step (None: off)."""
    augment, settings = run.augment, run.data_settings
    if not augment.match_validation:
        return None
    return build_match(augment, data.match_profile(), img_size, int(run.trainer.epochs), seed, settings.resize,
                       int(settings.pad_value), data.image_sizes())


def add_robust_view(job: FoldJob, run: RunContext, data: RunData, img_size: int) -> None:
    """The loader of the validation rows' distorted copies (when the run has a robust view)."""
    if "robust" not in job.views:
        return
    copies = data.copies_by_size.get(img_size)
    if copies is None:  # engine.kfold.add_robust_copies builds them for every planned size
        raise RuntimeError(f"internal error: validation has a robust view but no copies at {img_size} px")
    n = job.copies = data.robust.copies
    rows = copy_rows(job.val_idx, n)
    job.robust_targets = np.repeat(job.val_targets, n)
    job.robust_estimate = robust_roles(data.ids[job.val_idx], n)
    job.robust_loader = build_eval_loader(copies, rows, np.repeat(data.targets, n), run.trainer,
                                          run.data_settings.num_workers, run.seed + job.fold, run.device)
    job.info["n_val_robust"] = len(rows)
    if "clean" in job.views:  # both views: predicted in the same batches, one pass
        images = data.images_by_size[img_size]
        job.views_loader = build_views_loader([(images, job.val_idx, data.targets),
                                               (copies, rows, np.repeat(data.targets, n))], run.trainer,
                                              run.data_settings.num_workers, run.seed + job.fold, run.device)
        clean_n, robust_n = shard_sizes(job.val_idx, rows)
        job.views_split = (clean_n, robust_n)


def step_context(trainer: TrainerConfig, run: RunContext, mean, std) -> StepContext:
    device = run.device
    return StepContext(
        device=device, amp=run.amp,
        mean=torch.tensor(mean, device=device).view(1, 3, 1, 1), std=torch.tensor(std, device=device).view(1, 3, 1, 1),
        channels_last=channels_last_setting(trainer.channels_last, run.amp, device), grad_clip=trainer.grad_clip,
        accum_steps=int(trainer.accum_steps), skip_nonfinite=bool(trainer.skip_nonfinite),
        stop_flag=run.stop,
    )


def fit_fold(job: FoldJob, run: RunContext) -> dict:
    """The epoch loop of one fold: train, validate, keep the best, save the state after every epoch."""
    trainer = run.trainer
    epochs, patience = int(trainer.epochs), trainer.early_stopping_patience
    state = restore_state(job)
    job.ctx.on_step = lambda i, m: run.callback.on_step_end(job.fold, m["step"], m)
    for epoch in range(state.epoch, epochs):
        begin_epoch(job, run, epoch)
        with profile_epoch(trainer, run.run_dir, job.fold, epoch), phases.spend("train steps"):  # trainer.profiler
            stats = train_epoch_resumably(job, state, epoch)
        scores = validate(job)
        with phases.spend("orientation check"):
            orientation = orientation_record(job, stats, scores.robust_logits)
        with phases.spend("checkpoints"):
            keep_best(job, state, epoch, scores, orientation.get("val_orientation_accuracy"))
        record = epoch_record(job, state, epoch, stats, scores.metrics)
        record.update(orientation)
        state.history.append(record)
        state.epoch = epoch + 1
        with phases.spend("checkpoints"):
            save_state(job, state)
        # Callbacks run on rank 0; a prune there stops every rank here, together.
        distributed.on_main_then_shared(
            lambda: run.callback.on_epoch_end(job.fold, epoch, {**record, **per_class(scores.metrics)}))
        if patience is not None and state.stale >= int(patience):
            log.info("fold %d: early stopping at epoch %d (no %s val macro F1 gain for %d epochs)",
                     job.fold, epoch, job.monitor, state.stale)
            state.early_stopped = True
            break
        # A signal during validation: stop here (all DDP ranks together), the state is saved.
        stop = not distributed.all_ranks_true(not getattr(run.stop, "requested", False))
        if stop and state.epoch < epochs:
            raise StopRequested(f"stop requested after epoch {epoch} (state saved at the epoch end)")
    if "clean" not in job.views:  # validation=robust: the clean OOF rows, once, with the best weights
        predict_clean_with_best(job, state)
    return {
        "fold": job.fold, "best_macro_f1": state.best_scores.get("val_macro_f1"),
        "best_macro_f1_robust": state.best_scores.get("val_macro_f1_robust"),
        "best_macro_f1_robust_select": state.best_scores.get("val_macro_f1_robust_select"),
        "best_monitored": float(state.best_f1), "monitor": job.monitor, "best_epoch": int(state.best_epoch),
        "epochs_run": int(state.epoch), "history": state.history, "val_logits": state.best_logits,
        "val_logits_robust": state.best_robust_logits,
        "robust_copies": job.copies or None,
        "weights": weights_kind(job.parts), "skipped_steps": int(state.skipped),
        "early_stopped": bool(state.early_stopped),
        "orientation": best_epoch_orientation(state.history, state.best_epoch, job.orientation),
    }


def orientation_record(job: FoldJob, stats: dict, robust_logits: np.ndarray | None = None) -> dict:
    """The orientation part of an epoch's record: the head's training loss, its accuracy and the
    classifier's accuracy by orientation on the turned validation copies, and on the robust copies
    (their quarter turns and mirrors as drawn; ``robust_logits``: the classifier's, already predicted)
    when the robust view was validated (engine/orientation_head.py)."""
    if job.orientation is None:
        return {}
    model = eval_model(job.parts)
    metrics = validate_orientation(model, job.val_loader, job.ctx, job.orientation, job.val_targets)
    if robust_logits is not None and job.orientation.robust_elements is not None:
        metrics.update(validate_robust_orientation(model, job.robust_loader, job.ctx, job.orientation,
                                                   job.robust_targets, robust_logits))
    return {"train_orientation_loss": stats.get("train_orientation_loss"), **metrics}


def begin_epoch(job: FoldJob, run: RunContext, epoch: int) -> None:
    """Per-epoch seeding and schedules (shuffle, hard-augmentation share, mixup on/off)."""
    # Re-seed per (seed, fold, epoch): dropout, mixup draws and shuffling do not depend on
    # how many epochs ran in this process, so a resumed run equals an uninterrupted one.
    # Each rank draws its own dropout/mixup numbers (rank 0 = a single-process run).
    seed_everything(run.seed + 1009 * job.fold + epoch + 100_003 * distributed.rank())
    share.refresh()  # another job started or ended on this machine: follow the share of the cores
    job.sampler.set_epoch(epoch)
    job.transform.set_epoch(epoch)
    if job.parts.mixup is not None:
        job.parts.mixup.mixup_enabled = mixup_active(run.augment, epoch)


def train_epoch_resumably(job: FoldJob, state: FoldState, epoch: int) -> dict:
    """train_one_epoch, continuing a part-done epoch; a stop request saves a mid-epoch state."""
    partial = state.partial
    if partial:  # continue this epoch where the stopped process left it, with every rank's RNG state
        job.sampler.skip(partial["step"] * job.train_loader.batch_size)
        restore_rng_states(partial)
    try:
        stats = train_one_epoch(job.parts, job.train_loader, job.ctx, epoch=epoch,
                                start=EpochProgress.from_dict(partial, updates=state.updates))
    except StopRequested as stop:
        if stop.progress is None:
            raise
        state.updates, state.partial = stop.progress["updates"], {**stop.progress, **rng_states()}
        save_state(job, state)
        log.warning("fold %d: state saved at epoch %d, step %d -> %s", job.fold, epoch,
                    stop.progress["step"], job.last_path)
        raise
    finally:
        job.sampler.skip(0)
    state.partial, state.updates = None, stats["updates"]
    state.skipped += stats["skipped"]
    return stats


@dataclass
class EpochScores:
    """One validation: logits of the clean rows and of their robust copies (None: view not
    validated), and the metrics of both plus ``val_monitored``."""

    logits: np.ndarray | None
    robust_logits: np.ndarray | None
    metrics: dict


def validate(job: FoldJob) -> EpochScores:
    """Logits and metrics of the fold's validation views under the weights that would be saved."""
    model = eval_model(job.parts)
    distributed.sync_module_state(model)  # every rank evaluates rank 0's (saved) weights
    # Each rank predicts its shard of the rows; gathered, all ranks hold every row.
    logits = robust = None
    if job.views_loader is not None:  # validation=both: clean rows and copies in one pass
        with phases.spend("clean + robust validation"):
            both = predict_logits(model, job.views_loader, job.ctx)
        clean_n = job.views_split[0]
        logits, robust = distributed.gather_rows(both[:clean_n]), distributed.gather_rows(both[clean_n:])
    else:
        if "clean" in job.views:
            with phases.spend("clean validation"):
                logits = distributed.gather_rows(predict_logits(model, job.val_loader, job.ctx))
        if "robust" in job.views:
            with phases.spend("robust validation"):
                robust = distributed.gather_rows(predict_logits(model, job.robust_loader, job.ctx))
    k = job.meta["num_classes"]
    metrics = {**view_metrics(logits, job.val_targets, k, "clean"),
               **robust_view_metrics(robust, job.robust_targets, k, job.robust_estimate)}
    metrics["val_monitored"] = monitored_value(metrics, job.monitor)
    return EpochScores(logits, robust, metrics)


def per_class(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("val_per_class_f1")}


def predict_clean_with_best(job: FoldJob, state: FoldState) -> None:
    """The clean validation rows predicted once with the best checkpoint's weights (the fold's
    clean OOF rows when only the robust view was validated every epoch)."""
    if state.best_epoch < 0:
        return
    distributed.barrier()  # rank 0 wrote the best checkpoint
    best = load_best_weights(current_best(job.best_path))
    (job.parts.model if job.parts.ema is None else job.parts.ema.module).load_state_dict(best)
    model = eval_model(job.parts)
    state.best_logits = distributed.gather_rows(predict_logits(model, job.val_loader, job.ctx))
    clean = view_metrics(state.best_logits, job.val_targets, job.meta["num_classes"], "clean")
    state.best_scores["val_macro_f1"] = clean["val_macro_f1"]
    log.info("fold %d: clean macro F1 %.4f at the best epoch %d (robust %.4f)", job.fold, clean["val_macro_f1"],
             state.best_epoch + 1, state.best_scores["val_macro_f1_robust"])


def keep_best(job: FoldJob, state: FoldState, epoch: int, scores: EpochScores, tiebreak: float | None = None) -> None:
    """A better monitored value (trainer.monitor) makes the epoch the fold's best: its logits, its
    scores and its checkpoint. ``tiebreak``: the orientation head's accuracy on the turned validation
    copies; an epoch that ties the best monitored value with a better head is better too (an F1
    saturated early would keep a head that had barely started learning)."""
    metrics = scores.metrics
    tied_better = tiebreak is not None and metrics["val_monitored"] == state.best_f1 and tiebreak > state.best_tiebreak
    if not (metrics["val_monitored"] > state.best_f1 or tied_better):
        state.stale += 1
        return
    state.best_f1, state.best_epoch, state.stale = metrics["val_monitored"], epoch, 0
    state.best_tiebreak = -1.0 if tiebreak is None else float(tiebreak)
    state.best_logits, state.best_robust_logits = scores.logits, scores.robust_logits
    state.best_scores = {k: metrics.get(k) for k in ("val_macro_f1", "val_macro_f1_robust",
                                                     "val_macro_f1_robust_select")}
    # The unwrapped module's keys (no DDP "module." / torch.compile "_orig_mod." prefix).
    weights = (job.parts.model if job.parts.ema is None else job.parts.ema.module).state_dict()
    if distributed.is_main():
        save_best(unfinished_path(job.best_path), {k: v.detach().cpu() for k, v in weights.items()}, job.meta, fold=job.fold,
                  epoch=epoch, macro_f1=metrics["val_macro_f1"], macro_f1_robust=metrics["val_macro_f1_robust"],
                  monitor=job.monitor, weights=weights_kind(job.parts))


def epoch_record(job: FoldJob, state: FoldState, epoch: int, stats: dict, metrics: dict) -> dict:
    """One row of the fold's history (results.json, curves, trackers)."""
    mixup = job.parts.mixup
    return {
        "epoch": epoch, "train_loss": stats["train_loss"], "val_loss": metrics["val_loss"],
        "val_macro_f1": metrics["val_macro_f1"], "val_accuracy": metrics["val_accuracy"],
        "val_loss_robust": metrics["val_loss_robust"], "val_macro_f1_robust": metrics["val_macro_f1_robust"],
        "val_accuracy_robust": metrics["val_accuracy_robust"],
        # the robust copies that pick the best epoch (val_monitored); the keys above: those that estimate
        "val_macro_f1_robust_select": metrics.get("val_macro_f1_robust_select"),
        "monitor": job.monitor, "val_monitored": metrics["val_monitored"], "best_monitored": state.best_f1,
        "lr": job.parts.optimizer.param_groups[0]["lr"], "img_per_s": stats["img_per_s"],
        "epoch_s": stats["epoch_s"], "best_macro_f1": state.best_scores.get("val_macro_f1"),
        "p_advanced": job.transform.p_advanced(epoch), "max_grad_norm": stats["max_grad_norm"],
        "mixup": bool(mixup is not None and mixup.mixup_enabled),
    }


def save_state(job: FoldJob, state: FoldState) -> None:
    """The last-state checkpoint: weights, optimiser, EMA, scaler, RNG and the FoldState."""
    if not distributed.is_main():  # DDP ranks hold the same state: rank 0 writes it
        return
    p = job.parts
    save_resume_state(job.last_path, {
        "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
        "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
        "ema": p.ema.state_dict() if p.ema is not None else None,
        "scaler": p.scaler.state_dict() if p.scaler is not None else None,
        "rng": rng_state(), "state": dict(vars(state)), "saved_at": time.time(),
    })


def restore_state(job: FoldJob) -> FoldState:
    """A fresh state, or the one in the last-state checkpoint (weights, optimiser, EMA, scaler loaded).

    The lr schedule is not loaded: it is a pure function of the config and the update count
    (timm's step_update), so rebuilding it is exact, and a resume with a larger trainer.epochs
    follows the longer schedule instead of the saved one's end."""
    if not job.last_path.is_file():
        return FoldState()
    p = job.parts
    ckpt = load_resume_state(job.last_path)
    p.model.load_state_dict(ckpt["model"])
    p.optimizer.load_state_dict(ckpt["optimizer"])
    if p.ema is not None and ckpt.get("ema"):
        p.ema.load_state_dict(ckpt["ema"])
    if p.scaler is not None and ckpt.get("scaler"):
        p.scaler.load_state_dict(ckpt["scaler"])
    state = FoldState.from_dict(ckpt["state"])
    at = f", step {state.partial['step']}" if state.partial else ""
    log.info("fold %d: resuming from epoch %d%s (best macro F1 %.4f at epoch %d)",
             job.fold, state.epoch, at, state.best_f1, state.best_epoch)
    return state


def finish_fold(job: FoldJob, outcome: dict, run: RunContext, data: RunData) -> None:
    """Write the fold's outcome (fold{k}.json last: with the logits, the "fold finished" marker)
    and tell the callbacks (with the decoded rows, for misclassified-image grids)."""
    if distributed.is_main():
        finish_best(job.best_path)  # fold<k>_best.partial.safetensors -> fold<k>_best.safetensors
        with atomic_write(run.fold_dir / f"fold{job.fold}_val_logits.npy", "wb") as fh:
            np.save(fh, outcome["val_logits"])
        if outcome["val_logits_robust"] is not None:
            with atomic_write(run.fold_dir / f"fold{job.fold}_val_logits_robust.npy", "wb") as fh:
                np.save(fh, outcome["val_logits_robust"])
        atomic_write_json(run.fold_dir / f"fold{job.fold}.json",
                          {key: v for key, v in outcome.items() if key not in ("val_logits", "val_logits_robust")})
    run.callback.on_fold_end(job.fold, {**outcome, "val_targets": job.val_targets, "val_ids": data.ids[job.val_idx],
                                        "classes": data.classes, "images": data.images_by_size[job.info["img_size"]]})
