"""The DataLoaders of one fold: worker counts, seeded resumable shuffling, DDP sharding, the
debug limits (trainer.limit_train_batches / limit_val_batches / overfit_batches), handing
freed memory back to the OS before any worker of the fold is forked, and workers that leave
SIGTERM/SIGINT to the main process (:class:`Loader`)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import multiprocessing as mp
import os
import signal
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from docclassify.data.dataset import ImageDataset
from docclassify.engine import distributed, share
from docclassify.engine.resume import ResumableSampler
from docclassify.engine.sampling import row_weights

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import TrainerConfig

INTERRUPTS = (signal.SIGTERM, signal.SIGINT)
_live_iterators: weakref.WeakSet = weakref.WeakSet()  # iterators of Loaders with worker processes
_workers: weakref.WeakSet = weakref.WeakSet()  # the worker processes those iterators started


def leave_interrupts_to_the_main_process(worker_id: int) -> None:
    """A worker's ``worker_init_fn``: SIGTERM and SIGINT are ignored here. A signal to the whole
    process group (``timeout``, SLURM, ``docker stop``, a terminal's Ctrl-C) reaches the workers as
    well; killed by it, a worker would make the main process raise "DataLoader worker ... is
    killed by signal" at any point, even while it saves the state. The main process alone handles
    it (engine.signals: finish the step, save, exit) and ends the workers itself
    (:meth:`Loader.close`, :func:`shutdown_workers`)."""
    for sig in INTERRUPTS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)  # held since the fork (Loader.__iter__)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGTERM/SIGINT wait (blocked, not lost) in this thread while workers are started: a forked
    worker inherits the mask, so a signal that reaches it before its worker_init_fn is dropped
    there, and the main process gets its own copy when this ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _end(iterator) -> None:
    """torch's own clean shutdown of an iterator's workers (they exit when told; joined)."""
    _live_iterators.discard(iterator)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class Loader(DataLoader):
    """A DataLoader whose worker processes ignore SIGTERM/SIGINT (see
    :func:`leave_interrupts_to_the_main_process`) and that the fold closes when it ends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, worker_init_fn=leave_interrupts_to_the_main_process, **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with _interrupts_held():
            iterator = super().__iter__()
        if iterator not in _live_iterators:  # persistent workers: the same iterator every epoch
            _live_iterators.add(iterator)
            _workers.update(getattr(iterator, "_workers", ()))
        return iterator

    def close(self) -> None:
        """End the persistent workers now. Left to the loader's finalizer they may never end: when
        the cyclic GC frees a fold, the iterator's queues are finalized before it, its "exit"
        message to the workers is lost, and (ignoring SIGTERM) they would wait for ever."""
        iterator = self.__dict__.get("_iterator")
        if iterator is not None:
            self._iterator = None
            _end(iterator)


def close_loaders(*loaders) -> None:
    for loader in loaders:
        if isinstance(loader, Loader):
            loader.close()


def shutdown_workers() -> None:
    """At exit: end the workers of every Loader still iterating (a run that stopped), then kill any
    worker left behind (its loader freed without a clean shutdown). Registered after torch's exit
    hook, so it runs first: after that a loader no longer shuts its workers down, and
    multiprocessing would wait for ever for workers that ignore its SIGTERM."""
    for iterator in list(_live_iterators):
        _end(iterator)
    for worker in list(_workers):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


atexit.register(shutdown_workers)  # after torch.utils.data's (imported above): runs before it


def default_num_workers(requested) -> int:
    """``data.num_workers``; null = this job's share of the cores (engine/share.py)."""
    if requested is not None:
        return int(requested)
    return share.default_workers()


def worker_context():
    """The start method of the loader workers: the process's default, except under a default
    that pickles with its own reducers: loky (Hydra's joblib launcher runs each job in a loky
    process, whose default start method is loky), which cannot pickle the decode cache's map or
    the augmentation's shared epoch counter (``cannot pickle 'mmap.mmap' object``). Those get
    fork where the platform has it (nothing is pickled), else spawn."""
    method = mp.get_start_method(allow_none=True)
    if method in (None, "fork", "spawn", "forkserver"):
        return None
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _worker_options(workers: int, device: torch.device) -> dict:
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0,
            "prefetch_factor": 4 if workers > 0 else None,
            "multiprocessing_context": worker_context() if workers > 0 else None}


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


def eval_batch_size(trainer: TrainerConfig) -> int:
    return int(trainer.eval_batch_size or 2 * int(trainer.batch_size))


def debug_rows(train_idx: np.ndarray, val_idx: np.ndarray, trainer: TrainerConfig,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fold's (training rows, validation rows) under the debug keys.

    ``overfit_batches`` = n: n batches of training rows (a seeded draw) are both the training and
    the validation rows. ``limit_val_batches`` = n: a seeded draw of n evaluation batches of the
    validation rows. Rows, not loader batches, are cut so that the fold's validation targets,
    logits and OOF rows stay aligned."""
    rng = np.random.default_rng(seed)
    overfit = int(trainer.overfit_batches)
    if overfit > 0:
        rows = np.sort(rng.permutation(train_idx)[:overfit * int(trainer.batch_size)])
        return rows, rows
    limit = trainer.limit_val_batches
    if limit is not None:
        val_idx = np.sort(rng.permutation(val_idx)[:int(limit) * eval_batch_size(trainer)])
    return train_idx, val_idx


def build_loaders(images, train_idx, val_idx, targets, transform, trainer: TrainerConfig, num_workers, seed: int,
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
    (None = this job's share of the cores but one, at most 4: engine/share.py); ``sampler_mode``:
    data.sampler (engine.sampling).
    trainer.limit_train_batches cuts every epoch's order; trainer.overfit_batches trains on the
    same rows in the same order, not augmented (and not re-sampled)."""
    release_freed_memory()  # before any worker of this fold is forked
    share.refresh()  # the fold's workers follow this job's current share of the cores
    common = _worker_options(default_num_workers(num_workers), device)
    batch = int(trainer.batch_size)
    overfit = int(trainer.overfit_batches) > 0
    train_ds = ImageDataset(images if train_images is None else train_images, train_idx, targets,
                            None if overfit else transform, orientation_labels=orientation_labels,
                            target_rows=target_rows, weights=sample_weights,
                            unknown_orientation=unknown_orientation)
    # DistributedSampler with one replica = seeded per-epoch shuffling (and DDP-ready); resumable
    # part-way through an epoch.
    world, rank = distributed.world_size(), distributed.rank()
    limit = trainer.limit_train_batches
    weights = None if overfit else row_weights(np.asarray(targets)[train_idx], sampler_mode)
    sampler = ResumableSampler(train_ds, num_replicas=world, rank=rank, shuffle=not overfit, seed=seed,
                               drop_last=False, limit=None if limit is None else int(limit) * batch, weights=weights)
    # Own generators for the workers' base seed: drawn from the global RNG it would shift the
    # dropout/mixup draws of the first epoch of every process (persistent workers draw it only
    # once per process), so a resumed run would differ from an uninterrupted one.
    train_loader = Loader(train_ds, batch_size=batch, sampler=sampler, drop_last=len(train_ds) // world > batch,
                          generator=torch.Generator().manual_seed(seed), **common)
    val_loader = build_eval_loader(images, val_idx, targets, trainer, num_workers, seed, device)
    return train_loader, val_loader, sampler


def build_eval_loader(images, rows, targets, trainer: TrainerConfig, num_workers, seed: int, device: torch.device):
    """A validation loader over ``images[rows]`` (no augmentation, in order); under DDP over this
    rank's contiguous share of ``rows`` (the fold gathers the shares back)."""
    return build_views_loader([(images, rows, targets)], trainer, num_workers, seed, device)


def build_views_loader(views, trainer: TrainerConfig, num_workers, seed: int, device: torch.device):
    """One validation loader over several (images, rows, targets) sets, one after the other, in
    order (the clean validation rows, then their robust copies): one pass whose batches run across
    the seam. Under DDP each set is sharded on its own (this rank's share of each, in order;
    :func:`shard_sizes` says where to cut the predictions)."""
    common = _worker_options(default_num_workers(num_workers), device)
    eval_bs = eval_batch_size(trainer)
    # Validation from the decode cache on CPU: nothing to decode or augment and the model uses the
    # same cores, so a worker adds no speed (measured equal), only a forked process per fold.
    if device.type == "cpu" and all(isinstance(images, np.ndarray) for images, _, _ in views):
        common = _worker_options(0, device)
    sets = [ImageDataset(images, distributed.shard(rows), targets) for images, rows, targets in views]
    dataset = sets[0] if len(sets) == 1 else ConcatDataset(sets)
    return Loader(dataset, batch_size=eval_bs, shuffle=False, generator=torch.Generator().manual_seed(seed), **common)


def shard_sizes(*row_sets) -> list[int]:
    """How many rows of each set this rank predicts (:func:`build_views_loader`)."""
    return [len(distributed.shard(rows)) for rows in row_sets]
