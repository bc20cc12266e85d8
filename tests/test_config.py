"""Every option of every config group composes, and presets do what they say."""

from __future__ import annotations

import pytest
from conftest import compose_train

from docclassify.config import CONF_DIR, available_options

GROUPS = ["data", "model", "augment", "regularization", "schedule", "pipeline", "logger", "trainer",
          "folds", "paths", "ensemble", "experiment", "hparams_search"]


def _cases():
    for group in GROUPS:
        for option in available_options(group):
            yield group, option


@pytest.mark.parametrize("group,option", list(_cases()))
def test_every_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data" and option != "synthetic":
        overrides.append("data.root=/tmp")
    cfg = compose_train(overrides, tmp_path)
    assert cfg.trainer.epochs >= 1 and cfg.folds.n >= 1
    if group == "model":
        assert cfg.model.name == option and cfg.model.timm_name and cfg.model.img_size > 0


def test_required_model_options_exist():
    needed = {"convnext_base_384", "swin_base_384", "efficientnetv2_b3", "resnet50", "convnext_atto",
              "resnet18", "tiny"}
    assert needed <= set(available_options("model"))


def test_pipeline_presets_and_command_line_wins(tmp_path):
    basic = compose_train(["pipeline=basic"], tmp_path)
    assert (basic.folds.n, basic.trainer.batch_size, basic.trainer.epochs) == (5, 48, 10)
    assert basic.augment.name == "basic" and basic.augment.mixup_alpha == 0 and basic.regularization.weight_decay == 0
    hp = compose_train(["pipeline=highperf"], tmp_path)
    assert hp.augment.mixup_alpha == 0.8 and hp.regularization.label_smoothing == 0.1
    assert hp.regularization.ema and hp.regularization.ema_decay == 0.9999
    assert (hp.augment.advanced_p_start, hp.augment.advanced_p_end) == (0.0, 0.5)
    assert 0.005 <= hp.regularization.weight_decay <= 0.013 and hp.trainer.epochs == 30  # issue 29: 30 epochs
    # lr and warmup follow model.pretrained (the synthetic data trains from scratch: data.use_pretrained=false)
    assert (hp.trainer.lr, hp.schedule.warmup_epochs) == (2.0e-3, 2)
    tuned = compose_train(["pipeline=highperf", "data=competition", "data.root=/d", "model.pretrained=true"], tmp_path)
    assert (tuned.trainer.lr, tuned.schedule.warmup_epochs) == (2.0e-4, 3)
    mine = compose_train(["pipeline=highperf", "trainer.lr=0.01", "schedule.warmup_epochs=5"], tmp_path)
    assert (mine.trainer.lr, mine.schedule.warmup_epochs) == (0.01, 5)
    quick = compose_train([], tmp_path)  # the default preset (issue 29): orientation, its head, 3 x 20, bf16, logit-adjusted
    assert (quick.augment.orientation, quick.model.orientation_head) == ("dihedral", "dihedral8")
    assert (quick.folds.n, quick.trainer.epochs, quick.trainer.amp, quick.submit) == (3, 20, "auto", "auto")
    assert quick.loss._target_.endswith("LogitAdjustedLoss")
    over = compose_train(["pipeline=highperf", "trainer.epochs=3", "augment=advanced", "augment.mixup_alpha=0.2"],
                         tmp_path)
    assert over.trainer.epochs == 3 and over.augment.name == "advanced" and over.augment.mixup_alpha == 0.2


def test_reference_best_experiment(tmp_path):
    cfg = compose_train(["experiment=convnext_base_384_best"], tmp_path)
    assert cfg.model.timm_name.startswith("convnext_base") and cfg.model.img_size == 384
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.lr) == (16, 150, 1.2802e-4)
    assert cfg.regularization.weight_decay == 0.013163 and cfg.schedule.warmup_epochs == 10


def _plans(cfg, folds):
    """engine.plan.plan_folds on the run's typed model, data, folds and ensemble settings."""
    from docclassify.engine.kfold import run_settings
    from docclassify.engine.plan import plan_folds

    s = run_settings(cfg)
    return plan_folds(s["model"], s["data_settings"], s["folds"], s["ensemble"], folds)


def test_img_size_follows_model_unless_set(tmp_path):
    cfg = compose_train(["pipeline=basic", "model=convnext_base_384"], tmp_path)
    assert cfg.data.img_size is None and _plans(cfg, [0])[0].img_size == 384
    cfg = compose_train(["pipeline=basic", "model=convnext_base_384", "data.img_size=128"], tmp_path)
    assert _plans(cfg, [0])[0].img_size == 128


def test_multi_model_plan(tmp_path):
    cfg = compose_train(["pipeline=basic", "ensemble=multi_model", "ensemble.fold_models={0:resnet18,1:convnext_atto}",
                         "model.pretrained=false", "folds.n=3"], tmp_path)
    plans = _plans(cfg, [0, 1, 2])
    assert [p.model_cfg.timm_name.split(".")[0] for p in plans] == ["resnet18", "convnext_atto", "resnet18"]
    assert all(not p.model_cfg.pretrained for p in plans)
    assert all(p.model_cfg.orientation_head == "none" for p in plans)
    cfg = compose_train(["pipeline=basic", "ensemble=multi_model", "ensemble.fold_models={1:convnext_atto}",
                         "model.orientation_head=dihedral8", "folds.n=2"], tmp_path)
    assert [p.model_cfg.orientation_head for p in _plans(cfg, [0, 1])] == ["dihedral8", "dihedral8"]


def test_conf_dir_is_the_repo_conf():
    assert (CONF_DIR / "train.yaml").is_file()


def test_data_use_pretrained_gates_model_pretrained(tmp_path):
    synthetic = compose_train(["model=resnet18"], tmp_path)
    assert synthetic.model.pretrained and not _plans(synthetic, [0])[0].model_cfg.pretrained
    real = compose_train(["model=resnet18", "data=competition", "data.root=/tmp"], tmp_path)
    assert _plans(real, [0])[0].model_cfg.pretrained
    forced = compose_train(["model=resnet18", "data=competition", "data.root=/tmp", "data.use_pretrained=false"],
                           tmp_path)
    assert not _plans(forced, [0])[0].model_cfg.pretrained
