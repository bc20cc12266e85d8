"""Errors a user can fix, and how the entrypoints report them.

Every error caused by the user's config, data or command line derives from :class:`UserError`
(``ConfigError``, ``DataError``/``RunError``, ``ModelConfigError``, ``AggregateError``,
``BadImageError``); its message names what is wrong, where, and the fix. The entrypoints turn
one into a short report instead of a traceback::

    docclassify.train: error: trainer.lr=-1.0: expected a number >= 0.0

on stderr, exit code 2 (argparse's code for a usage error; Hydra's own compose errors exit 1).
``HYDRA_FULL_ERROR=1`` shows the full traceback instead, as for Hydra's errors. A run refused
this way leaves no run dir behind when Hydra made the dir for this job and nothing but Hydra's
files and the run's set-up files are in it. Inside a multirun (a sweep) the error propagates,
so the sweeper records a failed trial and goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

USAGE_EXIT_CODE = 2
# What a run dir holds before any training: Hydra's files and what a run writes before its
# first epoch (engine.resume's run_config.yaml / run_overrides.yaml, engine.kfold's folds.csv and pseudo_labels.csv).
HYDRA_FILES = (".hydra",)
# The pre-flight shift check (distortion/report.py run_shift_check) writes its report before the image
# checks that may still refuse the run: those files alone do not keep a refused run's dir either.
SETUP_FILES = ("run_config.yaml", "run_overrides.yaml", "folds.csv", "pseudo_labels.csv",
               "shift.json", "shift.png", "shift_images.csv", "distort_profile.yaml")

# Run dirs named on the command line (hydra.run.dir=...) that existed before Hydra started:
# never removed, whatever they hold.
_preexisting: set[Path] = set()


class UserError(ValueError):
    """Bad config, data or input: the message says what, where and the fix; no traceback needed."""


class DataError(UserError):
    """Bad input data: the message names the file/column/key and what to do."""


def full_error_requested() -> bool:
    """HYDRA_FULL_ERROR=1, the switch Hydra itself reads for full tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def error_line(prog: str, exc: BaseException) -> str:
    """``prog: error: message`` (a message of several lines keeps them, indented)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return "\n".join([f"{prog}: error: {lines[0]}", *("  " + line.strip() for line in lines[1:])])


def remember_preexisting_run_dir(argv: list[str]) -> None:
    """Before Hydra starts: note a ``hydra.run.dir=`` that already exists (it is not this job's to remove)."""
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "hydra.run.dir" and value and Path(value.strip("'\"")).expanduser().is_dir():
            _preexisting.add(Path(value.strip("'\"")).expanduser().resolve())


def _hydra_job() -> tuple[Path | None, bool]:
    """(Hydra's output dir of this job, whether this is a multirun job); (None, False) outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, False
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN


def _log_names() -> set[str]:
    """The job's log files (``<job name>.log``, Hydra's default file handler)."""
    return {Path(h.baseFilename).name for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)}


def fresh_run_dir(run_dir: Path) -> bool:
    """True when ``run_dir`` holds only what Hydra wrote for this job (its .hydra/ and an empty log)."""
    if run_dir.resolve() in _preexisting or not run_dir.is_dir():
        return False
    logs = _log_names()
    for entry in run_dir.iterdir():
        if entry.name in HYDRA_FILES:
            continue
        if entry.name in logs and entry.is_file() and entry.stat().st_size == 0:
            continue
        return False
    return True


def _only_setup_files(path: Path, logs: set[str]) -> bool:
    for entry in path.iterdir():
        if entry.name in HYDRA_FILES or (entry.is_file() and entry.name in (*SETUP_FILES, *logs)):
            continue
        if entry.is_dir() and not entry.is_symlink() and _only_setup_files(entry, set()):
            continue  # e.g. the empty checkpoints/ and folds/ a run makes at its start
        return False
    return True


def remove_refused_run_dir(run_dir: Path) -> bool:
    """Remove a run dir made for a refused job if it holds nothing but Hydra's files, the run's
    set-up files and empty folders (a checkpoint, a fold result or any other file keeps it)."""
    if not run_dir.is_dir() or not _only_setup_files(run_dir, _log_names()):
        return False
    for handler in logging.getLogger().handlers:  # the job's log file is in there
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
            handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _write_to_log_files(prog: str, message: str) -> None:
    record = logging.LogRecord(prog, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextmanager
def reported_as_usage_errors(prog: str) -> Iterator[None]:
    """Around a Hydra task function: a UserError becomes ``prog: error: ...`` and exit code 2
    (the traceback with HYDRA_FULL_ERROR=1) and its fresh run dir is removed. In a multirun the
    error propagates unchanged (a failed trial; its dir and log stay for the sweep's records)."""
    run_dir, multirun = _hydra_job()
    fresh = run_dir is not None and not multirun and fresh_run_dir(run_dir)
    try:
        yield
    except UserError as exc:
        if multirun:
            raise
        removed = fresh and _is_main_rank() and remove_refused_run_dir(run_dir)
        if full_error_requested():
            raise
        message = error_line(prog, exc)
        if not removed:
            _write_to_log_files(prog, message)  # a kept run dir's log says why the run stopped
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT_CODE) from None


def format_ids(ids: Iterable, limit: int = 10) -> str:
    """``"3 ID(s): a, b, c"``; beyond ``limit`` shown: ``"..., and 5 more"`` (for error messages)."""
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:limit])
    more = f", and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"{len(ids)} ID(s): {shown}{more}"
