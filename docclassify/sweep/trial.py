"""The trial job's side of a sweep: find its own Optuna trial, report per-epoch values,
stop when the pruner says so, and time what is not training.

The docclassify sweeper passes each job ``hparams_search.trial.{study,number,storage}``.
With an RDB storage the job opens the study with the configured pruner
(``hparams_search.pruner``) and reports, after every epoch, the running mean of the
monitored validation value (``trainer.monitor``: robust, clean or their mean macro F1) over the
folds so far (finished folds count with their best value, the current one with this epoch's) at
step ``folds_done * epochs + epoch``. The trial's value is the run's ``objective``. When the pruner says
stop it raises ``optuna.TrialPruned``; the sweeper records the trial as PRUNED.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from docclassify.sweep.experiment_yaml import experiment_yaml
from docclassify.sweep.study import EXPERIMENT_FILE, TRIAL_FILE
from docclassify.tracking.callbacks import Callback
from docclassify.utils.io import atomic_write_json, atomic_write_text
from docclassify.utils.redact import is_redacted, redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialInfo:
    """Which Optuna trial this run is (W&B groups runs by ``study``)."""

    study: str
    number: int
    storage: str | None


def trial_info(cfg: DictConfig) -> TrialInfo | None:
    """The trial this run is, from ``hparams_search.trial`` (set by the sweeper), else None."""
    trial = OmegaConf.select(cfg, "hparams_search.trial", default=None)
    if trial is None or trial.get("number") is None:
        return None
    storage = trial.get("storage")
    return TrialInfo(str(trial.study), int(trial.number), trial_storage(storage) if storage is not None else None)


def sweeper_storage() -> str | None:
    """``hydra.sweeper.storage`` of this job (as the sweeper uses it), when Hydra runs a sweep."""
    from hydra.core.hydra_config import HydraConfig

    from docclassify.sweep.study import prepare_storage

    if not HydraConfig.initialized():
        return None
    storage = OmegaConf.select(HydraConfig.get(), "sweeper.storage", default=None)
    return prepare_storage(storage) if isinstance(storage, str) else None


def trial_storage(storage: str) -> str | None:
    """The storage URL the trial connects to. The sweeper passes it with the password masked
    (it is saved in the job's configs); the real URL is the job's own ``hydra.sweeper.storage``.
    None (no reports, no pruning) when that is not available, e.g. a trial's run resumed alone."""
    storage = str(storage)
    if not is_redacted(storage):
        return storage
    real = sweeper_storage()
    if real is not None and redact(real) == storage:
        return real
    log.warning("hparams_search.trial.storage=%s: its password is masked and this job's hydra.sweeper.storage "
                "does not hold it, so this run cannot report to its trial (no pruning)", storage)
    return None


def build_pruner(spec: Any):
    """An Optuna pruner from ``hparams_search.pruner`` (``_target_`` + kwargs); null = never prune."""
    import optuna

    from docclassify.sweep.study import instantiate_trusted

    if spec is None:
        return optuna.pruners.NopPruner()
    pruner = instantiate_trusted(spec, ("optuna.pruners.*",))
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise TypeError(f"hparams_search.pruner: {type(pruner).__name__} is not an optuna pruner")
    return pruner


def open_trial(info: TrialInfo, pruner):
    """The live ``optuna.Trial`` of ``info`` in its storage (the sweeper asked it; this process reports to it)."""
    import optuna

    storage = optuna.storages.get_storage(info.storage)
    study = optuna.load_study(study_name=info.study, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(info.study),
                                                               info.number)
    return optuna.trial.Trial(study, trial_id)


class OptunaTrialCallback(Callback):
    """Reports to the trial, prunes, and writes sweep_trial.json (timings) into the run dir."""

    def __init__(self, info: TrialInfo, run_dir: Path, epochs: int, trial=None):
        self.info, self.run_dir, self.epochs, self.trial = info, Path(run_dir), int(epochs), trial
        self.t_start = time.time()
        self.train_s = 0.0
        self.fold_start: float | None = None
        self.done_f1: list[float] = []

    def on_fold_start(self, fold: int, info: dict[str, Any]) -> None:
        self.fold_start = time.time()

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        if self.trial is None:
            return
        import optuna

        scores = [*self.done_f1, float(metrics["val_monitored"])]
        value, step = sum(scores) / len(scores), len(self.done_f1) * self.epochs + epoch
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.train_s += time.time() - (self.fold_start or self.t_start)
            self._write("pruned", value, step=step)
            raise optuna.TrialPruned(f"pruned at fold {fold} epoch {epoch + 1}/{self.epochs} (running "
                                     f"{metrics.get('monitor', 'val')} macro F1 {value:.4f}, step {step})")

    def on_fold_end(self, fold: int, outcome: dict[str, Any]) -> None:
        self.train_s += float(outcome.get("seconds", time.time() - (self.fold_start or self.t_start)))
        self.fold_start = None
        self.done_f1.append(float(outcome["best_monitored"]))

    def on_run_end(self, results: dict[str, Any]) -> None:
        self._write("complete", float(results["objective"]))

    def _write(self, state: str, value: float, **extra: Any) -> None:
        job_s = time.time() - self.t_start
        overhead = job_s - self.train_s
        log.info("trial %d of %s %s: %.2f s in the job, %.2f s training, %.2f s overhead outside training",
                 self.info.number, self.info.study, state, job_s, self.train_s, overhead)
        atomic_write_json(self.run_dir / TRIAL_FILE, {
            "study": self.info.study, "number": self.info.number, "state": state, "value": value,
            "job_s": round(job_s, 3), "train_s": round(self.train_s, 3), "overhead_s": round(overhead, 3), **extra,
        })


def build_trial_callback(cfg: DictConfig, info: TrialInfo, run_dir: Path) -> OptunaTrialCallback:
    """Write the run's experiment.yaml and connect to the trial (when its storage is reachable)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = dict(HydraConfig.get().runtime.choices)
        note = (f"Trial {info.number} of Optuna study {info.study}, written by the trial job.\n"
                "Reproduce: python -m docclassify.train experiment=<this file's name> "
                "(searchpath or conf/experiment/)")
        name = f"{info.study}_trial{info.number}"
        atomic_write_text(Path(run_dir) / EXPERIMENT_FILE, experiment_yaml(cfg, choices, name, note))
    trial = None
    if info.storage is None:
        log.warning("trial %d: the study has no storage the job can reach (hydra.sweeper.storage), so no "
                    "per-epoch reports and no pruning", info.number)
    else:
        trial = open_trial(info, build_pruner(OmegaConf.select(cfg, "hparams_search.pruner", default=None)))
    return OptunaTrialCallback(info, run_dir, int(cfg.trainer.epochs), trial)
