"""The Hydra sweeper plugin class; the sweep itself lives in ``_impl`` (imported lazily, so
Hydra's plugin scan does not import Optuna)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class DocclassifyOptunaSweeper(Sweeper):
    # The keys of hydra.sweeper: those of the plugin's node on either line (the 1.3 line's node
    # also has the deprecated search_space, the 1.4 line's does not), plus enqueue_trials.
    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: DictConfig | None,
                 custom_search_space: str | None = None, search_space: DictConfig | None = None,
                 enqueue_trials: list[Any] | None = None) -> None:
        from ._impl import DocclassifySweeperImpl

        if search_space:
            raise ValueError("hydra.sweeper.search_space is not supported (deprecated in hydra-optuna-sweeper 1.2, "
                             "gone in 1.4): give the search space as hydra.sweeper.params, e.g. "
                             "'trainer.lr: tag(log, interval(1e-5, 1e-2))'")
        self.sweeper = DocclassifySweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                              max_failure_rate, params, custom_search_space=custom_search_space,
                                              enqueue_trials=enqueue_trials)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
