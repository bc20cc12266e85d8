"""Typed schemas of the trainer / data / folds / logger config groups (Hydra structured configs).

Each YAML option of these groups starts its defaults list with its schema, e.g.
``conf/trainer/default.yaml``::

    defaults:
      - /schema/trainer/default@_here_
      - _self_

so the YAML values are merged into a typed dataclass. A key the schema does not declare
(``trainer.epoch=5``, or a typo inside an experiment YAML) and a value of the wrong type
(``trainer.epochs=abc``) then fail while Hydra composes the config, with Hydra's message,
before any data is read. Adding a key to one of these YAML files means adding the field here.

The schemas live in the ``schema/<group>`` config group of Hydra's ConfigStore; importing
this module registers them (``docclassify.config`` imports it, so every entrypoint that
locates ``conf/`` through it gets them). Values with a fixed set of choices are plain
strings (code compares them with strings); ``check_config`` rejects a wrong one (and a key
added with ``+``) before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SCHEMA_GROUP = "schema"


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    lr: float = 1.0e-3
    optimizer: str = "adamw"
    device: str = "auto"
    amp: str = "none"
    grad_clip: float | None = None
    accum_steps: int = 1
    early_stopping_patience: int | None = None
    skip_nonfinite: bool = False
    deterministic: bool = False
    channels_last: bool = False
    compile: bool = False
    log_every_n_steps: int = 0
    lr_scale: str = "none"
    sync_bn: bool = False


@dataclass
class DataCommon:
    """Keys every data source has (decoding, caching, loading)."""

    name: str = MISSING
    use_pretrained: bool = True
    img_size: int | None = None
    resize: str = "pad"
    pad_value: int = 0
    cache: bool = True
    num_workers: int | None = None
    on_bad_image: str = "error"


@dataclass
class FolderData(DataCommon):
    """Keys shared by the sources that read a folder on disk (competition, imagefolder)."""

    root: str = MISSING
    train_dir: str = "train"
    test_dir: str = "test"
    test_labels: str | None = None


@dataclass
class CompetitionData(FolderData):
    name: str = "competition"
    train_csv: str = "train.csv"
    meta_csv: str = "meta.csv"
    sample_submission: str | None = "sample_submission.csv"


@dataclass
class ImageFolderData(FolderData):
    name: str = "imagefolder"


@dataclass
class SyntheticData(DataCommon):
    name: str = "synthetic"
    n_train_per_class: int = 30
    n_test_per_class: int = 20
    long_side: int = 256
    generator_seed: int = 0


@dataclass
class FoldsConfig:
    n: int = 5
    # A list of fold indices, or one int (folds_to_run accepts both and validates the range).
    run: Any | None = None
    holdout_fraction: float = 0.2


@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class WandbLogger:
    name: str = "wandb"
    project: str = "docclassify"
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


# (group, option) -> schema. The option names match the YAML files that use them.
SCHEMAS: dict[tuple[str, str], Any] = {
    ("trainer", "default"): TrainerConfig,
    ("data", "competition"): CompetitionData,
    ("data", "imagefolder"): ImageFolderData,
    ("data", "synthetic"): SyntheticData,
    ("folds", "kfold"): FoldsConfig,
    ("logger", "none"): NoLogger,
    ("logger", "wandb"): WandbLogger,
}

# Keys whose value must be one of a few strings (checked before any work by check_config).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.resize": ("pad", "stretch"),
    "data.on_bad_image": ("error", "skip"),
    "trainer.lr_scale": ("none", "linear", "sqrt"),
}


def register() -> None:
    """Store every schema as ``schema/<group>/<option>`` (idempotent)."""
    cs = ConfigStore.instance()
    for (group, option), node in SCHEMAS.items():
        cs.store(group=f"{SCHEMA_GROUP}/{group}", name=option, node=node)


def _schema_of(cfg, group: str):
    options = {option: node for (g, option), node in SCHEMAS.items() if g == group}
    if len(options) == 1:
        return next(iter(options.values()))
    return options.get(str(cfg[group].get("name")))


def check_config(cfg) -> None:
    """Checks composition cannot make: a key added with ``+group.key=...`` (struct mode lets it in,
    no code would read it) and a choice-valued key holding something else. Raises ValueError
    naming the key; run before any work."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    for group in sorted({g for g, _ in SCHEMAS}):
        schema = _schema_of(cfg, group) if group in cfg else None
        if schema is None:
            continue
        extra = sorted(set(cfg[group]) - {f.name for f in fields(schema)})
        if extra:
            raise ValueError(f"{', '.join(f'{group}.{k}' for k in extra)}: not a key of {schema.__name__} "
                             f"(docclassify/config_schema.py); nothing reads it. Check the spelling.")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and str(value) not in allowed:
            raise ValueError(f"{key}={value!r}: expected one of {', '.join(allowed)}")


register()
