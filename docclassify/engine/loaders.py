"""The DataLoaders of one fold: worker counts, seeded resumable shuffling, DDP sharding, the
debug limits (trainer.limit_train_batches / limit_val_batches / overfit_batches), and handing
freed memory back to the OS before any worker of the fold is forked."""

from __future__ import annotations

import ctypes
import gc
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from docclassify.data.dataset import ImageDataset
from docclassify.engine import distributed
from docclassify.engine.resume import ResumableSampler
from docclassify.engine.sampling import row_weights


def default_num_workers(requested) -> int:
    if requested is not None:
        return int(requested)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


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


def eval_batch_size(trainer_cfg) -> int:
    return int(trainer_cfg.eval_batch_size or 2 * int(trainer_cfg.batch_size))


def debug_rows(train_idx: np.ndarray, val_idx: np.ndarray, trainer_cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fold's (training rows, validation rows) under the debug keys.

    ``overfit_batches`` = n: n batches of training rows (a seeded draw) are both the training and
    the validation rows. ``limit_val_batches`` = n: a seeded draw of n evaluation batches of the
    validation rows. Rows, not loader batches, are cut so that the fold's validation targets,
    logits and OOF rows stay aligned."""
    rng = np.random.default_rng(seed)
    overfit = int(trainer_cfg.overfit_batches)
    if overfit > 0:
        rows = np.sort(rng.permutation(train_idx)[:overfit * int(trainer_cfg.batch_size)])
        return rows, rows
    limit = trainer_cfg.limit_val_batches
    if limit is not None:
        val_idx = np.sort(rng.permutation(val_idx)[:int(limit) * eval_batch_size(trainer_cfg)])
    return train_idx, val_idx


def build_loaders(images, train_idx, val_idx, targets, transform, trainer_cfg, num_workers, seed: int,
                  device: torch.device, orientation_labels: bool = False, sampler_mode: str = "natural",
                  train_images=None, target_rows=None, sample_weights=None, unknown_orientation=None):
    """(train loader, validation loader, train sampler) of one fold.

    With pseudo-labels (data/pseudo.py TrainingSet): ``train_images`` the store the training rows
    index (the training data's images, then the selected test images; ``images`` still serves the
    validation rows), ``targets`` covers both, ``sample_weights`` every row's loss weight and
    ``target_rows`` (soft pseudo-labels) every row's probability target, ``unknown_orientation``
    the rows whose orientation head label is unknown (the pseudo rows).

    ``orientation_labels``: training batches also carry each image's dihedral element (the
    orientation head's labels, data/augment.py).

    ``images``: the decoded rows (cache array or LazyImages); ``num_workers``: data.num_workers
    (None = one per core but one, at most 4); ``sampler_mode``: data.sampler (engine.sampling).
    trainer.limit_train_batches cuts every epoch's order; trainer.overfit_batches trains on the
    same rows in the same order, not augmented (and not re-sampled)."""
    release_freed_memory()  # before any worker of this fold is forked
    workers = default_num_workers(num_workers)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    batch = int(trainer_cfg.batch_size)
    overfit = int(trainer_cfg.overfit_batches) > 0
    train_ds = ImageDataset(images if train_images is None else train_images, train_idx, targets,
                            None if overfit else transform, orientation_labels=orientation_labels,
                            target_rows=target_rows, weights=sample_weights,
                            unknown_orientation=unknown_orientation)
    # DistributedSampler with one replica = seeded per-epoch shuffling (and DDP-ready); resumable
    # part-way through an epoch.
    world, rank = distributed.world_size(), distributed.rank()
    limit = trainer_cfg.limit_train_batches
    weights = None if overfit else row_weights(np.asarray(targets)[train_idx], sampler_mode)
    sampler = ResumableSampler(train_ds, num_replicas=world, rank=rank, shuffle=not overfit, seed=seed,
                               drop_last=False, limit=None if limit is None else int(limit) * batch, weights=weights)
    # Own generators for the workers' base seed: drawn from the global RNG it would shift the
    # dropout/mixup draws of the first epoch of every process (persistent workers draw it only
    # once per process), so a resumed run would differ from an uninterrupted one.
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=len(train_ds) // world > batch,
                              generator=torch.Generator().manual_seed(seed), **common)
    val_loader = build_eval_loader(images, val_idx, targets, trainer_cfg, num_workers, seed, device)
    return train_loader, val_loader, sampler


def build_eval_loader(images, rows, targets, trainer_cfg, num_workers, seed: int, device: torch.device):
    """A validation loader over ``images[rows]`` (no augmentation, in order); under DDP over this
    rank's contiguous share of ``rows`` (the fold gathers the shares back)."""
    workers = default_num_workers(num_workers)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    eval_bs = eval_batch_size(trainer_cfg)
    # Validation from the decode cache on CPU: nothing to decode or augment and the model uses the
    # same cores, so a worker adds no speed (measured equal), only a forked process per fold.
    if device.type == "cpu" and isinstance(images, np.ndarray):
        common = {**common, "num_workers": 0, "persistent_workers": False, "prefetch_factor": None}
    return DataLoader(ImageDataset(images, distributed.shard(rows), targets), batch_size=eval_bs,
                      shuffle=False, generator=torch.Generator().manual_seed(seed), **common)
