"""The sweep loop of the docclassify Optuna sweeper.

Same search-space handling as hydra-optuna-sweeper (``hydra.sweeper.params`` plus sweep
overrides on the command line), with what the plugin lacks:

- every trial job gets its identity (``hparams_search.trial.{study,number,storage}``), so the
  job can report per-epoch values to its own Optuna trial and ask the pruner;
- a job that raised ``optuna.TrialPruned`` is told PRUNED (the plugin would tell FAIL);
- ``max_failure_rate`` is a failure budget over the invocation (see config.py);
- ``enqueue_trials`` runs given parameter sets first;
- after every batch ``trials.csv`` (all trials of the study) is written, and at the end the
  best trial is exported as an experiment config plus a printed override list.

It runs on both Optuna stacks (docs/tuning.md#two-optuna-stacks): hydra-optuna-sweeper 1.3 +
optuna 2.10 and hydra-optuna-sweeper 1.4 + optuna 4.9-5.x. It subclasses nothing of the
plugin; it uses Optuna's public ask-and-tell API and, from the plugin, only what both lines
share: the config node (config.py), the sampler configs and ``create_params_from_overrides``
(the override -> distribution parsing, whose distribution classes follow the Optuna version).
"""

from __future__ import annotations

import functools
import logging
import math
import shlex
from collections.abc import MutableSequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from docclassify.sweep import study as S
from docclassify.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# Where a sampler's _target_ may point (hydra 1.4 instantiates only whitelisted targets).
SAMPLER_TARGETS = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


def _save_yaml(content: dict, path: Path) -> None:
    """Atomically: sweep processes sharing one sweep dir may write it at the same time."""
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(content)))


def build_sampler(sampler: Any, **kwargs: Any) -> Any:
    """The Optuna sampler of ``hydra.sweeper.sampler``: hydra 1.3 instantiates the sweeper's
    nodes recursively (an object arrives), hydra 1.4 does not (a config arrives); GridSampler
    comes as a partial either way (its search space is known only at sweep time)."""
    if OmegaConf.is_config(sampler) or isinstance(sampler, dict):
        return S.instantiate_trusted(sampler, SAMPLER_TARGETS, **kwargs)
    return sampler


def grid_choices(distribution: Any) -> list:
    """The GridSampler values of a discrete distribution, both ends included (Optuna 2.x and 3+ classes)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return list(distribution.choices)
    step = getattr(distribution, "step", None) or getattr(distribution, "q", None)
    if step is None or getattr(distribution, "log", False):
        raise ValueError(f"GridSampler only supports discrete distributions, got {distribution}")
    n = round((distribution.high - distribution.low) / step)
    values = [distribution.low + i * step for i in range(n + 1)]
    return [int(v) for v in values] if isinstance(distribution.low, int) and isinstance(step, int) else values


def directions_of(direction: Any) -> list[str]:
    """``hydra.sweeper.direction`` (a name, a Direction enum or a list of either) as names."""
    items = list(direction) if isinstance(direction, MutableSequence) or OmegaConf.is_list(direction) else [direction]
    return [d if isinstance(d, str) else d.name for d in items]


class DocclassifySweeperImpl:
    def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, params: DictConfig | None,
                 custom_search_space: str | None = None, enqueue_trials: Any = None) -> None:
        self.sampler_spec = sampler
        self.sampler = build_sampler(sampler)
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = int(n_trials), int(n_jobs), float(max_failure_rate)
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: expected a value in [0, 1]")
        self.params = params
        self.custom_search_space = None
        if custom_search_space:  # Callable[[DictConfig, optuna.Trial], None], as the plugin's key
            from hydra.utils import get_method

            self.custom_search_space = get_method(custom_search_space)
        self.enqueue_trials = [dict(e) for e in (OmegaConf.to_container(enqueue_trials, resolve=True)
                                                 if OmegaConf.is_config(enqueue_trials) else enqueue_trials or [])]
        self.job_idx = 0
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.job_idx = 0
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def _search_space(self, arguments: list[str]) -> tuple[dict, dict, list[str]]:
        """(distributions, fixed params, fixed overrides) from hydra.sweeper.params and the command line.

        The plugin's parser returns (distributions, fixed) on the 1.3 line and adds the delete
        overrides (``~key``, passed through as they are) on the 1.4 line."""
        params_conf = [f"{k!s}={v}" for k, v in (self.params or {}).items()]
        params_conf.extend(arguments)
        parsed = create_params_from_overrides(params_conf)
        distributions, fixed_params = dict(parsed[0]), dict(parsed[1])
        fixed_overrides = list(parsed[2]) if len(parsed) > 2 else []
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: grid_choices(d) for name, d in distributions.items() if name not in fixed_params}
            self.sampler = self.sampler(grid)
            n_points = math.prod(len(v) for v in grid.values())
            self.n_trials = min(self.n_trials, n_points)
            log.info("Updating num of trials to %d due to using GridSampler.", self.n_trials)
        for name in fixed_params:  # a plain value on the command line pins that parameter
            distributions.pop(name, None)
        return distributions, fixed_params, fixed_overrides

    def _ask(self, study: optuna.Study, distributions: dict, fixed_params: dict, fixed_overrides: list[str],
             storage: Any) -> tuple[optuna.Trial, tuple[str, ...]]:
        """A new trial of ``study`` (an enqueued one first) and its job's overrides."""
        trial = study.ask(fixed_distributions=distributions)
        for name, value in fixed_params.items():  # kept on the trial: the best trial's override list
            trial.set_user_attr(name, value)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        overlap = trial.params.keys() & trial.user_attrs.keys()
        if overlap:
            raise ValueError(f"Overlapping fixed parameters and search space parameters found: {sorted(overlap)}")
        params = {**trial.params, **fixed_params}
        overrides = (*(f"{name}={value}" for name, value in params.items()), *fixed_overrides,
                     *S.trial_overrides(study.study_name, trial.number, storage))
        return trial, overrides

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        distributions, fixed_params, fixed_overrides = self._search_space(arguments)
        directions = directions_of(self.direction)
        storage = S.prepare_storage(self.storage)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=self.sampler,
                                        directions=directions, load_if_exists=True)
        except RuntimeError as exc:  # a storage of the other Optuna stack (docs/tuning.md)
            advice = S.storage_version_advice(exc, storage)
            if advice is None:
                raise
            raise S.StorageVersionError(advice) from exc
        n_before = self._reseed_for_resume(study)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        queued = S.enqueue_missing(study, self.enqueue_trials, distributions)
        log.info("Study %s (%d trials so far) in %s; sampler %s, directions %s, %d trial(s) queued; optuna %s",
                 study.study_name, n_before, S.redact(storage), type(study.sampler).__name__, directions, queued,
                 optuna.__version__)
        if storage is None:
            log.warning("hydra.sweeper.storage is null: the study lives in memory, trials cannot report to "
                        "it (no pruning) and it is lost when the sweep ends")

        failures: list[BaseException] = []
        n_to_go = self.n_trials
        while n_to_go > 0:
            batch = min(n_to_go, max(1, int(self.n_jobs)))
            asked = [self._ask(study, distributions, fixed_params, fixed_overrides, storage) for _ in range(batch)]
            trials, overrides = [a[0] for a in asked], [a[1] for a in asked]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException as exc:
                # The launcher itself raised (a trial's overrides do not compose, Ctrl-C, a
                # cluster error): its trials failed rather than stay RUNNING in the study forever.
                # Stopped by a signal (SIGTERM, Ctrl-C), they run again first in the next invocation.
                interrupted = S.interrupt_of(exc)
                if interrupted:
                    S.requeue_interrupted(study, trials, interrupted)
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL)
                S.write_summary(study, sweep_dir)
                if not isinstance(exc, Exception):
                    raise
                log.warning("Trial(s) %s failed to launch: %s: %s", [t.number for t in trials],
                            type(exc).__name__, exc)
                failures.extend([exc] * len(trials))
                returns = []
            self.job_idx += len(trials)
            for trial, ret in zip(trials, returns):
                error = self._tell(study, trial, ret, len(directions), storage)
                if error is not None:
                    failures.append(error)
            S.write_summary(study, sweep_dir)
            if len(failures) > self.max_failure_rate * self.n_trials:
                log.error("%d trial(s) failed, more than max_failure_rate=%s of n_trials=%d: stopping the sweep",
                          len(failures), self.max_failure_rate, self.n_trials)
                raise failures[-1]  # the job's exception, with its traceback
            n_to_go -= batch

        table = S.write_summary(study, sweep_dir)
        log.info("Trials of study %s (%s):\n%s", study.study_name, sweep_dir / S.SUMMARY_FILE,
                 table.to_string(index=False) if len(table) else "(none)")
        self._write_results(study, directions, sweep_dir)
        # the study's history and parameter importances as PNGs in the sweep dir (and to W&B)
        from docclassify.sweep.plots import write_study_plots
        from docclassify.tracking.wandb_tracker import log_study

        log_study(self.config, sweep_dir, study.study_name, write_study_plots(study, sweep_dir), table)

    def _reseed_for_resume(self, study: optuna.Study) -> int:
        """A resumed study gets its sampler seeded with seed + trials so far (returned).

        With the configured seed as is, a rerun's random start-up samples would repeat the
        first invocation's trials one for one.
        """
        spec = self.config.hydra.sweeper.get("sampler")
        n_done = len(study.get_trials(deepcopy=False))
        if n_done == 0 or spec is None or spec.get("seed") is None or spec.get("_partial_"):
            return n_done
        study.sampler = S.instantiate_trusted(spec, SAMPLER_TARGETS, seed=int(spec.seed) + n_done)
        log.info("Resuming study %s at trial %d: sampler seed %d + %d", study.study_name, n_done, int(spec.seed),
                 n_done)
        return n_done

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n_objectives: int,
              storage: Any) -> Exception | None:
        """Record the job's outcome on its trial; the error when the trial failed."""
        run_dir = S.job_output_dir(ret)
        if run_dir is not None:
            S.record_job_info(trial, run_dir)
        if ret.status == JobStatus.FAILED and isinstance(ret._return_value, optuna.TrialPruned):
            S.sync_reports(trial, storage)  # the pruned trial's value is its last report
            study.tell(trial, state=TrialState.PRUNED)
            log.info("Trial %d pruned: %s", trial.number, ret._return_value)
            return None
        try:
            raw = ret.return_value  # raises the job's exception when it failed
            values = [float(raw)] if n_objectives == 1 else [float(v) for v in raw]
            if len(values) != n_objectives:
                raise ValueError(f"{len(values)} objective values returned, {n_objectives} directions configured")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"objective value {values} is not finite")
        except Exception as exc:  # noqa: BLE001 - any job error is this trial's failure, not the sweep's
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            return exc
        try:
            study.tell(trial, values=values)
        except RuntimeError as exc:  # optuna 3+ GridSampler: the grid is used up (the plugin ignores it too)
            if "Study.stop" not in str(exc):
                raise
        log.info("Trial %d complete: value %s", trial.number, values if n_objectives > 1 else values[0])
        return None

    def _write_results(self, study: optuna.Study, directions: list[str], sweep_dir: Path) -> None:
        results_path = sweep_dir / "optimization_results.yaml"
        if len(directions) > 1:
            front = [{"params": t.params, "values": t.values} for t in study.best_trials]
            _save_yaml({"name": "optuna", "solutions": front}, results_path)
            log.info("Number of Pareto solutions: %d", len(front))
            return
        best = S.best_trial(study)
        if best is None:
            log.warning("No completed trial in study %s: nothing to export", study.study_name)
            _save_yaml({"name": "optuna", "best_params": None, "best_value": None}, results_path)
            return
        _save_yaml({"name": "optuna", "best_params": best.params, "best_value": best.value,
                    "best_trial": best.number}, results_path)
        log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
        overrides = S.reproduce_overrides(best)
        exported = S.export_best_experiment(best, sweep_dir)
        lines = ["Reproduce the best trial with"]
        if exported is not None:
            lines.append(f"  python -m docclassify.train {shlex.quote(f'hydra.searchpath=[file://{sweep_dir.resolve()}]')}"
                         f" experiment={S.BEST_EXPERIMENT}")
            lines.append(f"  (or copy {exported} to conf/experiment/ and use experiment=<its name>), or with")
        lines.append("  python -m docclassify.train " + " ".join(shlex.quote(o) for o in overrides))
        log.info("\n".join(lines))
