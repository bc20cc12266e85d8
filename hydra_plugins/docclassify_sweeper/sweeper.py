"""The Hydra sweeper plugin class; the sweep itself lives in ``_impl`` (imported lazily, so
Hydra's plugin scan does not import Optuna)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class DocclassifyOptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, search_space: DictConfig | None,
                 custom_search_space: str | None, params: DictConfig | None,
                 enqueue_trials: list[Any] | None = None) -> None:
        from ._impl import DocclassifySweeperImpl

        self.sweeper = DocclassifySweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                              max_failure_rate, search_space, custom_search_space, params,
                                              enqueue_trials=enqueue_trials)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
