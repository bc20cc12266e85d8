"""Typed schemas of every config group and of the primary configs (Hydra structured configs).

Each YAML option starts its defaults list with its schema, e.g. ``conf/trainer/default.yaml``::

    defaults:
      - /schema/trainer/default@_here_
      - _self_

so its values are merged into a typed dataclass. A key the schema does not declare
(``trainer.epoch=5``, or a typo inside an experiment YAML) and a value of the wrong type
(``trainer.epochs=abc``) fail while Hydra composes the config, before any data is read.
``regularization.ema=off`` is the boolean false (OmegaConf's booleans accept on/off, yes/no).

Each field may carry its allowed values in its metadata: ``choices`` (a fixed set of strings) or
a numeric range (``ge``/``gt``/``le``/``lt``). :func:`check_config` checks them, with keys added
with ``+`` and a few relations between keys, before any work; every error names the key, the
value and what is allowed. Adding a key to a YAML file means adding its field here.

The schemas live in the ``schema/<group>`` config group of Hydra's ConfigStore (hidden from
``--help``); importing this module registers them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from docclassify.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_GROUP = "schema"


class ConfigError(UserError):
    """A config value outside what its key allows (the message names the key, value and fix)."""


def key(default: Any = MISSING, *, choices: tuple[str, ...] | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None, hint: str | None = None,
        factory=None):
    """A schema field with its allowed values (checked by check_config) and a hint for the fix."""
    meta = {k: v for k, v in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, hint=hint).items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------ trainer
AMP = ("none", "auto", "bf16", "fp16")
LR_SCALE = ("none", "linear", "sqrt")
# What decides the best epoch, early stopping, pruning and the sweep objective: auto = robust
# when validation has a robust view (validation=robust|both), else clean.
MONITOR = ("auto", "robust", "clean", "mean")


@dataclass
class TrainerConfig:
    epochs: int = key(10, ge=1)
    batch_size: int = key(32, ge=1)
    eval_batch_size: int | None = key(None, ge=1)
    lr: float = key(1.0e-3, ge=0.0)
    optimizer: str = "adamw"
    device: str = "auto"
    amp: str = key("none", choices=AMP)
    grad_clip: float | None = key(None, gt=0.0)
    accum_steps: int = key(1, ge=1)
    early_stopping_patience: int | None = key(None, ge=1)
    monitor: str = key("auto", choices=MONITOR)
    skip_nonfinite: bool = False
    deterministic: bool = False
    channels_last: bool = False
    compile: bool = False
    log_every_n_steps: int = key(0, ge=0)
    lr_scale: str = key("none", choices=LR_SCALE)
    sync_bn: bool = False


# ------------------------------------------------------------------------------------------ data
@dataclass
class DataCommon:
    """Keys every data source has (decoding, caching, loading)."""

    name: str = MISSING
    use_pretrained: bool = True
    img_size: int | None = key(None, ge=16, le=4096)
    resize: str = key("pad", choices=("pad", "stretch"))
    pad_value: int = key(0, ge=0, le=255)
    cache: bool = True
    num_workers: int | None = key(None, ge=0)
    on_bad_image: str = key("error", choices=("error", "skip"))


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
    n_train_per_class: int = key(30, ge=2)
    n_test_per_class: int = key(20, ge=0)
    long_side: int = key(256, ge=32, le=4096)
    generator_seed: int = 0
    # Not a key of the synthetic data: declared so that `data.root=DIR` without `data=...` gets
    # an error naming data=competition / data=imagefolder instead of Hydra's "use +data.root".
    root: str | None = None


# ------------------------------------------------------------------------------------------ model
@dataclass
class ModelConfig:
    name: str = MISSING
    timm_name: str = MISSING
    img_size: int = key(224, ge=16, le=4096)
    pretrained: bool = True
    weights: str | None = None


# ------------------------------------------------------------------------------------------ augment
@dataclass
class AugmentConfig:
    name: str = MISSING
    rotate_limit: float = key(5.0, ge=0.0, le=180.0)
    scale_limit: float = key(0.08, ge=0.0, lt=1.0)
    shift_limit: float = key(0.04, ge=0.0, le=0.5)
    crop_p: float = key(0.3, ge=0.0, le=1.0)
    crop_scale: float = key(0.85, gt=0.0, le=1.0)
    color_jitter: float = key(0.15, ge=0.0, le=1.0)
    hflip: bool = False
    vflip: bool = False
    advanced_p_start: float = key(0.0, ge=0.0, le=1.0)
    advanced_p_end: float = key(0.0, ge=0.0, le=1.0)
    # Old names of advanced_p_start / advanced_p_end (still accepted; they win when given).
    hard_p_start: float | None = key(None, ge=0.0, le=1.0)
    hard_p_end: float | None = key(None, ge=0.0, le=1.0)
    mixup_alpha: float = key(0.0, ge=0.0)
    cutmix_alpha: float = key(0.0, ge=0.0)
    mixup_prob: float = key(1.0, ge=0.0, le=1.0)
    mixup_switch_prob: float = key(0.5, ge=0.0, le=1.0)
    mixup_mode: str = key("batch", choices=("batch", "pair", "elem"))
    mixup_off_epoch: int | None = key(None, ge=0)


ALIASES = {"augment.hard_p_start": "augment.advanced_p_start", "augment.hard_p_end": "augment.advanced_p_end"}


# ------------------------------------------------------------------------------------------ regularization
@dataclass
class RegularizationConfig:
    label_smoothing: float = key(0.0, ge=0.0, lt=1.0)
    weight_decay: float = key(0.0, ge=0.0)
    drop_rate: float = key(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = key(0.0, ge=0.0, lt=1.0)
    ema: bool = False
    ema_decay: float = key(0.9998, gt=0.0, lt=1.0)
    ema_warmup: bool = True
    layer_decay: float | None = key(None, gt=0.0, le=1.0)


# ------------------------------------------------------------------------------------------ schedule
@dataclass
class ConstantSchedule:
    name: str = key("constant", choices=("constant",))
    warmup_epochs: int = key(0, ge=0)
    warmup_lr: float = key(1.0e-6, ge=0.0)


@dataclass
class CosineSchedule(ConstantSchedule):
    name: str = key("cosine", choices=("cosine",))
    min_lr: float = key(1.0e-6, ge=0.0)


# ------------------------------------------------------------------------------------------ validation
@dataclass
class DistortProfile:
    """How a robust validation copy is distorted (data/distort.py). Each distortion is applied with
    its probability ``*_p``; strengths are drawn uniformly up to the given value or within the
    given [low, high]. Sizes are fractions of the image's long side, so a profile means the
    same at any resolution. Defaults follow the reference competition's published test-set
    description (quarter turns, flips, skew up to tens of degrees, crops, blur, brighter,
    noisier, low JPEG quality), not any one data set."""

    rot90_p: float = key(0.5, ge=0.0, le=1.0)          # exact quarter turn (90/180/270, uniform)
    flip_p: float = key(0.25, ge=0.0, le=1.0)          # left-right mirror
    angle_p: float = key(0.7, ge=0.0, le=1.0)          # small-angle rotation ...
    angle: float = key(25.0, ge=0.0, le=180.0)         # ... uniform in +-angle degrees
    crop_p: float = key(0.3, ge=0.0, le=1.0)           # crop ...
    crop: float = key(0.1, ge=0.0, lt=0.5)             # ... up to this share of each side
    perspective_p: float = key(0.3, ge=0.0, le=1.0)    # photographed page ...
    perspective: float = key(0.06, ge=0.0, lt=0.5)     # ... corners moved up to this share
    blur_p: float = key(0.5, ge=0.0, le=1.0)           # Gaussian blur ...
    blur_sigma: float = key(0.004, ge=0.0, le=0.1)     # ... sigma up to this share of the long side
    color_p: float = key(0.8, ge=0.0, le=1.0)          # brightness / contrast change
    brightness: list[float] = key(factory=lambda: [-0.1, 0.25])  # additive, share of full scale
    contrast: list[float] = key(factory=lambda: [0.7, 1.3])      # multiplicative
    noise_p: float = key(0.5, ge=0.0, le=1.0)          # Gaussian sensor noise ...
    noise_std: float = key(0.08, ge=0.0, le=1.0)       # ... std up to this share of full scale
    jpeg_p: float = key(0.5, ge=0.0, le=1.0)           # re-encoding ...
    jpeg_quality: list[int] = key(factory=lambda: [30, 90])      # ... quality in [low, high]
    occlusion_p: float = key(0.2, ge=0.0, le=1.0)      # an occluding blob ...
    occlusion_size: float = key(0.15, ge=0.0, le=0.5)  # ... up to this share of the long side


@dataclass
class CleanValidation:
    name: str = key("clean", choices=("clean",))


@dataclass
class RobustValidation:
    name: str = key("both", choices=("robust", "both"))
    # Distorted copies of every validation image (each a pure function of seed, image ID, copy).
    copies: int = key(2, ge=1, le=16)
    # Seed of the copies; not the run's seed, so every run and trial scores the same pixels.
    seed: int = 0
    # A DistortProfile (its keys, e.g. validation.distort.angle=10) or "auto": fitted from the
    # measured train-vs-test shift of the data's test images (docclassify.shift).
    distort: Any = field(default_factory=lambda: OmegaConf.structured(DistortProfile))


# ------------------------------------------------------------------------------------------ folds, logger, ensemble, paths
@dataclass
class FoldsConfig:
    n: int = key(5, ge=2, hint="for one hold-out split train one fold of K, e.g. folds.n=5 folds.run=[0]")
    # A list of fold indices, or one int (folds_to_run accepts both and validates the range).
    run: Any | None = None


@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class WandbLogger:
    name: str = "wandb"
    project: str = "docclassify"
    entity: str | None = None
    mode: str | None = key(None, choices=("online", "offline", "disabled"))
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class EnsembleConfig:
    name: str = key(MISSING, choices=("none", "multi_model"))
    # fold -> model option name, or {model: NAME, img_size: S}
    fold_models: Any | None = None
    preset: Any = field(default_factory=dict)


@dataclass
class PathsConfig:
    cache_dir: str = MISSING
    output_dir: str = MISSING


# ------------------------------------------------------------------------------------------ hparams_search
@dataclass
class TrialRef:
    study: str | None = None
    number: int | None = None
    storage: str | None = None


@dataclass
class HparamsSearchConfig:
    pruner: Any | None = None  # an optuna pruner (_target_ + kwargs); null = never prune
    trial: TrialRef = field(default_factory=TrialRef)


# ------------------------------------------------------------------------------------------ inference
TTA_SETS = ("none", "flip", "rot90", "dihedral", "essential", "comprehensive")


@dataclass
class TTAConfig:
    name: str = key(MISSING, choices=TTA_SETS)
    average: str = key("prob", choices=("prob", "logit"))


@dataclass
class InferEnsemble:
    weights: str = key("equal", choices=("equal", "oof"))
    average: str = key("prob", choices=("prob", "logit"))


@dataclass
class InferData:
    root: str | None = None
    sample_submission: str | None = None
    test_dir: str | None = None
    test_labels: str | None = None
    cache: bool | None = None


# ------------------------------------------------------------------------------------------ primary configs
@dataclass
class TrainConfig:
    """Top level of ``conf/train.yaml``: every group plus the run's own keys."""

    task_name: str = "train"
    seed: int = 42
    resume: str | None = None
    pipeline: str | None = None
    experiment: str | None = None
    paths: Any = MISSING
    data: Any = MISSING
    model: Any = MISSING
    augment: Any = MISSING
    regularization: Any = MISSING
    schedule: Any = MISSING
    trainer: Any = MISSING
    folds: Any = MISSING
    logger: Any = MISSING
    ensemble: Any = MISSING
    validation: Any = MISSING
    hparams_search: Any = None


@dataclass
class InferConfig:
    """Top level of ``conf/infer.yaml``."""

    task_name: str = "infer"
    runs: Any = field(default_factory=list)
    top_k: int | None = key(None, ge=1)
    ensemble: InferEnsemble = field(default_factory=InferEnsemble)
    calibrate: bool = True
    oof_tta: bool = True
    output: str | None = None
    batch_size: int = key(64, ge=1)
    device: str = "auto"
    data: InferData = field(default_factory=InferData)
    paths: Any = MISSING
    tta: Any = MISSING


# (group, option) -> schema; a group whose options differ in keys maps each option.
SCHEMAS: dict[tuple[str, str], Any] = {
    ("trainer", "default"): TrainerConfig,
    ("data", "competition"): CompetitionData,
    ("data", "imagefolder"): ImageFolderData,
    ("data", "synthetic"): SyntheticData,
    ("model", "default"): ModelConfig,
    ("augment", "default"): AugmentConfig,
    ("regularization", "default"): RegularizationConfig,
    ("schedule", "cosine"): CosineSchedule,
    ("schedule", "constant"): ConstantSchedule,
    ("folds", "kfold"): FoldsConfig,
    ("logger", "none"): NoLogger,
    ("logger", "wandb"): WandbLogger,
    ("ensemble", "default"): EnsembleConfig,
    ("paths", "default"): PathsConfig,
    ("hparams_search", "default"): HparamsSearchConfig,
    ("tta", "default"): TTAConfig,
    ("validation", "clean"): CleanValidation,
    ("validation", "robust"): RobustValidation,
}
PRIMARY = {"train": TrainConfig, "infer": InferConfig}


def register() -> None:
    """Store every schema as ``schema/<group>/<option>`` and the primaries as ``schema/<name>`` (idempotent)."""
    cs = ConfigStore.instance()
    for (group, option), node in SCHEMAS.items():
        cs.store(group=f"{SCHEMA_GROUP}/{group}", name=option, node=node)
    for name, node in PRIMARY.items():
        cs.store(group=SCHEMA_GROUP, name=name, node=node)


# ------------------------------------------------------------------------------------------ checks
def _describe(meta: dict) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(meta["choices"])
    parts = [f">= {meta['ge']}" if "ge" in meta else "", f"> {meta['gt']}" if "gt" in meta else "",
             f"<= {meta['le']}" if "le" in meta else "", f"< {meta['lt']}" if "lt" in meta else ""]
    return "a number " + " and ".join(p for p in parts if p)


def _allowed(value: Any, meta: dict) -> bool:
    if "choices" in meta:
        return str(value) in meta["choices"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return all((("ge" not in meta) or value >= meta["ge"], ("gt" not in meta) or value > meta["gt"],
                ("le" not in meta) or value <= meta["le"], ("lt" not in meta) or value < meta["lt"]))


def schema_errors(node: DictConfig, path: str) -> list[str]:
    """Values of ``node`` (and its typed sub-nodes) outside their field's choices or range, and
    keys the schema does not declare (added with ``+``)."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    errors = [f"{path}.{k}: not a key of {schema.__name__}; nothing reads it. Check the spelling."
              for k in node if k not in fields]
    for name, f in fields.items():
        if name not in node or OmegaConf.is_missing(node, name) or OmegaConf.is_interpolation(node, name):
            continue
        value = node[name]
        if isinstance(value, DictConfig):
            errors += schema_errors(value, f"{path}.{name}")
        elif value is not None and f.metadata and not _allowed(value, f.metadata):
            hint = f" ({f.metadata['hint']})" if "hint" in f.metadata else ""
            errors.append(f"{path}.{name}={value!r}: expected {_describe(f.metadata)}{hint}")
    return errors


def distort_errors(validation: DictConfig) -> list[str]:
    """``validation.distort``: "auto" or a DistortProfile (typed here: it is an Any field)."""
    distort = validation.get("distort")
    if distort is None or distort == "auto":
        return []
    if not isinstance(distort, DictConfig):
        return [f"validation.distort={distort!r}: expected auto or a profile (validation.distort.<key>=...)"]
    try:
        profile = OmegaConf.merge(OmegaConf.structured(DistortProfile), distort)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's key/type errors, reported with the key
        return [f"validation.distort: {str(exc).splitlines()[0]} (keys: {', '.join(DistortProfile.__annotations__)})"]
    errors = schema_errors(profile, "validation.distort")
    for name, lo, hi in (("brightness", -1.0, 1.0), ("contrast", 0.0, 10.0), ("jpeg_quality", 1, 100)):
        pair = list(profile[name])
        if len(pair) != 2 or not lo <= pair[0] <= pair[1] <= hi:
            errors.append(f"validation.distort.{name}={pair}: expected [low, high] with {lo} <= low <= high <= {hi}")
    return errors


def relation_errors(cfg: DictConfig) -> list[str]:
    """Checks that involve more than one key."""
    errors = []
    validation = cfg.get("validation")
    if validation is not None:
        errors += distort_errors(validation)
        if validation.name == "clean" and cfg.trainer.monitor in ("robust", "mean"):
            errors.append(f"trainer.monitor={cfg.trainer.monitor}: validation=clean has no robust view; "
                          "use validation=both (or robust), or trainer.monitor=clean")
    if cfg.get("data") is not None and cfg.data.get("name") == "synthetic" and cfg.data.get("root") is not None:
        errors.append(f"data.root={cfg.data.root}: the default data=synthetic generates its own images and "
                      "reads no folder; add data=competition (train.csv, meta.csv, train/, test/) or "
                      "data=imagefolder (train/<class>/*.jpg) to train on your own data")
    return errors


def apply_aliases(cfg: DictConfig) -> None:
    """Old key names (``augment.hard_p_*``) set the new ones (``augment.advanced_p_*``)."""
    for old, new in ALIASES.items():
        value = OmegaConf.select(cfg, old)
        if value is not None:
            log.warning("%s is the old name of %s: using %s=%s", old, new, new, value)
            OmegaConf.update(cfg, new, value)
            OmegaConf.update(cfg, old, None)


def check_config(cfg: DictConfig) -> None:
    """Every choice and range, keys added with ``+``, relations between keys. Raises ConfigError
    listing every problem; run before any work."""
    apply_aliases(cfg)
    errors = []
    for name in cfg:
        if name == "hydra" or OmegaConf.is_interpolation(cfg, name):
            continue
        value = cfg[name]
        if isinstance(value, DictConfig):
            errors += schema_errors(value, str(name))
    errors += schema_errors_top(cfg)
    errors += relation_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))


def schema_errors_top(cfg: DictConfig) -> list[str]:
    """Top-level keys the primary schema does not declare (``+foo=1``)."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return []
    names = {f.name for f in dataclasses.fields(schema)} | {"hydra"}
    return [f"{k}: not a key of the {schema.__name__}; nothing reads it. Check the spelling."
            for k in cfg if k not in names]


register()
