"""Config node of the docclassify Optuna sweeper (``hydra/sweeper=docclassify_optuna``)."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class DocclassifyOptunaSweeperConf(OptunaSweeperConf):
    """Every key of the plugin's ``optuna`` sweeper, plus ``enqueue_trials``.

    ``max_failure_rate`` here is a budget over the invocation, not a per-batch rate: the sweep
    stops once more than ``max_failure_rate * n_trials`` trials have failed (pruned trials are
    not failures). With the plugin's per-batch rule and one trial per batch, any rate below 1
    stopped the sweep at the first crash.
    """

    _target_: str = "hydra_plugins.docclassify_sweeper.sweeper.DocclassifyOptunaSweeper"
    # One trial a batch: the basic launcher runs a batch one job after another, and TPE
    # samples a batch's trials without seeing each other's results.
    n_jobs: int = 1
    # Trials to run first, in order, each a {param: value} map over keys of the search space
    # (e.g. the current best recipe). Missing keys are sampled; an entry whose values an
    # earlier trial of the study already used is not queued again.
    enqueue_trials: list[dict[str, Any]] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="docclassify_optuna", node=DocclassifyOptunaSweeperConf,
                             provider="docclassify")
