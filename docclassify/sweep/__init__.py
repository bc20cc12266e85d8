"""Optuna sweep extras: pruning, best-config export, trial summaries.

The sweep runs in ``hydra_plugins/docclassify_sweeper`` (the Hydra sweeper); each trial is a
normal ``docclassify.train`` job that finds its Optuna trial through
``hparams_search.trial`` (``trial.py``). ``study.py`` holds the sweeper's helpers,
``export.py`` turns a run's config into an experiment config.
"""

from __future__ import annotations

from omegaconf import DictConfig

from docclassify.sweep.trial import TrialInfo, trial_info

__all__ = ["TrialInfo", "build_sweep_callbacks", "trial_info"]


def build_sweep_callbacks(cfg: DictConfig) -> list:
    """Callbacks a sweep trial needs (reporting to Optuna for pruning); none outside sweeps."""
    info = trial_info(cfg)
    if info is None:
        return []
    from docclassify.engine.resume import resolve_run_dir
    from docclassify.sweep.trial import build_trial_callback

    return [build_trial_callback(cfg, info, resolve_run_dir(cfg))]
