"""``trainer.profiler=pytorch`` (debug=profile): the first epoch a run trains, under torch.profiler.

Writes ``<run dir>/profile.txt`` (the ops sorted by their own time: where a step spends it) and
``profile_trace.json`` (a timeline for https://ui.perfetto.dev or chrome://tracing). Only the
first profiled epoch is kept: an existing profile.txt turns the profiler off, so a resumed or
longer run does not profile again. Bound the epoch with trainer.limit_train_batches (the
profiler keeps every op event in memory).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.profiler import ProfilerActivity, profile

from docclassify.engine import distributed

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import TrainerConfig

log = logging.getLogger(__name__)

PROFILE_TXT, PROFILE_TRACE = "profile.txt", "profile_trace.json"
ROW_LIMIT = 40


@contextmanager
def profile_epoch(trainer: TrainerConfig, run_dir: Path, fold: int, epoch: int):
    """Profile the block (one epoch's training steps) when trainer.profiler asks and no profile exists yet."""
    path = Path(run_dir) / PROFILE_TXT
    if trainer.profiler is None or path.exists() or not distributed.is_main():
        yield
        return
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        yield
    seconds = time.perf_counter() - t0
    write_profile(prof, path, f"fold {fold}, epoch {epoch}: {seconds:.2f} s of training steps", cuda)


def write_profile(prof, path: Path, title: str, cuda: bool) -> None:
    """The key-averages table (sorted by self device time on CUDA, else self CPU time) and the trace."""
    from docclassify.utils.io import atomic_write_text

    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=ROW_LIMIT)
    note = "(timings include the profiler's own overhead; compare ops with each other, not with a plain run)"
    atomic_write_text(path, f"torch.profiler, {title}\nsorted by {sort_by} {note}\n\n{table}\n")
    prof.export_chrome_trace(str(path.with_name(PROFILE_TRACE)))
    log.info("profile of %s -> %s", title, path)
