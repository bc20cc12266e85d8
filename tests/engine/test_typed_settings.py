"""Typed settings passed down (issue 28 item 2): train's entrypoint (engine/kfold.py start_run) turns the
``trainer``, ``data``, ``augment``, ``regularization``, ``model``, ``schedule``, ``validation``, ``folds``,
``ensemble`` and ``shift`` groups into their schema dataclasses once (OmegaConf.to_object), and the loaders,
the epoch loop, the augmentation, the fold plan, the shift check and the fold's parts receive those objects,
not the run's cfg. The loss group is passed down as its node (run.loss): it is instantiated from its
``_target_``, and a user's own loss class takes keys no schema declares. Inference (predict/pipeline.py
run_inference) does the same with its ``tta``, ``adapt``, ``second_pass``, ``specialists``, ``ensemble`` and
``data`` groups (predict/settings.py infer_groups)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from omegaconf import DictConfig

import docclassify
from docclassify.config_schema import (
    AugmentConfig,
    ConstantSchedule,
    CosineSchedule,
    DataCommon,
    EnsembleConfig,
    FoldsConfig,
    ModelConfig,
    RegularizationConfig,
    RobustValidation,
    ShiftCheck,
    TrainerConfig,
)

PACKAGE = Path(docclassify.__file__).resolve().parent
# The modules that must not read those groups from the cfg (run.cfg.trainer, cfg.augment, ...); kfold.py's
# run_results is shared with docclassify.aggregate, which merges the saved configs of finished runs; start_run and
# run_settings are the entrypoint that builds the typed objects (and checks the loss node).
TYPED_MODULES = ("engine/loaders.py", "engine/epoch.py", "engine/fold.py", "engine/parts.py", "engine/profiling.py",
                 "engine/distributed.py", "engine/kfold.py", "engine/mixup.py", "engine/orientation_head.py",
                 "engine/plan.py", "engine/optim.py", "engine/evaluate.py", "data/cache.py", "data/augment.py",
                 "data/folds.py", "distortion/report.py", "predict/pipeline.py", "predict/second_stage.py",
                 "predict/settings.py")
ALLOWED_FUNCTIONS = {("engine/kfold.py", "run_results"), ("engine/kfold.py", "start_run"),
                     ("engine/kfold.py", "run_settings")}
GROUPS = ("trainer", "data", "augment", "regularization", "model", "schedule", "validation", "folds", "ensemble",
          "shift", "loss", "tta", "adapt", "second_pass", "specialists")
# The groups whose options set the typed groups' keys.
SETTING_GROUPS = ("data", "trainer", "augment", "regularization", "model", "schedule", "validation", "folds",
                  "ensemble", "loss", "pipeline", "experiment", "debug", "hparams_search")


def _reads_of_the_cfg(module: str) -> list[str]:
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and (module, f.name) in ALLOWED_FUNCTIONS
               for n in ast.walk(f)}
    return [f"{module}:{node.lineno}: {ast.unparse(node)}" for node in _group_reads(tree) if id(node) not in allowed]


def _owner_is_cfg(node: ast.expr) -> bool:
    return (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else "") == "cfg"


def _group_reads(tree: ast.AST) -> list[ast.AST]:
    """``cfg.<group>`` / ``run.cfg.<group>`` and ``cfg.get("<group>")`` for the groups of GROUPS."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in GROUPS and _owner_is_cfg(node.value):
            found.append(node)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and _owner_is_cfg(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)
              and node.args[0].value in GROUPS):
            found.append(node)
    return found


def test_the_loaders_and_the_epoch_loop_do_not_read_the_cfg_groups():
    reads = [r for module in TYPED_MODULES for r in _reads_of_the_cfg(module)]
    assert not reads, "read the typed settings (run.trainer, run.data_settings, ...):\n" + "\n".join(reads)


def test_the_check_finds_a_read():
    """The scan sees run.cfg.trainer.x, cfg.data.y and run.cfg.get("validation") (and not run.trainer,
    settings.data, run.validation or cfg.get("seed"))."""
    source = ("def f(run, cfg, settings):\n"
              "    return (run.cfg.trainer.lr, cfg.data.resize, run.trainer.lr, settings.data, run.validation,\n"
              "            run.cfg.get('validation'), cfg.get('seed'))\n")
    hits = [ast.unparse(n) for n in _group_reads(ast.parse(source))]
    assert sorted(hits) == ["cfg.data", "run.cfg.get('validation')", "run.cfg.trainer"]


@pytest.mark.parametrize(("function", "param", "schema"), [
    ("docclassify.engine.loaders:build_loaders", "trainer", TrainerConfig),
    ("docclassify.engine.loaders:build_eval_loader", "trainer", TrainerConfig),
    ("docclassify.engine.loaders:debug_rows", "trainer", TrainerConfig),
    ("docclassify.engine.loaders:eval_batch_size", "trainer", TrainerConfig),
    ("docclassify.engine.fold:step_context", "trainer", TrainerConfig),
    ("docclassify.engine.profiling:profile_epoch", "trainer", TrainerConfig),
    ("docclassify.engine.distributed:scaling", "trainer", TrainerConfig),
    ("docclassify.engine.parts:build_fold_parts", "trainer", TrainerConfig),
    ("docclassify.engine.parts:build_fold_parts", "data", DataCommon),
    ("docclassify.data.cache:load_images", "data", DataCommon),
    ("docclassify.engine.parts:build_fold_parts", "augment", AugmentConfig),
    ("docclassify.engine.mixup:build_mixup", "aug_cfg", AugmentConfig),
    ("docclassify.engine.mixup:mixup_active", "aug_cfg", AugmentConfig),
    ("docclassify.engine.orientation_head:orientation_check", "augment", AugmentConfig),
    ("docclassify.data.augment:TrainTransform", "cfg", AugmentConfig),
    ("docclassify.engine.parts:build_fold_parts", "reg", RegularizationConfig),
    ("docclassify.engine.parts:build_model", "reg_cfg", RegularizationConfig),
    ("docclassify.engine.orientation_head:build_orientation_training", "reg_cfg", RegularizationConfig),
    ("docclassify.engine.plan:plan_folds", "model", ModelConfig),
    ("docclassify.engine.plan:plan_folds", "data", DataCommon),
    ("docclassify.engine.plan:plan_folds", "folds", FoldsConfig),
    ("docclassify.engine.plan:plan_folds", "ensemble", EnsembleConfig),
    ("docclassify.engine.plan:fold_model_overrides", "ensemble", EnsembleConfig),
    ("docclassify.engine.parts:build_model", "model_cfg", ModelConfig),
    ("docclassify.engine.parts:build_fold_parts", "schedule", ConstantSchedule),
    ("docclassify.engine.optim:build_scheduler", "sched_cfg", ConstantSchedule),
    ("docclassify.data.folds:duplicate_groups_for", "folds_cfg", FoldsConfig),
    ("docclassify.distortion.report:run_shift_check", "validation", "CleanValidation | RobustValidation | None"),
    ("docclassify.distortion.report:run_shift_check", "shift", "ShiftCheck | None"),
    ("docclassify.distortion.report:run_shift_check", "data", DataCommon),
    ("docclassify.distortion.report:fit_profile_for_run", "data", DataCommon),
    ("docclassify.predict.settings:read_settings", "groups", "InferGroups"),
    ("docclassify.predict.settings:second_stage_on", "groups", "InferGroups"),
    ("docclassify.predict.second_stage:adapt", "groups", "InferGroups"),
    ("docclassify.predict.second_stage:refine", "groups", "InferGroups"),
])
def test_signatures_take_the_settings_classes(function, param, schema):
    import importlib

    module, name = function.split(":")
    annotation = inspect.signature(getattr(importlib.import_module(module), name)).parameters[param].annotation
    # (from __future__ import annotations: the name as written)
    assert annotation == (schema if isinstance(schema, str) else schema.__name__)


def test_start_run_builds_the_typed_settings_once(tmp_path):
    from conftest import TINY, compose_train

    from docclassify.config_schema import CompetitionData
    from docclassify.engine import share
    from docclassify.engine.kfold import start_run
    from docclassify.tracking.callbacks import CallbackList

    cfg = compose_train(["data=competition", f"data.root={tmp_path}", *TINY, "trainer.batch_size=7"], tmp_path / "run")
    run = start_run(cfg, CallbackList([]))
    share.stop()
    assert isinstance(run.trainer, TrainerConfig) and not isinstance(run.trainer, DictConfig)
    assert isinstance(run.data_settings, CompetitionData)
    assert isinstance(run.augment, AugmentConfig) and run.augment.orientation == "none"  # TINY's
    assert isinstance(run.regularization, RegularizationConfig)
    assert isinstance(run.model, ModelConfig) and run.model.name == "tiny"
    assert isinstance(run.schedule, CosineSchedule) and isinstance(run.validation, RobustValidation)
    assert isinstance(run.folds, FoldsConfig) and isinstance(run.ensemble, EnsembleConfig)
    assert isinstance(run.shift, ShiftCheck)
    assert isinstance(run.loss, DictConfig) and run.loss._target_ == cfg.loss._target_  # instantiated from its node
    assert run.trainer.batch_size == 7 and run.data_settings.root == str(tmp_path) and run.data_settings.img_size == 32


def test_every_option_and_preset_gives_typed_settings():
    """OmegaConf.to_object of trainer and data succeeds for every case tests/config/test_composed.py composes
    that can set their keys (the options of data and trainer, the presets, debug modes and sweeps)."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR
    from docclassify.engine.kfold import TYPED_GROUPS, group_settings

    path = PACKAGE.parent / "tests" / "config" / "test_composed.py"
    spec = importlib.util.spec_from_file_location("test_composed", path)
    composed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(composed)
    checked = 0
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for primary, overrides in composed.cases():
            group = overrides[0].split("=")[0] if overrides else None
            if primary not in ("train", "distill") or group not in (None, *SETTING_GROUPS):
                continue
            cfg = compose(primary, overrides=[o.replace("DATA_ROOT", "/data") for o in overrides])
            assert isinstance(group_settings(cfg, "trainer", TrainerConfig), TrainerConfig), overrides
            assert isinstance(group_settings(cfg, "data", DataCommon), DataCommon), overrides
            assert isinstance(group_settings(cfg, "augment", AugmentConfig), AugmentConfig), overrides
            assert isinstance(group_settings(cfg, "regularization", RegularizationConfig), RegularizationConfig)
            for group, schema in TYPED_GROUPS.values():  # model, schedule, validation, folds, ensemble, shift too
                assert isinstance(group_settings(cfg, group, schema), schema), (group, overrides)
            checked += 1
    assert checked >= 20


def test_an_unset_required_key_is_named(tmp_path):
    from conftest import compose_train

    from docclassify.data.sources import DataError
    from docclassify.engine.kfold import group_settings

    cfg = compose_train(["data=competition"], tmp_path / "run")
    with pytest.raises(DataError, match="data.root is not set: pass data.root=/path/to/data"):
        group_settings(cfg, "data", DataCommon)


ALL_ON = ["tta=orient", "adapt=tent", "second_pass.enabled=true", "specialists.enabled=true", "ensemble.weights=greedy",
          "data.root=/x"]


@pytest.mark.parametrize("overrides", [[], ALL_ON])
def test_infer_groups_are_typed_once(overrides):
    """predict/settings.py infer_groups: the infer config's groups as their schema dataclasses, the values
    the command line set."""
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR
    from docclassify.config_schema import (
        AdaptConfig,
        InferData,
        InferEnsemble,
        InferSpecialists,
        SecondPassConfig,
        TentAdaptConfig,
        TTAConfig,
    )
    from docclassify.predict.settings import infer_groups

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=["runs=[/unused]", *overrides])
    groups = infer_groups(cfg)
    assert isinstance(groups.tta, TTAConfig) and groups.tta.name == cfg.tta.name
    assert isinstance(groups.adapt, TentAdaptConfig if overrides else AdaptConfig)
    assert isinstance(groups.second_pass, SecondPassConfig) and groups.second_pass.enabled == bool(overrides)
    assert isinstance(groups.specialists, InferSpecialists) and groups.specialists.enabled == bool(overrides)
    assert isinstance(groups.ensemble, InferEnsemble) and groups.ensemble.weights == cfg.ensemble.weights
    assert isinstance(groups.data, InferData) and groups.data.root == ("/x" if overrides else None)
