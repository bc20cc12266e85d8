"""Every numeric key has an allowed range, checked before any work: a hostile value stops the run
with an error naming the key, the value and what is allowed (docclassify/config_schema.py)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import OmegaConf

from docclassify import config_schema as S
from docclassify.config_schema import ConfigError, check_config

RANGE_KEYS = ("ge", "gt", "le", "lt", "choices")

# (override, what the message must say). The message names key=value and the allowed range.
TRAIN_HOSTILE = [
    ("trainer.lr=-1", "trainer.lr=-1.0: expected a number >= 0.0"),
    ("trainer.lr=nan", "trainer.lr=nan: expected a number >= 0.0"),
    ("trainer.lr=inf", "trainer.lr=inf: expected a number >= 0.0"),
    ("trainer.epochs=0", "trainer.epochs=0: expected a number >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: expected a number >= 1"),
    ("trainer.eval_batch_size=-4", "trainer.eval_batch_size=-4: expected a number >= 1"),
    ("trainer.accum_steps=0", "trainer.accum_steps=0: expected a number >= 1"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0.0: expected a number > 0.0"),
    ("trainer.early_stopping_patience=0", "trainer.early_stopping_patience=0: expected a number >= 1"),
    ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps=-1: expected a number >= 0"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0: expected a number >= 1"),
    ("trainer.limit_val_batches=-2", "trainer.limit_val_batches=-2: expected a number >= 1"),
    ("trainer.overfit_batches=-1", "trainer.overfit_batches=-1: expected a number >= 0"),
    ("folds.n=1", "folds.n=1: expected a number >= 2 (for one hold-out split"),
    ("folds.duplicate_distance=65", "folds.duplicate_distance=65: expected a number >= 0 and <= 64"),
    ("folds.duplicate_similarity=2", "folds.duplicate_similarity=2.0: expected a number >= -1.0 and <= 1.0"),
    ("data.img_size=0", "data.img_size=0: expected a number >= 16 and <= 4096"),
    ("data.img_size=100000", "data.img_size=100000: expected a number >= 16 and <= 4096"),
    ("data.pad_value=300", "data.pad_value=300: expected a number >= 0 and <= 255"),
    ("data.num_workers=-1", "data.num_workers=-1: expected a number >= 0 and <= 256"),
    ("data.num_workers=100000", "data.num_workers=100000: expected a number >= 0 and <= 256"),
    ("data.n_train_per_class=1", "data.n_train_per_class=1: expected a number >= 2"),
    ("data.long_side=8", "data.long_side=8: expected a number >= 32 and <= 4096"),
    ("data.generator_seed=-5", "data.generator_seed=-5: expected a number >= 0"),
    ("model.img_size=8", "model.img_size=8: expected a number >= 16 and <= 4096"),
    ("augment.rotate_limit=720", "augment.rotate_limit=720.0: expected a number >= 0.0 and <= 180.0"),
    ("augment.crop_scale=0", "augment.crop_scale=0.0: expected a number > 0.0 and <= 1.0"),
    ("augment.mixup_alpha=-0.2", "augment.mixup_alpha=-0.2: expected a number >= 0.0"),
    ("augment.mixup_prob=2", "augment.mixup_prob=2.0: expected a number >= 0.0 and <= 1.0"),
    ("augment.advanced_blur_limit=1", "augment.advanced_blur_limit=1: expected a number >= 3 and <= 99"),
    ("augment.advanced_jpeg_quality=[90,30]",
     "augment.advanced_jpeg_quality=[90, 30]: expected [low, high] with low <= high, each a number >= 1 and <= 100"),
    ("augment.mixup_off_epoch=-1", "augment.mixup_off_epoch=-1: expected a number >= 0"),
    ("regularization.ema_decay=1.5", "regularization.ema_decay=1.5: expected a number > 0.0 and < 1.0"),
    ("regularization.label_smoothing=1.0", "regularization.label_smoothing=1.0: expected a number >= 0.0 and < 1.0"),
    ("regularization.weight_decay=-0.1", "regularization.weight_decay=-0.1: expected a number >= 0.0"),
    ("regularization.drop_rate=1.0", "regularization.drop_rate=1.0: expected a number >= 0.0 and < 1.0"),
    ("regularization.drop_path_rate=-0.1", "regularization.drop_path_rate=-0.1: expected a number >= 0.0 and < 1.0"),
    ("regularization.layer_decay=0", "regularization.layer_decay=0.0: expected a number > 0.0 and <= 1.0"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs=-1: expected a number >= 0"),
    ("schedule.warmup_lr=-1e-6", "schedule.warmup_lr=-1e-06: expected a number >= 0.0"),
    ("schedule.min_lr=-1e-6", "schedule.min_lr=-1e-06: expected a number >= 0.0"),
    ("validation.copies=0", "validation.copies=0: expected a number >= 1 and <= 16"),
    ("validation.copies=100", "validation.copies=100: expected a number >= 1 and <= 16"),
    ("validation.seed=-3", "validation.seed=-3: expected a number >= 0 and <= 2147483647"),
    ("validation.distort.angle=400", "validation.distort.angle=400.0: expected a number >= 0.0 and <= 180.0"),
    ("validation.distort.noise_p=1.5", "validation.distort.noise_p=1.5: expected a number >= 0.0 and <= 1.0"),
    ("validation.distort.jpeg_quality=[0,101]",
     "validation.distort.jpeg_quality=[0, 101]: expected [low, high] with low <= high, each a number >= 1 and <= 100"),
    ("validation.distort.brightness=[0.5,-0.5]",
     "validation.distort.brightness=[0.5, -0.5]: expected [low, high] with low <= high, each a number >= -1.0"),
    ("validation.distort.contrast=[0,2]",
     "validation.distort.contrast=[0.0, 2.0]: expected [low, high] with low <= high, each a number > 0.0"),
    ("shift.max_images=0", "shift.max_images=0: expected a number >= 10"),
    ("shift.work_size=10", "shift.work_size=10: expected a number >= 64 and <= 2048"),
    ("seed=-1", "seed=-1: expected a number >= 0 and <= 2147483647"),
    ("seed=1099511627776", "seed=1099511627776: expected a number >= 0 and <= 2147483647"),
    ("infer.batch_size=0", "infer.batch_size=0: expected a number >= 1"),
    ("ensemble.fold_models={0:{model:tiny,img_size:0}}",
     "ensemble.fold_models.0.img_size=0: expected a number >= 16 and <= 4096"),
    ("ensemble.fold_models={9:tiny}", "ensemble.fold_models.9: expected a fold index 0..2 (folds.n=3)"),
]

INFER_HOSTILE = [
    ("top_k=0", "top_k=0: expected a number >= 1"),
    ("batch_size=0", "batch_size=0: expected a number >= 1"),
    ("batch_size=-8", "batch_size=-8: expected a number >= 1"),
    ("fit_on=best", "fit_on='best': expected one of auto, robust, clean"),
    ("ensemble.weights=magic", "ensemble.weights='magic': expected one of equal, oof"),
]


def _numeric(annotation) -> bool:
    """int, float, their Optional and list forms (not bool, not str)."""
    args = typing.get_args(annotation)
    if args:
        return any(_numeric(a) for a in args if a is not type(None))
    return annotation in (int, float)


def _schemas() -> set[type]:
    found, todo = set(), [*S.SCHEMAS.values(), *S.PRIMARY.values(), S.DistortProfile]
    while todo:
        schema = todo.pop()
        if schema in found:
            continue
        found.add(schema)
        hints = typing.get_type_hints(schema)
        todo += [h for h in hints.values() if dataclasses.is_dataclass(h)]
    return found


def test_every_numeric_key_of_every_schema_has_a_range():
    """A new numeric key without ge/gt/le/lt fails here: name its allowed values in the schema."""
    missing = []
    for schema in _schemas():
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if _numeric(hints[f.name]) and not any(k in f.metadata for k in RANGE_KEYS):
                missing.append(f"{schema.__name__}.{f.name}")
    assert missing == []


@pytest.mark.parametrize("override,message", TRAIN_HOSTILE, ids=[o for o, _ in TRAIN_HOSTILE])
def test_hostile_train_value_names_key_value_and_range(tmp_path, override, message):
    data = ["data=synthetic"] if override.startswith(("data.n_train", "data.long_side", "data.generator")) else []
    cfg = compose_train([*data, override], tmp_path)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert message in str(err.value)
    assert str(err.value).count(";") == 0, "one bad value, one error"
    assert list(tmp_path.iterdir()) == []


def test_every_bad_value_is_listed_at_once(tmp_path):
    overrides = [o for o, _ in TRAIN_HOSTILE if not o.startswith(("data.n_train", "data.long_side", "data.gen",
                                                                  "ensemble", "seed=", "trainer.lr=", "data.img",
                                                                  "data.num", "validation.copies"))]
    with pytest.raises(ConfigError) as err:
        check_config(compose_train(overrides, tmp_path))
    for override in overrides:
        assert override.lstrip("+").split("=")[0] + "=" in str(err.value), override


def _compose_infer(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("infer", overrides=["runs=[/nonexistent]", *overrides])


@pytest.mark.parametrize("override,message", INFER_HOSTILE, ids=[o for o, _ in INFER_HOSTILE])
def test_hostile_infer_value_names_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        check_config(_compose_infer([override]))
    assert message in str(err.value)


def test_defaults_and_presets_pass(tmp_path):
    for preset in ("quick", "basic", "highperf"):
        check_config(compose_train([f"pipeline={preset}"], tmp_path))
    check_config(_compose_infer([]))
    cfg = compose_train(["validation.distort=auto", "ensemble.fold_models={0:tiny,1:{model:tiny,img_size:48}}"],
                        tmp_path)
    check_config(cfg)
    assert OmegaConf.select(cfg, "seed") == 42 and Path(tmp_path).exists()
