"""Where the seconds of a command go, and two ways of spending fewer of them on Python itself.

The entrypoint marks the start-up phases (:func:`mark`), :class:`PhaseLog` the training ones,
and at the end of a run one log line gives them all (``benchmarks/end_to_end_benchmark.py``
reads it)::

    phases (s): imports 4.1, compose+checks 0.5, data 0.9, first step 1.4, training 61.0, wrap-up 1.2; ...
    inside (s): decode cache 0.2, shift report 0.3, robust copies 0.1, train steps 55.0, validation 5.2, ...

The ``inside`` part sums the seconds of named pieces of work, wherever they fall (:func:`spend`):
the decode cache, the shift report, the robust copies, the training steps, the validation passes
(``clean + robust validation``: both views in one pass), the orientation check, checkpoint writes,
and the reports (OOF pool, results.json).

imports: Python, Hydra and the engine (torch, timm, scikit-learn, albumentations); compose+checks:
Hydra's compose and run dir, check_config; data: data source, decode cache, folds; first step:
model, optimiser, loaders and the first optimiser step; wrap-up: after the last epoch, the OOF
pool, results.json and the report. Times count from the process start (Linux; elsewhere from
the first import of this module).

Python's cyclic garbage collector walks every live object on each full collection, and several
times while the interpreter shuts down. Importing torch and timm makes ~600k objects and triggers
about eight full collections on the way (each longer than the last; they find almost nothing);
shutting down walks them again. :func:`pause_gc` (the entrypoint, before Hydra) and
:func:`freeze_imported_objects` (after the imports) skip the walks during the imports and move
what the imports made out of the collector's sight (``gc.freeze``); objects made later are
collected as always. The few thousand cyclic leftovers of the imports stay in memory (a few MB).
:func:`freeze_before_exit` skips the walks of the shutdown (atexit handlers still run: logs, W&B
and loader worker processes are closed as before).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from docclassify.tracking.callbacks import Callback

log = logging.getLogger("docclassify.phases")


def _process_age() -> float:
    """Seconds since this process started (Linux /proc), else 0."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


_T0 = time.perf_counter() - _process_age()
_marks: dict[str, float] = {}
_spent: dict[str, float] = {}
_frozen = False


@contextmanager
def spend(name: str) -> Iterator[None]:
    """Add the seconds of the block to the piece of work ``name`` (the log's ``inside (s):`` part)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _spent[name] = _spent.get(name, 0.0) + time.perf_counter() - t0


def spent_seconds() -> dict[str, float]:
    """Seconds per piece of work so far (:func:`spend`), in the order they first ran."""
    return dict(_spent)


def mark(name: str) -> None:
    """Record that phase ``name`` ended now (the first time only: a sweep's later trials keep the first)."""
    _marks.setdefault(name, time.perf_counter() - _T0)


def phase_seconds() -> dict[str, float]:
    """Durations of the phases marked so far (see the module docstring)."""
    m = _marks
    out = {}
    if "cli" in m and "imported" in m and "checked" in m:
        out["imports"] = m["cli"] + m["imported"] - m["checked"]
        out["compose+checks"] = m["checked"] - m["cli"]
    for name, start, end in (("data", "imported", "data"), ("first step", "data", "first_step"),
                             ("training", "first_step", "last_epoch"), ("wrap-up", "last_epoch", "finished")):
        if start in m and end in m:
            out[name] = m[end] - m[start]
    return out


def pause_gc() -> None:
    """Before the imports: no full collections while they run (see the module docstring)."""
    if not _frozen:
        gc.disable()


def freeze_imported_objects() -> None:
    """Once per process, after the imports: keep their objects out of the cyclic GC's walks, and
    collect again."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True
    gc.enable()


def freeze_before_exit() -> None:
    """At the very end of a command: skip the GC walks of the interpreter's shutdown."""
    gc.freeze()


class PhaseLog(Callback):
    """Marks data / first step / last epoch / finished and logs the phase line at the end of the
    first run of the process (a sweep's later trials skip the start-up, so their line would mislead).

    Put it last in the callback list: the wrap-up then includes the other callbacks' reports."""

    def __init__(self) -> None:
        self.active = False

    def on_run_start(self, info):
        self.active = "data" not in _marks
        mark("data")

    def on_step_end(self, fold, step, metrics):
        if self.active and "first_step" not in _marks:
            mark("first_step")

    def on_epoch_end(self, fold, epoch, metrics):
        if self.active:
            _marks["last_epoch"] = time.perf_counter() - _T0

    def on_run_end(self, results):
        if not self.active:
            return
        _marks["finished"] = time.perf_counter() - _T0
        seconds = phase_seconds()
        first = f"; first step at {_marks['first_step']:.1f} s" if "first_step" in _marks else ""
        inside = spent_seconds()
        inside = "; inside (s): " + ", ".join(f"{k} {v:.1f}" for k, v in inside.items()) if inside else ""
        log.info("phases (s): %s%s%s", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), first, inside)
