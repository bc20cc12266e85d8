"""Study-side helpers of the docclassify sweeper: storage set-up, the per-trial identity
overrides, enqueued trials, the trials summary and the best-trial export.

Plain functions over an ``optuna.Study`` / ``FrozenTrial`` so they can be tested without Hydra.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from docclassify.errors import UserError
from docclassify.utils.io import atomic_write_csv, atomic_write_text
from docclassify.utils.redact import redact

log = logging.getLogger(__name__)

SUMMARY_FILE = "trials.csv"
BEST_EXPERIMENT = "best"
# User attributes the sweeper sets on a trial. The plugin stores each fixed override (e.g.
# data.root) as a user attribute too; the prefix keeps ours apart from those.
ATTR_PREFIX = "docclassify:"
# Written by the trial job into its run dir (docclassify.sweep.trial).
TRIAL_FILE, EXPERIMENT_FILE = "sweep_trial.json", "experiment.yaml"
SQLITE = "sqlite:///"


def instantiate_trusted(spec: Any, targets: tuple[str, ...], **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(spec, **kwargs)``, its ``_target_`` limited to ``targets`` on
    hydra 1.4 (which warns, and from 1.5 refuses, when a caller names no execution whitelist);
    hydra 1.3 has no whitelist."""
    import inspect

    from hydra.utils import instantiate

    if "_execution_whitelist_" in inspect.signature(instantiate).parameters:
        kwargs["_execution_whitelist_"] = targets
    return instantiate(spec, **kwargs)


class StorageVersionError(UserError):
    """A study storage made by another Optuna version (the message says what to do)."""


def storage_version_advice(exc: BaseException, storage: Any) -> str | None:
    """What to do when Optuna refuses a storage made by another Optuna version (the storage-upgrade
    trap, docs/tuning.md#two-optuna-stacks); None for other errors."""
    text = str(exc)
    if "no longer compatible with the table schema" not in text:
        return None
    return (f"{text.strip()}\nThe study storage {redact(storage)} was made by another Optuna version than this "
            "environment's. `optuna storage upgrade` changes it one way (optuna 2.10, the default stack, cannot "
            "open it afterwards): upgrade a copy (cp optuna.db optuna5.db; optuna storage upgrade --storage "
            "sqlite:///optuna5.db) and point hydra.sweeper.storage at it, or give this stack its own storage "
            "(docs/tuning.md#two-optuna-stacks).")


def prepare_storage(storage: Any) -> Any:
    """Make a sqlite URL absolute (jobs may run elsewhere) and create its folder; others pass through."""
    if not isinstance(storage, str) or not storage.startswith(SQLITE):
        return storage
    path = storage[len(SQLITE):]
    if not path or path == ":memory:":
        return storage
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLITE + str(path)



def quote_value(text: str) -> str:
    """``text`` as a single-quoted Hydra override value that parses back to exactly ``text``."""
    text = re.sub(r"\\+(?='|$)", lambda m: m.group(0) * 2, text)  # backslashes before a quote or at the end
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def trial_overrides(study_name: str, number: int, storage: Any) -> list[str]:
    """Overrides that tell a trial job which Optuna trial it is (read by docclassify.sweep.trial).

    ``++`` because the hparams_search group may not be selected; an in-memory or non-URL
    storage is passed as null (the job then cannot report to its trial). The storage's password
    is masked: the overrides are saved in the job's configs; the job takes the real URL from
    its own sweeper config (docclassify.sweep.trial.trial_storage).
    """
    url = quote_value(redact(storage)) if isinstance(storage, str) else "null"
    return [f"++hparams_search.trial.study={quote_value(study_name)}", f"++hparams_search.trial.number={number}",
            f"++hparams_search.trial.storage={url}"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return str(a) == str(b)


def enqueue_missing(study, entries: list[dict], distributions: dict) -> int:
    """Queue each entry ({param: value}) unless a trial of the study already has those values.

    Keys must be search-space parameters and values inside their distribution: Optuna would
    otherwise ignore the value silently and sample instead.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    queued = 0
    for i, entry in enumerate(entries):
        for key, value in entry.items():
            if key not in distributions:
                raise ValueError(f"hydra.sweeper.enqueue_trials[{i}]: {key!r} is not a search-space parameter "
                                 f"(these are: {sorted(distributions)})")
            dist = distributions[key]
            try:
                inside = dist._contains(dist.to_internal_repr(value))
            except (ValueError, TypeError):
                inside = False
            if not inside:
                raise ValueError(f"hydra.sweeper.enqueue_trials[{i}]: {key}={value!r} is outside its search "
                                 f"space {dist}")
        seen = False
        for t in study.get_trials(deepcopy=False):
            used = t.system_attrs.get("fixed_params", {}) if t.state == TrialState.WAITING else t.params
            if all(k in used and _same(used[k], v) for k, v in entry.items()):
                seen = True
                break
        if not seen:
            with warnings.catch_warnings():  # "experimental" in Optuna 2.x, stable since
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.enqueue_trial(entry)
            queued += 1
    return queued


def interrupt_of(exc: BaseException) -> str | None:
    """The signal (SIGTERM, SIGINT) that stopped a trial job, from what the launcher raised: the
    job's exit (128 + the signal, engine/stops.py) or an interrupt outside it; None otherwise."""
    import signal

    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code - 128 in (signal.SIGTERM, signal.SIGINT):
        return signal.Signals(exc.code - 128).name
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", None)  # engine.signals.Interrupted
        return signal.Signals(signum).name if signum else "SIGINT"
    return None


def requeue_interrupted(study, trials: list, signal_name: str) -> None:
    """Mark the trials a signal stopped (user attribute ``docclassify:interrupted``) and queue
    their parameters again: the same sweep command then runs them first (they are told FAIL:
    Optuna has no state for an interrupted trial, and a RUNNING one would stay so for ever)."""
    from optuna.exceptions import ExperimentalWarning

    for trial in trials:
        trial.set_user_attr(ATTR_PREFIX + "interrupted", signal_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.enqueue_trial(dict(trial.params))


def sync_reports(trial, storage: Any) -> None:
    """Copy what the job reported to its trial into this process's view of the trial.

    Optuna's cached RDB storage does not re-read a trial this process asked for, so the
    job's reports are invisible here: a PRUNED trial would get no value (its last report)
    and TPE would rank it as the worst possible.
    """
    import optuna

    if not isinstance(storage, str):
        return
    fresh = optuna.storages.RDBStorage(storage)
    try:
        reported = fresh.get_trial(trial._trial_id).intermediate_values
    finally:
        fresh.engine.dispose()
    for step, value in sorted(reported.items()):
        trial.report(value, step)


def job_output_dir(ret) -> Path | None:
    """The run dir of a finished Hydra job (its JobReturn), if known."""
    try:
        return Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
    except Exception:  # noqa: BLE001 - a launcher that returns no hydra config
        return None


def record_job_info(trial, run_dir: Path) -> None:
    """Store the trial's run dir and timings (from the job's sweep_trial.json) on the trial."""
    trial.set_user_attr(ATTR_PREFIX + "run_dir", str(run_dir))
    path = run_dir / TRIAL_FILE
    if path.is_file():
        info = json.loads(path.read_text())
        for key in ("train_s", "job_s"):
            if info.get(key) is not None:
                trial.set_user_attr(ATTR_PREFIX + key, float(info[key]))


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, value, seconds (Optuna's ask-to-tell time), training
    seconds, overhead (seconds - training: Hydra job set-up, data, cache, model creation,
    outputs), the parameters and the run dir."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = t.duration.total_seconds() if t.duration is not None else None
        train_s = t.user_attrs.get(ATTR_PREFIX + "train_s")
        value = t.values[0] if t.values is not None and len(t.values) == 1 else t.values
        rows.append({
            "number": t.number, "state": t.state.name, "value": value,
            "seconds": round(seconds, 2) if seconds is not None else None,
            "train_s": round(train_s, 2) if train_s is not None else None,
            "overhead_s": round(seconds - train_s, 2) if seconds is not None and train_s is not None else None,
            **{f"params_{k}": v for k, v in t.params.items()},
            "run_dir": t.user_attrs.get(ATTR_PREFIX + "run_dir"),
        })
    return pd.DataFrame(rows)


def write_summary(study, sweep_dir: Path) -> pd.DataFrame:
    table = trials_frame(study)
    atomic_write_csv(table, Path(sweep_dir) / SUMMARY_FILE, index=False)
    return table


def best_trial(study):
    """The best COMPLETE trial, or None when there is none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None


def reproduce_overrides(trial) -> list[str]:
    """The trial's overrides: the sweep's fixed ones (stored by the plugin as user attributes) then its params."""
    fixed = [f"{k}={v}" for k, v in trial.user_attrs.items() if not k.startswith(ATTR_PREFIX)]
    return [*fixed, *(f"{k}={v}" for k, v in trial.params.items())]


def export_best_experiment(trial, sweep_dir: Path) -> Path | None:
    """Copy the trial's experiment.yaml to <sweep_dir>/experiment/best.yaml, noting trial and value.

    None when the trial's run dir is not readable here (e.g. it ran on another machine).
    """
    run_dir = trial.user_attrs.get(ATTR_PREFIX + "run_dir")
    src = Path(run_dir) / EXPERIMENT_FILE if run_dir else None
    if src is None or not src.is_file():
        log.warning("Best trial %d: %s not found, no experiment file exported (use the override list)",
                    trial.number, src)
        return None
    first, _, rest = src.read_text().partition("\n")
    note = f"# Best trial so far: {trial.number}, objective {trial.value} (exported from {run_dir})"
    dest = Path(sweep_dir) / "experiment" / f"{BEST_EXPERIMENT}.yaml"
    atomic_write_text(dest, f"{first}\n{note}\n{rest}")
    return dest
