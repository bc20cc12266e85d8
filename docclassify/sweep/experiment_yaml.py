"""A run's config as an ``experiment`` config: ``python -m docclassify.train experiment=<it>``
composes the same training config again.

The file selects the run's options of every training group (``override /model: ...``) and
pins the resolved values of every training section, so neither the pipeline preset nor the
``hparams_search`` config the trial ran under is needed to reproduce it. Run-time choices
(logger, paths, Hydra, the sweep itself) are left to the command line.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from docclassify.utils.redact import redact

# Top-level keys / groups that describe where and how a run is observed, not what it trains.
NOT_PINNED = ("hydra", "paths", "logger", "hparams_search", "experiment", "task_name", "resume")


def experiment_yaml(cfg: DictConfig, choices: Mapping[str, str | None], name: str, note: str = "") -> str:
    """The text of an experiment config (``# @package _global_``) named ``name`` reproducing ``cfg``."""
    groups = [(g, c) for g, c in choices.items() if c is not None and "/" not in g and g not in NOT_PINNED]
    values = {k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k])
              for k in cfg if k not in NOT_PINNED}
    values["experiment"] = name
    lines = ["# @package _global_"]
    lines += [f"# {line}" for line in note.splitlines()]
    lines.append("defaults:")
    lines += [f"  - override /{group}: {choice}" for group, choice in groups]
    # Masked: a URL's password (e.g. in a data path) must not travel with a shared experiment file.
    return redact("\n".join(lines) + "\n" + OmegaConf.to_yaml(OmegaConf.create(values)))
