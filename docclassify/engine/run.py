"""K-fold training of one experiment: the sequence `docclassify.train` runs.

config -> data source -> folds -> per fold: decoded images + augmentation -> timm model ->
fit loop -> best checkpoint + OOF logits -> results.json / oof.csv -> cv macro F1.
Each finished fold is written to disk at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader

from docclassify.config import load_option, plain_config
from docclassify.config_schema import check_config
from docclassify.data.augment import TrainTransform
from docclassify.data.cache import LazyImages, cached_images, find_bad_images
from docclassify.data.dataset import ImageDataset
from docclassify.data.folds import assign_folds, folds_to_run
from docclassify.data.sources import DataError, DataSource, load_source
from docclassify.engine import distributed
from docclassify.engine.callbacks import Callback, CallbackList
from docclassify.engine.fit import FoldInputs, fit_fold
from docclassify.engine.loop import StepContext, StopRequested
from docclassify.engine.resume import ResumableSampler, save_overrides
from docclassify.engine.setup import amp_settings, resolve_device, seed_everything, set_deterministic
from docclassify.engine.signals import StopFlag
from docclassify.models.checkpoint import model_meta
from docclassify.models.factory import create_model, normalization_of
from docclassify.utils.io import atomic_write, atomic_write_csv, atomic_write_json

log = logging.getLogger(__name__)

RESULTS_FILE, OOF_FILE = "results.json", "oof.csv"


@dataclass
class FoldPlan:
    fold: int
    model_cfg: DictConfig
    img_size: int


def plan_folds(cfg: DictConfig, folds: list[int]) -> list[FoldPlan]:
    """Model and image size of every fold to run (ensemble.fold_models overrides `model`)."""
    def as_dict(raw) -> dict[int, object]:
        raw = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw or {})
        return {int(k): v for k, v in raw.items()}

    n_folds = int(cfg.folds.n)
    overrides = as_dict(cfg.ensemble.get("fold_models"))
    bad = sorted(k for k in overrides if not 0 <= k < n_folds)
    if bad:
        raise DataError(f"ensemble.fold_models: fold(s) {bad} out of range for folds.n={n_folds}")
    if not overrides:  # the option's preset mapping, cut to the folds that exist
        overrides = {k: v for k, v in as_dict(cfg.ensemble.get("preset")).items() if k < n_folds}
    plans = []
    for k in folds:
        model_cfg, size = cfg.model, None
        if k in overrides:
            spec = overrides[k]
            if isinstance(spec, dict):
                model_cfg = load_option("model", spec["model"])
                size = spec.get("img_size")
            else:
                model_cfg = load_option("model", str(spec))
            if "pretrained" in cfg.model:  # model.pretrained=false on the command line applies to all folds
                model_cfg.pretrained = bool(cfg.model.pretrained) and bool(model_cfg.pretrained)
        if not cfg.data.get("use_pretrained", True):
            model_cfg = OmegaConf.merge(model_cfg, {"pretrained": False})
        size = size or cfg.data.img_size or model_cfg.img_size
        plans.append(FoldPlan(k, model_cfg, int(size)))
    return plans


def default_num_workers(requested) -> int:
    if requested is not None:
        return int(requested)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def load_images(source: DataSource, size: int, data_cfg, cache_dir) -> tuple[object, list[int]]:
    paths = list(source.train["path"])
    if data_cfg.cache:
        return cached_images(paths, size, data_cfg.resize, int(data_cfg.pad_value), cache_dir)
    return LazyImages(paths, size, data_cfg.resize, int(data_cfg.pad_value)), find_bad_images(paths)


def handle_bad_images(source: DataSource, bad: list[int], policy: str) -> list[str]:
    if not bad:
        return []
    ids = source.train["ID"].iloc[bad].tolist()
    shown = ", ".join(ids[:20]) + (f" ... and {len(ids) - 20} more" if len(ids) > 20 else "")
    if policy == "error":
        raise DataError(f"{len(ids)} training image(s) cannot be decoded: {shown}. Fix or remove them, "
                        "or set data.on_bad_image=skip to train without them.")
    if policy != "skip":
        raise DataError(f"data.on_bad_image={policy!r}: expected error or skip")
    log.warning("data.on_bad_image=skip: skipping %d undecodable training image(s): %s", len(ids), shown)
    return ids


def release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's malloc_trim).

    glibc keeps what an earlier fold freed (model, optimiser, EMA, batches) for reuse; worker
    processes forked afterwards inherit that heap, so each fold's workers and the run's RSS
    grew (benchmarks/memory_benchmark.py: total PSS +18-37% after fold 1 without this, flat with it)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def build_loaders(images, train_idx, val_idx, targets, transform, cfg, seed: int, device: torch.device):
    release_freed_memory()  # before any worker of this fold is forked
    trainer = cfg.trainer
    workers = default_num_workers(cfg.data.num_workers)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    train_ds = ImageDataset(images, train_idx, targets, transform)
    # DistributedSampler with one replica = seeded per-epoch shuffling (and DDP-ready); resumable
    # part-way through an epoch.
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sampler = ResumableSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    batch = int(trainer.batch_size)
    # Own generators for the workers' base seed: drawn from the global RNG it would shift the
    # dropout/mixup draws of the first epoch of every process (persistent workers draw it only
    # once per process), so a resumed run would differ from an uninterrupted one.
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=len(train_ds) // world > batch,
                              generator=torch.Generator().manual_seed(seed), **common)
    eval_bs = int(trainer.eval_batch_size or 2 * batch)
    # Validation from the decode cache on CPU: nothing to decode or augment and the model uses the
    # same cores, so a worker adds no speed (measured equal), only a forked process per fold.
    val_common = common
    if device.type == "cpu" and isinstance(images, np.ndarray):
        val_common = {**common, "num_workers": 0, "persistent_workers": False, "prefetch_factor": None}
    # Under DDP each rank predicts its contiguous share of the rows (fit_fold gathers them back).
    val_loader = DataLoader(ImageDataset(images, distributed.shard(val_idx), targets), batch_size=eval_bs,
                            shuffle=False, generator=torch.Generator().manual_seed(seed), **val_common)
    return train_loader, val_loader, sampler


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.get("resume"):
        run_dir = Path(str(cfg.resume)).expanduser()
        if not run_dir.is_dir():
            raise DataError(f"resume={cfg.resume}: run directory not found")
        return run_dir
    return Path(cfg.paths.output_dir)


def check_resume_compatible(run_dir: Path, cfg: DictConfig) -> None:
    """A run dir holding another experiment's state must not be silently mixed with this one."""
    path = run_dir / "run_config.yaml"
    keys = ("data", "model", "n_folds", "ensemble", "seed")

    def view(c) -> dict:
        out = {k: c.get(k) for k in ("data", "model", "ensemble", "seed")}
        out["n_folds"] = (c.get("folds") or {}).get("n")
        return json.loads(json.dumps(out, default=str))

    current = view(plain_config(cfg))
    if path.is_file():
        saved = view(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        if json.dumps(saved, sort_keys=True, default=str) != json.dumps(current, sort_keys=True, default=str):
            diff = [k for k in keys if json.dumps(saved.get(k), sort_keys=True, default=str)
                    != json.dumps(current.get(k), sort_keys=True, default=str)]
            raise DataError(f"{run_dir} holds a run with a different config ({diff}); "
                            "use a new hydra.run.dir or resume with the original settings")
    else:
        from docclassify.utils.io import atomic_write_text

        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(plain_config(cfg))))


def run_training(cfg: DictConfig, callbacks: list[Callback] | None = None) -> dict:
    """Train every selected fold and write results.json / oof.csv. Returns the results dict."""
    t_start = time.time()
    check_config(cfg)
    distributed.init_from_env()  # under torchrun: join the process group (only rank 0 writes files)
    main = distributed.is_main()
    run_dir = resolve_run_dir(cfg)
    ckpt_dir, fold_dir = run_dir / "checkpoints", run_dir / "folds"
    for d in (ckpt_dir, fold_dir) if main else ():
        d.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    set_deterministic(bool(cfg.trainer.deterministic))
    seed_everything(seed)
    device = distributed.device_for(resolve_device(cfg.trainer.device))
    amp = amp_settings(cfg.trainer.amp, device)

    with distributed.main_first():  # rank 0 builds generated data / caches, the other ranks reuse them
        source = load_source(cfg.data, cfg.paths.cache_dir)
    n_folds = int(cfg.folds.n)
    run_folds = folds_to_run(cfg.folds.run, n_folds)
    plans = plan_folds(cfg, run_folds)
    if main:
        check_resume_compatible(run_dir, cfg)
        save_overrides(run_dir)

    targets_all = source.train["target"].to_numpy()
    images_by_size, bad_rows = {}, set()
    for size in sorted({p.img_size for p in plans}):
        with distributed.main_first():
            images, bad = load_images(source, size, cfg.data, cfg.paths.cache_dir)
        images_by_size[size] = images
        bad_rows.update(bad)
    # One decision (and one warning) for the bad images of every image size.
    skipped_ids = sorted(handle_bad_images(source, sorted(bad_rows), cfg.data.on_bad_image))
    keep = ~source.train["ID"].isin(skipped_ids).to_numpy()
    row_ids = np.flatnonzero(keep)  # positions in source.train that take part
    folds = np.full(len(source.train), -1, dtype=np.int64)
    folds[row_ids] = assign_folds(targets_all[row_ids], n_folds, seed, float(cfg.folds.holdout_fraction))
    if main:
        atomic_write_csv(pd.DataFrame({"ID": source.train["ID"], "target": targets_all, "fold": folds}),
                         run_dir / "folds.csv")

    callback = CallbackList(callbacks)
    stop = StopFlag().install()
    info = {"run_dir": str(run_dir), "classes": source.classes, "folds": run_folds, "n_train": int(keep.sum()),
            "device": str(device), "amp": amp.name}
    log.info("%s: %d training images, %d classes, folds %s of %d, device %s, AMP %s",
             source.name, int(keep.sum()), source.num_classes, run_folds, n_folds, device, amp.name)
    callback.on_run_start(info)
    outcomes = []
    try:
        for plan in plans:
            # A signal during the previous fold's last validation (all DDP ranks decide together).
            if not distributed.all_ranks_true(not stop.requested):
                raise StopRequested(f"stop requested before fold {plan.fold}")
            outcomes.append(_run_fold(plan, cfg, source, images_by_size[plan.img_size], folds, keep,
                                      device, amp, stop, callback, ckpt_dir, fold_dir, seed))
    except BaseException:
        callback.close()  # trackers finish their runs (marked failed) even when training stops
        raise
    finally:
        stop.uninstall()
    try:
        results = aggregate(run_dir, source, cfg, outcomes, skipped_ids, write=main)
        results["seconds"] = round(time.time() - t_start, 2)
        results["distributed"] = distributed.scaling(cfg.trainer)  # world size, effective batch, lr used
        if main:
            atomic_write_json(run_dir / RESULTS_FILE, results)
        callback.on_run_end(results)
    finally:
        callback.close()
    log.info("cv macro F1 %.4f over %d OOF rows (%s) -> %s", results["cv_macro_f1"], results["n_oof_rows"],
             ", ".join(f"fold {f['fold']}: {f['best_macro_f1']:.4f}" for f in results["folds"]), run_dir)
    return results


def _run_fold(plan: FoldPlan, cfg, source: DataSource, images, folds, keep, device, amp, stop, callback,
              ckpt_dir: Path, fold_dir: Path, seed: int) -> dict:
    k = plan.fold
    summary_path, logits_path = fold_dir / f"fold{k}.json", fold_dir / f"fold{k}_val_logits.npy"
    if summary_path.is_file() and logits_path.is_file():
        outcome = json.loads(summary_path.read_text())
        # A larger trainer.epochs on resume extends a finished fold from its last-state checkpoint.
        if outcome["epochs_run"] >= int(cfg.trainer.epochs) or outcome.get("early_stopped"):
            log.info("fold %d: already finished (%s), not retrained", k, summary_path)
            outcome["val_logits"] = np.load(logits_path)
            return outcome
        log.info("fold %d: finished after %d epochs; continuing to trainer.epochs=%d", k, outcome["epochs_run"],
                 int(cfg.trainer.epochs))
    targets = source.train["target"].to_numpy()
    val_idx = np.flatnonzero((folds == k) & keep)
    train_idx = np.flatnonzero((folds != k) & keep)
    mc = plan.model_cfg
    # Initial weights depend on (seed, fold) only, not on what earlier folds of this process
    # drew: a run resumed after fold 0 finished trains fold 1 exactly as an uninterrupted one.
    seed_everything(seed + 1009 * k)
    model = create_model(mc.timm_name, source.num_classes, pretrained=bool(mc.pretrained), weights=mc.get("weights"),
                         drop_rate=float(cfg.regularization.drop_rate),
                         drop_path_rate=float(cfg.regularization.drop_path_rate))
    mean, std = normalization_of(model)
    meta = model_meta(mc.timm_name, mc.name, source.num_classes, plan.img_size, cfg.data.resize,
                      int(cfg.data.pad_value), mean, std, source.classes)
    transform = TrainTransform(cfg.augment, plan.img_size, int(cfg.trainer.epochs), seed + 7919 * k,
                               int(cfg.data.pad_value))
    train_loader, val_loader, sampler = build_loaders(images, train_idx, val_idx, targets, transform, cfg,
                                                      seed + k, device)
    ctx = StepContext(
        device=device, amp=amp,
        mean=torch.tensor(mean, device=device).view(1, 3, 1, 1), std=torch.tensor(std, device=device).view(1, 3, 1, 1),
        channels_last=bool(cfg.trainer.channels_last), grad_clip=cfg.trainer.grad_clip,
        accum_steps=int(cfg.trainer.accum_steps), skip_nonfinite=bool(cfg.trainer.skip_nonfinite),
        log_every=int(cfg.trainer.log_every_n_steps), stop_flag=stop,
    )
    info = {"model": mc.timm_name, "model_option": mc.name, "img_size": plan.img_size,
            "n_train": len(train_idx), "n_val": len(val_idx)}
    log.info("fold %d: %s at %d px, %d train / %d val images", k, mc.timm_name, plan.img_size,
             len(train_idx), len(val_idx))
    callback.on_fold_start(k, {**info, "steps_per_epoch": len(train_loader)})
    t0 = time.time()
    inputs = FoldInputs(k, model, meta, train_loader, val_loader, sampler, transform, targets[val_idx],
                        source.num_classes, ckpt_dir / f"fold{k}_best.pt", ckpt_dir / f"fold{k}_last.pt")
    outcome = fit_fold(inputs, cfg, ctx, seed, callback)
    outcome.update(info, val_index=val_idx.tolist(), seconds=round(time.time() - t0, 2),
                   checkpoint=f"checkpoints/fold{k}_best.pt")
    if distributed.is_main():
        with atomic_write(logits_path, "wb") as fh:  # with fold{k}.json, the "fold finished" marker
            np.save(fh, outcome["val_logits"])
        atomic_write_json(summary_path, {key: v for key, v in outcome.items() if key != "val_logits"})
    callback.on_fold_end(k, {**outcome, "val_targets": targets[val_idx],
                             "val_ids": source.train["ID"].to_numpy()[val_idx], "classes": source.classes,
                             "images": images})  # decoded rows (HWC uint8), for misclassified-image grids
    return outcome


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def aggregate(run_dir: Path, source: DataSource, cfg, outcomes: list[dict], skipped_ids: list[str],
              write: bool = True) -> dict:
    """Pool the OOF predictions of the folds that ran: oof.csv + the cv macro F1 (on the pooled rows).
    ``write=False``: only the results dict (DDP ranks other than 0)."""
    ids = source.train["ID"].to_numpy()
    targets = source.train["target"].to_numpy()
    rows, logits = [], []
    for o in outcomes:
        rows.extend(o["val_index"])
        logits.append(np.asarray(o["val_logits"], dtype=np.float64))
    rows = np.asarray(rows, dtype=np.int64)
    logits = np.concatenate(logits) if logits else np.zeros((0, source.num_classes))
    if len(np.unique(rows)) != len(rows):
        raise RuntimeError("internal error: an OOF row appears in two folds")
    order = np.argsort(rows, kind="stable")  # oof.csv in train.csv order
    rows, logits = rows[order], logits[order]
    probs = softmax(logits)
    preds = probs.argmax(1)
    oof = pd.DataFrame({"ID": ids[rows], "target": targets[rows], "pred": preds})
    oof = pd.concat([oof, pd.DataFrame(probs, columns=source.classes)], axis=1)
    if write:
        atomic_write_csv(oof, run_dir / OOF_FILE, float_format="%.8g")
        with atomic_write(run_dir / "oof_logits.npy", "wb") as fh:
            np.save(fh, logits.astype(np.float32))
    folds = []
    for o in outcomes:
        folds.append({
            "fold": o["fold"], "model": o["model"], "model_option": o["model_option"], "img_size": o["img_size"],
            "best_macro_f1": o["best_macro_f1"], "best_epoch": o["best_epoch"], "epochs_run": o["epochs_run"],
            "checkpoint": o["checkpoint"], "weights": o["weights"], "n_train": o["n_train"], "n_val": o["n_val"],
            "seconds": o["seconds"], "skipped_steps": o.get("skipped_steps", 0),
            "early_stopped": o.get("early_stopped", False), "history": o["history"],
        })
    return {
        "metric": "macro_f1",
        "cv_macro_f1": float(f1_score(targets[rows], preds, average="macro")) if len(rows) else float("nan"),
        "cv_accuracy": float(accuracy_score(targets[rows], preds)) if len(rows) else float("nan"),
        "mean_fold_macro_f1": float(np.mean([o["best_macro_f1"] for o in outcomes])),
        "n_oof_rows": int(len(rows)),
        "n_folds": int(cfg.folds.n),
        "folds_run": [o["fold"] for o in outcomes],
        "classes": source.classes,
        "data": {"name": source.name, "root": str(source.root)},
        "pipeline": cfg.get("pipeline"), "experiment": cfg.get("experiment"), "augment": cfg.augment.name,
        "skipped_images": skipped_ids,
        "skipped_steps": int(sum(o.get("skipped_steps", 0) for o in outcomes)),
        "oof": OOF_FILE, "oof_logits": "oof_logits.npy",
        "folds": folds,
    }
