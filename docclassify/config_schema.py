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
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from docclassify.errors import DataError, UserError
from docclassify.utils.choices import (
    ADAPT_MODES,
    AMP,
    AVERAGES,
    DECISIONS,
    EXPORT_FORMATS,
    EXPORTERS,
    FIT_ON,
    LR_SCALE,
    MIXUP_MODES,
    MONITOR,
    ON_BAD_IMAGE,
    ORIENTATION_GROUPS,
    ORIENTATION_HEADS,
    PROFILERS,
    QUANTIZE,
    RESIZE,
    ROBUST_VALIDATIONS,
    SAMPLERS,
    SUBMIT,
    TRAIN_ENSEMBLES,
    TTA_SETS,
    WANDB_MODES,
    WEIGHT_MODES,
)

log = logging.getLogger(__name__)

SCHEMA_GROUP = "schema"
# Seeds are offset per fold, epoch and rank; numpy and scikit-learn take seeds below 2**32.
SEED_MAX = 2**31 - 1


class ConfigError(UserError):
    """A config value outside what its key allows (the message names the key, value and fix)."""


def key(default: Any = MISSING, *, choices: tuple[str, ...] | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None, hint: str | None = None,
        factory=None, each: bool = False):
    """A schema field with its allowed values (checked by check_config) and a hint for the fix. A list
    value is a [low, high] range, or with ``each`` a list of any length whose every item is checked."""
    meta = {k: v for k, v in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, hint=hint).items() if v is not None}
    if each:
        meta["each"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------ trainer
# The allowed values (AMP, MONITOR, ...) are declared in docclassify/utils/choices.py. trainer.monitor decides
# the best epoch, early stopping, pruning and the sweep objective.


@dataclass
class TrainerConfig:
    epochs: int = key(10, ge=1)
    batch_size: int = key(32, ge=1)
    eval_batch_size: int | None = key(None, ge=1)
    lr: float = key(1.0e-3, ge=0.0)
    optimizer: str = "adamw"
    device: str = "auto"
    threads: int | None = key(None, ge=1, le=1024)
    amp: str = key("none", choices=AMP)
    grad_clip: float | None = key(None, gt=0.0)
    accum_steps: int = key(1, ge=1)
    early_stopping_patience: int | None = key(None, ge=1)
    monitor: str = key("auto", choices=MONITOR)
    skip_nonfinite: bool = False
    deterministic: bool = False
    channels_last: bool | None = None
    compile: bool = False
    log_every_n_steps: int = key(0, ge=0)
    lr_scale: str = key("none", choices=LR_SCALE)
    sync_bn: bool = False
    # Debugging (conf/debug/; names as in Lightning's Trainer). null / 0 = off.
    limit_train_batches: int | None = key(None, ge=1)
    limit_val_batches: int | None = key(None, ge=1)
    overfit_batches: int = key(0, ge=0)
    profiler: str | None = key(None, choices=PROFILERS)
    enable_reports: bool = True


# ------------------------------------------------------------------------------------------ data
@dataclass
class DataCommon:
    """Keys every data source has (decoding, caching, loading)."""

    name: str = MISSING
    use_pretrained: bool = True
    img_size: int | None = key(None, ge=16, le=4096)
    resize: str = key("pad", choices=RESIZE)
    pad_value: int = key(0, ge=0, le=255)
    cache: bool = True
    num_workers: int | None = key(None, ge=0, le=256)
    on_bad_image: str = key("error", choices=ON_BAD_IMAGE)
    # How often each class is drawn for training (engine/sampling.py).
    sampler: str = key("natural", choices=SAMPLERS)
    relabel: str | None = None   # CSV ID,target: decisions of a label audit (data/sources.py apply_decisions)
    exclude: str | None = None   # CSV ID: training rows left out


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
    meta_csv: str | None = "meta.csv"  # optional: null or a missing file = classes class_0, class_1, ...
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
    generator_seed: int = key(0, ge=0)
    # Which labelled test split the run sees (its shift report, validation.distort=auto, submit=true):
    # null = test/ (test_labels.csv, sample_submission.csv); the phone-photo split is test_phone/.
    test_dir: str | None = None
    test_labels: str | None = None
    sample_submission: str | None = None
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
    # A small head on the pooled features that predicts which turn (rot4) or turn/mirror (dihedral8)
    # the training augmentation applied (models/heads.py).
    orientation_head: str = key("none", choices=ORIENTATION_HEADS)


# ------------------------------------------------------------------------------------------ augment
def _range(low: float, high: float, **limits):
    """A [low, high] list key (both ends checked against ``limits``, low <= high)."""
    return key(factory=lambda: [low, high], **limits)


@dataclass
class AugmentConfig:
    """Unprefixed strengths: the basic set; ``advanced_*``: the advanced set; flips: both
    (docclassify/data/augment.py)."""

    name: str = MISSING
    rotate_limit: float = key(5.0, ge=0.0, le=180.0)
    scale_limit: float = key(0.08, ge=0.0, lt=1.0)
    shift_limit: float = key(0.04, ge=0.0, le=0.5)
    crop_p: float = key(0.3, ge=0.0, le=1.0)
    crop_scale: float = key(0.85, gt=0.0, le=1.0)
    color_jitter: float = key(0.15, ge=0.0, le=1.0)
    hflip: bool = False
    vflip: bool = False
    # Exact turns / mirror images after either set (data/dihedral.py): the group, and the share of
    # samples that take one of its elements other than the identity.
    orientation: str = key("none", choices=ORIENTATION_GROUPS)
    orientation_p: float = key(0.5, ge=0.0, le=1.0)
    advanced_p_start: float = key(0.0, ge=0.0, le=1.0)
    advanced_p_end: float = key(0.0, ge=0.0, le=1.0)
    # Training samples distorted by the robust copies' profile (distortion/match.py), with a share ramping
    # from match_p_start (first epoch) to match_p_end (last epoch).
    match_validation: bool = False
    match_p_start: float = key(0.5, ge=0.0, le=1.0)
    match_p_end: float = key(0.5, ge=0.0, le=1.0)
    # Old names of advanced_p_start / advanced_p_end (still accepted; they win when given).
    hard_p_start: float | None = key(None, ge=0.0, le=1.0)
    hard_p_end: float | None = key(None, ge=0.0, le=1.0)
    # The advanced set's strengths; *_p: probability of that step (a OneOf picks one member).
    advanced_rot90_p: float = key(0.5, ge=0.0, le=1.0)
    advanced_warp_p: float = key(0.7, ge=0.0, le=1.0)
    advanced_perspective_scale: list[float] = _range(0.03, 0.08, ge=0.0, le=0.5)
    advanced_rotate_limit: float = key(15.0, ge=0.0, le=180.0)
    advanced_scale_limit: float = key(0.1, ge=0.0, lt=1.0)
    advanced_shift_limit: float = key(0.0, ge=0.0, le=0.5)
    advanced_elastic_alpha: float = key(20.0, ge=0.0, le=1000.0)
    advanced_elastic_sigma: float = key(6.0, gt=0.0, le=100.0)
    advanced_grid_steps: int = key(5, ge=1, le=64)
    advanced_grid_distort: float = key(0.2, ge=0.0, le=1.0)
    advanced_crop_p: float = key(0.5, ge=0.0, le=1.0)
    advanced_crop_scale: float = key(0.7, gt=0.0, le=1.0)
    advanced_blur_p: float = key(0.4, ge=0.0, le=1.0)
    advanced_blur_limit: int = key(7, ge=3, le=99)
    advanced_downscale: list[float] = _range(0.4, 0.8, gt=0.0, lt=1.0)
    advanced_noise_p: float = key(0.4, ge=0.0, le=1.0)
    advanced_noise_std: list[float] = _range(0.02, 0.12, ge=0.0, le=1.0)
    advanced_jpeg_p: float = key(0.4, ge=0.0, le=1.0)
    advanced_jpeg_quality: list[int] = _range(30, 90, ge=1, le=100)
    advanced_light_p: float = key(0.6, ge=0.0, le=1.0)
    advanced_color_jitter: float = key(0.3, ge=0.0, le=1.0)
    advanced_gamma: list[float] = _range(60.0, 160.0, gt=0.0, le=1000.0)
    advanced_shadow_intensity: list[float] = _range(0.5, 0.5, ge=0.0, le=1.0)
    advanced_dropout_p: float = key(0.3, ge=0.0, le=1.0)
    advanced_dropout_holes: list[int] = _range(1, 4, ge=1, le=64)
    advanced_dropout_size: list[float] = _range(0.05, 0.15, gt=0.0, le=1.0)
    mixup_alpha: float = key(0.0, ge=0.0)
    cutmix_alpha: float = key(0.0, ge=0.0)
    mixup_prob: float = key(1.0, ge=0.0, le=1.0)
    mixup_switch_prob: float = key(0.5, ge=0.0, le=1.0)
    mixup_mode: str = key("batch", choices=MIXUP_MODES)
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
    # Weight of the orientation head's loss (model.orientation_head) next to the classification loss.
    orientation_loss_weight: float = key(1.0, ge=0.0)


# ------------------------------------------------------------------------------------------ loss
# Each option's _target_ is a class of docclassify/engine/losses.py (or a user's own: see the
# protocol there); its other keys are the constructor's arguments.
@dataclass
class CrossEntropyLossConfig:
    _target_: str = "docclassify.engine.losses.CrossEntropy"


@dataclass
class FocalLossConfig:
    _target_: str = "docclassify.engine.losses.FocalLoss"
    gamma: float = key(2.0, ge=0.0, le=10.0)


@dataclass
class LogitAdjustedLossConfig:
    _target_: str = "docclassify.engine.losses.LogitAdjustedLoss"
    tau: float = key(1.0, ge=0.0, le=10.0)


@dataclass
class ClassBalancedLossConfig:
    _target_: str = "docclassify.engine.losses.ClassBalancedLoss"
    beta: float = key(0.999, ge=0.0, lt=1.0)


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
    """How a robust validation copy is distorted (docclassify/distortion/). Each distortion is applied with
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
    brightness: list[float] = _range(-0.1, 0.25, ge=-1.0, le=1.0)  # additive, share of full scale
    contrast: list[float] = _range(0.7, 1.3, gt=0.0, le=10.0)      # multiplicative
    noise_p: float = key(0.5, ge=0.0, le=1.0)          # Gaussian sensor noise ...
    noise_std: float = key(0.08, ge=0.0, le=1.0)       # ... std up to this share of full scale
    jpeg_p: float = key(0.5, ge=0.0, le=1.0)           # re-encoding ...
    jpeg_quality: list[int] = _range(30, 90, ge=1, le=100)       # ... quality in [low, high]
    occlusion_p: float = key(0.2, ge=0.0, le=1.0)      # occluding blobs ...
    occlusion_size: float = key(0.15, ge=0.0, le=0.5)  # ... each up to this share of the long side ...
    occlusion_count: int = key(1, ge=1, le=16)         # ... 1 to this many of them
    # Photographed pages (small defaults: "some test images are photographed"; docs/validation.md).
    background_p: float = key(0.2, ge=0.0, le=1.0)     # rotation/perspective corners: a drawn background
    background_texture: float = key(0.5, ge=0.0, le=1.0)  # share of drawn backgrounds (and desks) textured
    desk_p: float = key(0.1, ge=0.0, le=1.0)           # the page photographed on a desk ...
    desk_scale: list[float] = _range(0.6, 0.9, gt=0.0, le=1.0)  # ... covering this share of the frame
    desk_tilt: float = key(0.05, ge=0.0, lt=0.5)       # ... corners moved up to this share of the page
    shadow_p: float = key(0.1, ge=0.0, le=1.0)         # a shadow band ...
    shadow_strength: float = key(0.5, ge=0.0, le=1.0)  # ... darkening by up to this share
    glare_p: float = key(0.1, ge=0.0, le=1.0)          # a glare spot ...
    glare_strength: float = key(0.6, ge=0.0, le=1.0)   # ... brightening towards white by up to this share
    glare_size: float = key(0.25, ge=0.0, le=1.0)      # ... radius up to this share of the long side
    channel_p: float = key(0.1, ge=0.0, le=1.0)        # per-channel contrast ...
    channel_contrast: list[float] = _range(0.8, 1.25, ge=0.0, le=10.0)  # ... each channel's factor
    # Added for the shipped test profiles (docclassify/distortion/profiles/); off by default.
    angle_min: float = key(0.0, ge=0.0, le=180.0)      # |angle| at least this (0: uniform in +-angle)
    flip_vertical: float = key(0.0, ge=0.0, le=1.0)    # share of the mirror images that are top-bottom
    background_tones: list[int] = key(factory=list, ge=0, le=255, each=True, hint="grey levels 0-255")    # drawn backgrounds: one of these greys (0-255) ...
    background_jitter: float = key(0.0, ge=0.0, le=128.0)  # ... each channel jittered by this std (grey levels)
    blur_min: float = key(0.0, ge=0.0, le=0.1)         # blur sigma at least this share of the long side
    noise_min: float = key(0.0, ge=0.0, le=1.0)        # noise std at least this share of full scale
    exposure_p: float = key(0.0, ge=0.0, le=1.0)       # exposure (over/under-exposed, low light) ...
    exposure_gain: list[float] = _range(0.55, 1.5, gt=0.0, le=10.0)      # ... light multiplied by this
    exposure_contrast: list[float] = _range(0.6, 1.4, ge=0.0, le=10.0)   # ... contrast around mid-grey
    exposure_gamma: list[float] = _range(0.5, 2.0, gt=0.0, le=10.0)      # ... gamma (drawn log-uniform)
    motion_p: float = key(0.0, ge=0.0, le=1.0)         # motion blur (camera shake) ...
    motion_length: float = key(0.02, ge=0.0, le=0.5)   # ... a streak up to this share of the long side
    moire_p: float = key(0.0, ge=0.0, le=1.0)          # moire (a photographed screen or halftone) ...
    moire_strength: float = key(0.3, ge=0.0, le=1.0)   # ... darkening its bands by up to this share


# Profiles that ship in the package: validation.distort=<name> (docclassify/distortion/profiles/<name>.yaml).
PROFILES_DIR = Path(__file__).resolve().parent / "distortion" / "profiles"
# Keys whose value is a lower bound of another key's upper bound.
_PROFILE_MINIMA = (("angle_min", "angle"), ("blur_min", "blur_sigma"), ("noise_min", "noise_std"))


def profile_file(value: str) -> Path | None:
    """The YAML file ``validation.distort=<value>`` names: a shipped profile's name, else a file path
    (relative: to the working directory); None when there is neither."""
    shipped = PROFILES_DIR / f"{value}.yaml"
    if "/" not in value and shipped.is_file():
        return shipped
    path = Path(value).expanduser()
    return path.resolve() if path.is_file() else None


def profile_errors(node: Any, where: str) -> list[str]:
    """A profile's keys (a config node) against DistortProfile: unknown keys, types, ranges, and the
    minima not above their maxima."""
    if not isinstance(node, DictConfig):
        return [f"{where}: expected profile keys (a mapping such as rot90_p: 0.5), got {node!r}"]
    try:
        profile = OmegaConf.merge(OmegaConf.structured(DistortProfile), node)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's key/type errors, reported with the key
        return [f"{where}: {str(exc).splitlines()[0]} (keys: {', '.join(DistortProfile.__annotations__)})"]
    errors = schema_errors(profile, where)
    for low, high in _PROFILE_MINIMA:
        if profile[low] > profile[high]:
            errors.append(f"{where}.{low}={profile[low]}: must not exceed {where}.{high}={profile[high]}")
    return errors


@dataclass
class CleanValidation:
    name: str = key("clean", choices=("clean",))


@dataclass
class RobustValidation:
    name: str = key("both", choices=ROBUST_VALIDATIONS)
    # Distorted copies of every validation image (each a pure function of seed, image ID, copy).
    copies: int = key(2, ge=1, le=16)
    # Seed of the copies; not the run's seed, so every run and trial scores the same pixels.
    seed: int = key(0, ge=0, le=SEED_MAX)
    # A DistortProfile (its keys, e.g. validation.distort.angle=10), "auto": fitted from the
    # measured train-vs-test shift of the data's test images (docclassify.shift), or a shipped
    # profile's name (PROFILES_DIR: synthetic_test, phone_photo) or a profile YAML's path.
    distort: Any = field(default_factory=lambda: OmegaConf.structured(DistortProfile))


# ------------------------------------------------------------------------------------------ shift
@dataclass
class ShiftSettings:
    """How the train-vs-test shift is measured (docclassify/distortion/measure.py, docs/shift.md)."""

    max_images: int | None = key(500, ge=10)   # per split, a seeded sample; null = every image
    work_size: int = key(256, ge=64, le=2048)  # long side (px) for brightness, contrast, blur, text lines


@dataclass
class ShiftCheck(ShiftSettings):
    """The shift check at the start of training (train.yaml's ``shift`` node)."""

    report: bool = True  # log the biggest shifts and write shift.json / shift.png when test images exist


@dataclass
class ShiftConfig:
    """Top level of ``conf/shift.yaml`` (``python -m docclassify.shift``)."""

    task_name: str = "shift"
    paths: Any = MISSING
    data: Any = MISSING
    shift: ShiftSettings = field(default_factory=ShiftSettings)


# ---------------------------------------------------------------------------------- folds, logger, ensemble, paths
@dataclass
class FoldsConfig:
    n: int = key(5, ge=2, hint="for one hold-out split train one fold of K, e.g. folds.n=5 folds.run=[0]")
    # A list of fold indices, or one int (folds_to_run accepts both and validates the range).
    run: Any | None = None
    # Near-duplicate training images share a fold (StratifiedGroupKFold; data/duplicates.py).
    group_duplicates: bool = True
    duplicate_distance: int = key(12, ge=0, le=64)
    duplicate_similarity: float = key(0.91, ge=-1.0, le=1.0)
    # A folds.csv (ID,fold: another run's) whose folds are taken instead of drawing them (data/folds.py).
    file: str | None = None


@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class CsvLogger:
    name: str = "csv"


@dataclass
class WandbLogger:
    name: str = "wandb"
    project: str = "docclassify"
    entity: str | None = None
    mode: str | None = key(None, choices=WANDB_MODES)
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = False


@dataclass
class EnsembleConfig:
    name: str = key(MISSING, choices=TRAIN_ENSEMBLES)
    # fold -> model option name, or {model: NAME, img_size: S}
    fold_models: Any | None = None
    preset: Any = field(default_factory=dict)


@dataclass
class PathsConfig:
    cache_dir: str = MISSING
    # Hydra's runtime.output_dir: null while no job runs (--cfg job --resolve prints the config then)
    output_dir: str | None = MISSING


# ------------------------------------------------------------------------------------------ hparams_search
@dataclass
class TrialRef:
    study: str | None = None
    number: int | None = key(None, ge=0)
    storage: str | None = None


@dataclass
class HparamsSearchConfig:
    pruner: Any | None = None  # an optuna pruner (_target_ + kwargs); null = never prune
    trial: TrialRef = field(default_factory=TrialRef)


# ------------------------------------------------------------------------------------------ inference
@dataclass
class TTAConfig:
    name: str = key(MISSING, choices=TTA_SETS)
    average: str = key("prob", choices=AVERAGES)
    # Test images deskewed (small-angle rotation estimated and undone) before resizing (data/deskew.py).
    deskew: bool = False
    # tta=orient: average the upright view with its mirror (null: when training showed mirror images).
    upright_flip: bool | None = False
    # tta=auto: the view set chosen per predicted class on the OOF rows, guarded (predict/tta_auto.py).
    per_class: bool = False


@dataclass
class InferEnsemble:
    weights: str = key("equal", choices=WEIGHT_MODES)
    average: str = key("prob", choices=AVERAGES)


@dataclass
class InferData:
    root: str | None = None
    sample_submission: str | None = None
    test_dir: str | None = None
    test_labels: str | None = None
    cache: bool | None = None


# ------------------------------------------------------------------------------------------ second stage
@dataclass
class SecondPassConfig:
    """``second_pass.*`` of conf/infer.yaml: unsure images re-predicted after restoration (predict/second_pass.py)."""

    enabled: bool = False
    max_share: float = key(0.5, gt=0.0, le=1.0)
    tail: float = key(0.05, gt=0.0, lt=0.5)


@dataclass
class InferSpecialists:
    """``specialists.*`` of conf/infer.yaml: the runs' class-group specialists (predict/specialists.py)."""

    enabled: bool = False


@dataclass
class AdaptConfig:
    """conf/adapt/none.yaml, bn.yaml: test-time adaptation (predict/adapt.py)."""

    name: str = key("none", choices=ADAPT_MODES)


@dataclass
class TentAdaptConfig:
    """conf/adapt/tent.yaml: entropy minimisation on the norm layers' affine parameters."""

    name: str = key("tent", choices=("tent",))
    lr: float = key(1.0e-3, gt=0.0, le=1.0)


@dataclass
class NoSpecialists:
    """conf/specialists/none.yaml (train): no class-group specialists."""

    name: str = key("none", choices=("none",))


@dataclass
class AutoSpecialists:
    """conf/specialists/auto.yaml (train): specialists for the most confused class groups (docclassify/specialists/)."""

    name: str = key("auto", choices=("auto",))
    max_groups: int = key(3, ge=1)
    max_size: int = key(3, ge=2)
    min_rate: float = key(0.05, ge=0.0, le=1.0)
    size_scale: float = key(2.0, ge=1.0, le=8.0)
    epochs: int | None = key(None, ge=1)


@dataclass
class SubmitInfer:
    """``infer`` of train.yaml: the docclassify.infer options that ``submit=true`` runs with."""

    tta: str = key("orient", choices=TTA_SETS)
    tta_average: str | None = key(None, choices=AVERAGES)
    average: str = key("prob", choices=AVERAGES)
    calibrate: bool = False
    decision: str = key("argmax", choices=DECISIONS)
    oof_tta: bool = True
    output: str | None = None
    batch_size: int = key(64, ge=1)
    device: str = "auto"
    data: InferData = field(default_factory=InferData)
    overrides: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ pseudo-labels
@dataclass
class PseudoConfig:
    """``pseudo.*`` of conf/train.yaml: confident test images as extra training rows (data/pseudo.py)."""

    source: str | None = None
    threshold: float | None = key(0.9, ge=0.0, le=1.0)
    top_fraction: float | None = key(None, gt=0.0, le=1.0)
    per_class_max: int | None = key(None, ge=1)
    soft: bool = False
    weight: float = key(1.0, gt=0.0, le=100.0)


# ------------------------------------------------------------------------------------------ primary configs
@dataclass
class TrainConfig:
    """Top level of ``conf/train.yaml``: every group plus the run's own keys."""

    task_name: str = "train"
    # Every random draw derives from it (numpy and scikit-learn take seeds below 2**32).
    seed: int = key(42, ge=0, le=SEED_MAX)
    resume: str | None = None
    pipeline: str | None = None
    experiment: str | None = None
    debug: str | None = None
    paths: Any = MISSING
    data: Any = MISSING
    model: Any = MISSING
    augment: Any = MISSING
    regularization: Any = MISSING
    loss: Any = MISSING
    schedule: Any = MISSING
    trainer: Any = MISSING
    folds: Any = MISSING
    logger: Any = MISSING
    ensemble: Any = MISSING
    validation: Any = MISSING
    hparams_search: Any = None
    shift: ShiftCheck = field(default_factory=ShiftCheck)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    # true | false | auto (submit.py: auto = when the data has labelled test images, outside a sweep)
    submit: Any = key("auto", choices=SUBMIT)
    infer: SubmitInfer = field(default_factory=SubmitInfer)
    specialists: Any = MISSING


@dataclass
class InferConfig:
    """Top level of ``conf/infer.yaml``."""

    task_name: str = "infer"
    runs: Any = field(default_factory=list)
    top_k: int | None = key(None, ge=1)
    # The OOF rows top_k, weights, temperature and tta=auto are decided on (utils/choices.py FIT_ON).
    fit_on: str = key("auto", choices=FIT_ON)
    ensemble: InferEnsemble = field(default_factory=InferEnsemble)
    # argmax, or per-class biases fitted for macro F1 on the OOF rows (predict/decision.py).
    decision: str = key("argmax", choices=DECISIONS)
    calibrate: bool = False
    # Fit on OOF rows scaled like fold averages (predict/fitting.py mimic_fold_averages).
    mimic_fold_average: bool = True
    oof_tta: bool = True
    # Estimate the test macro F1 without labels (summary.json "estimate"; predict/estimate.py): a
    # confidence threshold fitted on the OOF rows (one run: predicted as the test is), applied to the
    # test images (ATC).
    estimate: bool = True
    # Read each fold's predictions from the logit store in paths.cache_dir when the same checkpoint,
    # views and images were predicted before; store the ones predicted (predict/logit_store.py).
    reuse_logits: bool = True
    output: str | None = None
    batch_size: int = key(64, ge=1)
    device: str = "auto"
    # A folder of images to predict (every image file in it, sorted by name), instead of the
    # test set of the runs' data (predict/testdata.py loose_folder).
    inputs: str | None = None
    data: InferData = field(default_factory=InferData)
    # The second stage (docs/second-stage.md), each off by default.
    second_pass: SecondPassConfig = field(default_factory=SecondPassConfig)
    specialists: InferSpecialists = field(default_factory=InferSpecialists)
    paths: Any = MISSING
    tta: Any = MISSING
    logger: Any = MISSING
    adapt: Any = MISSING


@dataclass
class ExportConfig(InferConfig):
    """Top level of ``conf/export.yaml``: infer's keys (the infer step whose decisions a bundle holds) plus
    the bundle's own (docclassify/deploy/export.py). ``output`` is the bundle folder."""

    task_name: str = "export"
    format: str = key("onnx", choices=EXPORT_FORMATS)
    quantize: str = key("none", choices=QUANTIZE)
    exporter: str = key("auto", choices=EXPORTERS)
    opset: int | None = key(None, ge=13, le=23)
    calibration_images: int = key(256, ge=1)
    check_images: int = key(20, ge=0)
    tolerance: float = key(1.0e-4, gt=0.0)


@dataclass
class DistillSettings:
    """``distill.*`` of conf/distill.yaml (docclassify/deploy/distill.py)."""

    temperature: float = key(4.0, gt=0.0, le=100.0)
    label_weight: float = key(0.0, ge=0.0, le=1.0)
    test_images: bool = True
    teacher_tta: str = key("none", choices=TTA_SETS)


@dataclass
class DistillConfig(TrainConfig):
    """Top level of ``conf/distill.yaml``: train's keys (the student's run) plus the teacher runs."""

    task_name: str = "distill"
    runs: Any = field(default_factory=list)
    distill: DistillSettings = field(default_factory=DistillSettings)


# (group, option) -> schema; a group whose options differ in keys maps each option.
SCHEMAS: dict[tuple[str, str], Any] = {
    ("trainer", "default"): TrainerConfig,
    ("data", "competition"): CompetitionData,
    ("data", "imagefolder"): ImageFolderData,
    ("data", "synthetic"): SyntheticData,
    ("model", "default"): ModelConfig,
    ("augment", "default"): AugmentConfig,
    ("regularization", "default"): RegularizationConfig,
    ("loss", "ce"): CrossEntropyLossConfig,
    ("loss", "focal"): FocalLossConfig,
    ("loss", "logit_adjusted"): LogitAdjustedLossConfig,
    ("loss", "class_balanced"): ClassBalancedLossConfig,
    ("schedule", "cosine"): CosineSchedule,
    ("schedule", "constant"): ConstantSchedule,
    ("folds", "kfold"): FoldsConfig,
    ("logger", "none"): NoLogger,
    ("logger", "wandb"): WandbLogger,
    ("logger", "csv"): CsvLogger,
    ("ensemble", "default"): EnsembleConfig,
    ("paths", "default"): PathsConfig,
    ("hparams_search", "default"): HparamsSearchConfig,
    ("tta", "default"): TTAConfig,
    ("validation", "clean"): CleanValidation,
    ("validation", "robust"): RobustValidation,
    ("adapt", "default"): AdaptConfig,
    ("adapt", "tent"): TentAdaptConfig,
    ("specialists", "none"): NoSpecialists,
    ("specialists", "auto"): AutoSpecialists,
}
PRIMARY = {"train": TrainConfig, "infer": InferConfig, "shift": ShiftConfig, "export": ExportConfig,
           "distill": DistillConfig}


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
    if isinstance(value, ListConfig) and meta.get("each"):  # a list of allowed values
        return all(_allowed(v, meta) for v in value)
    if isinstance(value, ListConfig):  # a [low, high] range: both ends allowed, low <= high
        return len(value) == 2 and all(_allowed(v, meta) for v in value) and value[0] <= value[1]
    if "choices" in meta:  # a bool among string choices (submit: true | false | auto) as YAML spells it
        return (str(value).lower() if isinstance(value, bool) else str(value)) in meta["choices"]
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
        else:
            errors += value_errors(f"{path}.{name}", value, f)
    return errors


def value_errors(name: str, value: Any, f: dataclasses.Field) -> list[str]:
    """``name=value`` against its field's choices or range (none: every value of its type is allowed)."""
    if value is None or not f.metadata or _allowed(value, f.metadata):
        return []
    hint = f" ({f.metadata['hint']})" if "hint" in f.metadata else ""
    what = _describe(f.metadata)
    if isinstance(value, ListConfig):
        what = f"a list of values, each {what}" if f.metadata.get("each") else f"[low, high] with low <= high, each {what}"
    return [f"{name}={value!r}: expected {what}{hint}"]


def distort_errors(validation: DictConfig) -> list[str]:
    """``validation.distort``: "auto", a shipped profile's name or a profile YAML's path, or a
    DistortProfile's keys (typed here: it is an Any field)."""
    distort = validation.get("distort")
    if distort is None or distort == "auto":
        return []
    if isinstance(distort, str):
        path = profile_file(distort)
        if path is None:
            shipped = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            return [f"validation.distort={distort}: no shipped profile of that name and no such file; shipped: "
                    f"{shipped} (or auto, a path to a profile YAML, or validation.distort.<key>=...)"]
        return profile_errors(OmegaConf.load(path), f"validation.distort ({path})")
    if not isinstance(distort, DictConfig):
        return [f"validation.distort={distort!r}: expected auto, a profile name or path, or a profile "
                "(validation.distort.<key>=...)"]
    return profile_errors(distort, "validation.distort")


def fold_models_errors(ensemble: DictConfig, n_folds: int | None) -> list[str]:
    """``ensemble.fold_models`` (an Any field): fold -> model option, or {model: NAME, img_size: S}
    with S in data.img_size's range, for folds 0..folds.n-1."""
    raw = ensemble.get("fold_models")
    if raw is None:
        return []
    if not isinstance(raw, DictConfig):
        return [f"ensemble.fold_models={raw!r}: expected a mapping fold -> model option, e.g. {{0:tiny,1:resnet18}}"]
    size_meta = next(f.metadata for f in dataclasses.fields(DataCommon) if f.name == "img_size")
    errors = []
    for fold, spec in raw.items():
        where = f"ensemble.fold_models.{fold}"
        if not isinstance(fold, int) or fold < 0 or (n_folds is not None and fold >= n_folds):
            errors.append(f"{where}: expected a fold index 0..{(n_folds or 1) - 1} (folds.n={n_folds})")
        if isinstance(spec, DictConfig):
            extra = sorted(set(spec) - {"model", "img_size"})
            if extra or "model" not in spec:
                errors.append(f"{where}={OmegaConf.to_container(spec)}: expected {{model: NAME}} or "
                              "{model: NAME, img_size: S}")
            size = spec.get("img_size")
            if size is not None and not (isinstance(size, int) and _allowed(size, size_meta)):
                errors.append(f"{where}.img_size={size!r}: expected {_describe(size_meta)}")
        elif not isinstance(spec, str):
            errors.append(f"{where}={spec!r}: expected a model option name or {{model: NAME, img_size: S}}")
    return errors


def relation_errors(cfg: DictConfig) -> list[str]:
    """Checks that involve more than one key."""
    errors = []
    if isinstance(cfg.get("ensemble"), DictConfig):
        folds = cfg.get("folds")
        errors += fold_models_errors(cfg.ensemble, int(folds.n) if isinstance(folds, DictConfig) else None)
    validation = cfg.get("validation")
    if validation is not None:
        errors += distort_errors(validation)
        if validation.name == "clean" and cfg.trainer.monitor in ("robust", "mean"):
            errors.append(f"trainer.monitor={cfg.trainer.monitor}: validation=clean has no robust view; "
                          "use validation=both (or robust), or trainer.monitor=clean")
        if validation.name == "robust" and cfg.trainer.monitor in ("clean", "mean"):
            errors.append(f"trainer.monitor={cfg.trainer.monitor}: validation=robust validates only the distorted "
                          "copies every epoch; use validation=both, or trainer.monitor=robust (or auto)")
    errors += orientation_errors(cfg)
    if cfg.get("data") is not None and cfg.data.get("name") == "synthetic" and cfg.data.get("root") is not None:
        errors.append(f"data.root={cfg.data.root}: the default data=synthetic generates its own images and "
                      "reads no folder; add data=competition (train.csv, meta.csv, train/, test/) or "
                      "data=imagefolder (train/<class>/*.jpg) to train on your own data")
    return errors


def orientation_errors(cfg: DictConfig) -> list[str]:
    """An orientation head learns the turns/mirrors the augmentation applies: with none applied, every
    label is the identity and it learns nothing."""
    model, aug = cfg.get("model"), cfg.get("augment")
    head = model.get("orientation_head", "none") if model is not None else "none"
    if head == "none" or aug is None or aug.get("orientation", "none") != "none":
        return []
    advanced = max(aug.get("advanced_p_start", 0.0), aug.get("advanced_p_end", 0.0)) > 0
    if aug.get("hflip") or aug.get("vflip") or (advanced and aug.get("advanced_rot90_p", 0.0) > 0):
        return []
    return [f"model.orientation_head={head}: the head learns which turn/mirror the augmentation applied, "
            f"but augment={aug.get('name')} applies none (augment.orientation=none, no flips or quarter turns); "
            "set augment.orientation=rot90 or dihedral (or model.orientation_head=none)"]


def apply_aliases(cfg: DictConfig) -> None:
    """Old key names (``augment.hard_p_*``) set the new ones (``augment.advanced_p_*``)."""
    for old, new in ALIASES.items():
        value = OmegaConf.select(cfg, old)
        if value is not None:
            log.warning("%s is the old name of %s: using %s=%s", old, new, new, value)
            OmegaConf.update(cfg, new, value)
            OmegaConf.update(cfg, old, None)


# What a required key left unset (``???``) is set to, in its error.
UNSET_HINTS = {"data.root": "/path/to/data"}


def group_settings(cfg: DictConfig, group: str, schema: type | tuple[type, ...]):
    """The typed object of a composed, checked config group: ``OmegaConf.to_object`` on its schema
    dataclass (interpolations resolved). A required key left unset stops here, naming it."""
    try:
        settings = OmegaConf.to_object(cfg[group])
    except MissingMandatoryValue as exc:
        name = f"{group}.{exc.key}"
        raise DataError(f"{name} is not set: pass {name}={UNSET_HINTS.get(name, '...')}") from None
    if not isinstance(settings, schema):  # a group option without its schema in its defaults list
        names = " or ".join(s.__name__ for s in (schema if isinstance(schema, tuple) else (schema,)))
        raise DataError(f"{group}: not typed by its schema ({names}); start the option's defaults list "
                        f"with its /schema/{group}/... entry (docclassify/config_schema.py)")
    return settings


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
        raise ConfigError("; ".join(dict.fromkeys(errors)))  # validation.distort is seen twice


def schema_errors_top(cfg: DictConfig) -> list[str]:
    """Top-level keys the primary schema does not declare (``+foo=1``) and top-level values outside
    their range (``seed``, infer's ``top_k`` and ``batch_size``)."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    errors = [f"{k}: not a key of the {schema.__name__}; nothing reads it. Check the spelling."
              for k in cfg if k not in fields and k != "hydra"]
    for name, f in fields.items():
        if name in cfg and not OmegaConf.is_missing(cfg, name) and not OmegaConf.is_interpolation(cfg, name) \
                and not isinstance(cfg[name], DictConfig):
            errors += value_errors(name, cfg[name], f)
    return errors


register()
